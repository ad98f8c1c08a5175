"""TrainingArguments (TRL ``SFTConfig`` for causal LM) from ``training.args`` and ``training.defaults``.

``training.args`` keys are TrainingArguments/SFTConfig fields, passed verbatim. The keys the user
leaves unset take :mod:`llm_finetune.core.defaults`: the chart's recommended defaults (a ``null``
drops one: the library's own applies), or with ``training.defaults: v1`` exactly what the v1
reference trainer uses — TrainingArguments' own defaults, also where TRL's SFTConfig has others
(:func:`v1_gap`). In both modes the trainer decides:

* paths: ``output_dir`` (rank 0: ``<paths.run>/checkpoints``; other ranks: node-local
  scratch) and the TensorBoard folder (``<paths.run>/logs``) — setting ``output_dir`` or
  ``logging_dir`` is an error;
* CPU: ``use_cpu`` when no CUDA device is visible (else each torchrun rank trains alone);
* data fields of SFTConfig come from the ``data`` section (``max_length`` = maxSeqLength,
  ``packing``, completion/assistant-only loss, ``dataset_text_field``);
* ``save_total_limit`` is applied by our checkpoint rotation (after the completeness marker);
* with ``fsdp``, the defaults' activation checkpointing becomes FSDP's own
  (``fsdp_config.activation_checkpointing``, :func:`fsdp_checkpointing`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.config import JobConfig
from ..core.defaults import V1_MODE, Node, args_defaults
from ..core.errors import ConfigError
from ..core.problems import raise_first_error


def user_args(cfg: JobConfig, cls: type) -> dict[str, Any]:
    """``training.args`` checked against ``cls``'s fields and types, as the validator checks them (None values dropped)."""
    from ..validate.introspect import training_args_problems

    values = {k: v for k, v in cfg.training.args.items() if v is not None}
    raise_first_error(training_args_problems(values, cls.__name__))
    return values


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def v1_gap(cls: type) -> dict[str, Any]:
    """TrainingArguments' defaults of the fields where ``cls`` (SFTConfig) has other ones: what a v1 run uses."""
    from transformers import TrainingArguments

    base = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
    return {f.name: _field_default(base[f.name]) for f in dataclasses.fields(cls)
            if f.init and f.name in base and _field_default(f) != _field_default(base[f.name])}


def fsdp_checkpointing(merged: dict[str, Any], unset: dict[str, Any]) -> dict[str, Any]:
    """Under FSDP, activation checkpointing that only the defaults turned on moves into ``fsdp_config``: the
    training argument would all-gather each layer's weights once more in the backward pass, and transformers
    refuses both (its ``fsdp_config`` docs; the validator refuses both set by the user: core.contract)."""
    conf = merged.get("fsdp_config")
    if merged.get("fsdp") and unset.get("activation_checkpointing") and (conf is None or isinstance(conf, dict)):
        merged = {**merged, "activation_checkpointing": False,
                  "fsdp_config": {"activation_checkpointing": True, **(conf or {})}}
    return merged


def build_args(cfg: JobConfig, *, output_dir: str, causal_lm: bool, has_eval: bool, cuda: bool, bf16_ok: bool):
    """The TrainingArguments/SFTConfig object (this also sets up torch.distributed under torchrun)."""
    if causal_lm:
        from trl import SFTConfig as cls
    else:
        from transformers import TrainingArguments as cls

    values = user_args(cfg, cls)
    if cfg.training.defaults == V1_MODE:
        unset = {k: v for k, v in v1_gap(cls).items() if k not in values}
    else:
        unset = args_defaults(cfg.training.defaults, cfg.training.args, Node(cuda, bf16_ok, causal_lm, has_eval))
    merged = fsdp_checkpointing({**unset, **values}, unset)
    save_total_limit = merged.pop("save_total_limit", None)
    merged.update(output_dir=output_dir, save_total_limit=None)
    if not cuda:
        merged["use_cpu"] = True
    if causal_lm:
        packing = cfg.data.packing if cfg.data.packing is not None else True
        merged.update(max_length=cfg.data.max_seq_length, packing=packing, dataset_text_field="text")
    try:
        args = cls(**merged)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid training arguments: {exc}", field="training.args") from None
    return args, save_total_limit


def set_data_fields(args, *, completion_only_loss: bool | None, assistant_only_loss: bool, skip_prepare: bool) -> None:
    """SFTConfig fields that depend on the dataset (known after loading it)."""
    args.completion_only_loss = completion_only_loss
    args.assistant_only_loss = assistant_only_loss
    args.dataset_kwargs = {"skip_prepare_dataset": True} if skip_prepare else None
