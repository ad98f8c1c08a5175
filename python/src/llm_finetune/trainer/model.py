"""Model, tokenizer and PEFT settings from the job config.

* The model is read from ``cfg.model_dir`` (local files only); ``trust_remote_code`` only
  from ``model.trustRemoteCode``.
* ``training.method``: ``lora`` / ``dora`` (a peft ``LoraConfig`` from ``training.lora`` over
  ``training.defaults``, every LoraConfig field passable, ``use_dora`` set by the method,
  ``task_type`` by the task), ``qlora`` (4/8-bit
  bitsandbytes base + LoRA; CUDA only), ``full`` (every weight trained).
* The pad token is set when the tokenizer has none (EOS, else UNK, else a new ``<pad>``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..core.config import SEQUENCE_CLASSIFICATION, JobConfig
from ..core.contract import RESERVED_LORA, qlora_gpu_problems
from ..core.defaults import lora_defaults
from ..core.errors import ConfigError, UserError
from ..core.problems import raise_first_error
from ..core.retry import describe

log = logging.getLogger(__name__)

def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_config(cfg: JobConfig) -> None:
    """Checks that need no model: fail in seconds, before anything heavy is loaded.

    The validator's checks of the config (schema, strict loader, the contract rules), the
    QLoRA rule with the GPUs this process sees, keys the trainer sets itself, and the volume.
    """
    from ..validate import check_job_config
    from ..validate.introspect import reserved_problems

    check_job_config(cfg)
    raise_first_error(qlora_gpu_problems(cfg.training.method, gpu_count(), no_gpu="none is visible"))
    raise_first_error(reserved_problems(cfg.training.lora, "training.lora", RESERVED_LORA))
    model_dir = cfg.model_dir
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        what = "does not exist" if not os.path.exists(model_dir) else "has no config.json"
        raise UserError(f"the model is not on the volume: {model_dir} {what}", field="model.uri",
                        hint="the storage initializer puts it there: check its log "
                             "(kubectl logs <pod> -c storage-initializer), or fix model.uri")
    if not os.path.exists(cfg.dataset_dir):
        raise UserError(f"the dataset is not on the volume: {cfg.dataset_dir} does not exist", field="dataset.uri",
                        hint="the storage initializer puts it there: check its log "
                             "(kubectl logs <pod> -c storage-initializer), or fix dataset.uri")


def load_tokenizer(cfg: JobConfig):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(cfg.model_dir, local_files_only=True,
                                            trust_remote_code=cfg.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types
        raise UserError(f"cannot load the tokenizer from {cfg.model_dir}: {describe(exc)}", field="model.uri",
                        hint="the model folder needs its tokenizer files; custom code needs model.trustRemoteCode") from None
    if tok.pad_token is None:
        for name in ("eos_token", "unk_token"):
            if getattr(tok, name) is not None:
                tok.pad_token = getattr(tok, name)
                log.info("tokenizer has no pad token: using its %s %r", name, tok.pad_token)
                break
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
            log.warning("tokenizer has no pad, eos or unk token: added <pad> (the embeddings grow by one)")
    return tok


def lora_config(cfg: JobConfig, task_type: str):
    """A peft LoraConfig from ``training.lora`` over ``training.defaults`` (core.defaults; a null drops a default)."""
    from peft import LoraConfig

    from ..validate.introspect import lora_problems

    values = {k: v for k, v in cfg.training.lora.items() if v is not None}
    raise_first_error(lora_problems(values))
    values = {**lora_defaults(cfg.training.defaults, cfg.training.lora), **values}
    values["task_type"] = task_type
    values["use_dora"] = cfg.training.method == "dora"
    try:
        return LoraConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid LoRA settings: {exc}", field="training.lora") from None


def _dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_model(cfg: JobConfig, tokenizer, *, num_labels: int | None, label_names: list[str] | None,
               local_rank: int, gradient_checkpointing: bool):
    """The base model (quantized for QLoRA), ready for the trainer (PEFT is applied by the trainer)."""
    import transformers

    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": cfg.model.trust_remote_code,
                              "dtype": _dtype(cfg.model.torch_dtype)}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    if cfg.training.method == "qlora":
        import torch
        from transformers import BitsAndBytesConfig

        q = cfg.training.qlora
        compute = getattr(torch, q.compute_dtype)  # one of the schema's enum (check_config)
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
                               bnb_4bit_compute_dtype=compute)
            if q.bits == 4 else BitsAndBytesConfig(load_in_8bit=True))
        kwargs["device_map"] = {"": local_rank}
    if cfg.model.transformer_type == SEQUENCE_CLASSIFICATION:
        if num_labels:
            kwargs["num_labels"] = num_labels
        if label_names:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    cls = getattr(transformers, cfg.model.transformer_type)
    try:
        model = cls.from_pretrained(cfg.model_dir, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot load the model from {cfg.model_dir} as {cfg.model.transformer_type}: {describe(exc)}",
                        field="model.uri", hint="check model.transformerType, model.torchDtype, model.attnImplementation "
                                                "and model.trustRemoteCode") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.training.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model
