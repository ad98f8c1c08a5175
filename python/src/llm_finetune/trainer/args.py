"""TrainingArguments (TRL ``SFTConfig`` for causal LM) from ``training.args`` over our defaults.

``training.args`` keys are TrainingArguments/SFTConfig fields, passed verbatim (``null``
drops a default: the library's own applies). The trainer decides:

* paths: ``output_dir`` (rank 0: ``<paths.run>/checkpoints``; other ranks: node-local
  scratch) and the TensorBoard folder (``<paths.run>/logs``) — setting ``output_dir`` or
  ``logging_dir`` is an error;
* pod logs: ``disable_tqdm`` is always true (our progress lines replace the bars);
* CPU: ``use_cpu`` when no CUDA device is visible (else each torchrun rank trains alone);
* data fields of SFTConfig come from the ``data`` section (``max_length`` = maxSeqLength,
  ``packing``, completion/assistant-only loss, ``dataset_text_field``);
* ``save_total_limit`` is applied by our checkpoint rotation (after the completeness marker).

Defaults (overridable): ``report_to: [tensorboard]``, ``logging_first_step``,
``include_num_input_tokens_seen: non_padding`` (tokens/s), ``ddp_find_unused_parameters:
false``, ``bf16`` on GPUs that support it, activation (gradient) checkpointing for causal LM on GPU only, and with
evaluation data ``eval_strategy``/``eval_steps`` following the save settings.
"""

from __future__ import annotations

from typing import Any

from ..core.config import JobConfig
from ..core.errors import ConfigError
from ..core.problems import raise_first_error

def user_args(cfg: JobConfig, cls: type) -> dict[str, Any]:
    """``training.args`` checked against ``cls``'s fields and types, as the validator checks them (None values dropped)."""
    from ..validate.introspect import training_args_problems

    values = {k: v for k, v in cfg.training.args.items() if v is not None}
    raise_first_error(training_args_problems(values, cls.__name__))
    return values


def build_args(cfg: JobConfig, *, output_dir: str, causal_lm: bool, has_eval: bool, cuda: bool, bf16_ok: bool):
    """The TrainingArguments/SFTConfig object (this also sets up torch.distributed under torchrun)."""
    if causal_lm:
        from trl import SFTConfig as cls
    else:
        from transformers import TrainingArguments as cls

    values = user_args(cfg, cls)
    defaults: dict[str, Any] = {
        "report_to": ["tensorboard"],
        "logging_first_step": True,
        "include_num_input_tokens_seen": "non_padding",
        "ddp_find_unused_parameters": False,
        "bf16": bool(cuda and bf16_ok and not values.get("fp16")),  # fp16 and bf16 exclude each other
    }
    if "gradient_checkpointing" not in values and "activation_checkpointing" not in values:
        # TRL turns it on for SFT (memory for speed); on CPU (tests, demos) speed matters more.
        defaults["activation_checkpointing"] = bool(cuda and causal_lm)
    if not cuda:
        defaults["dataloader_pin_memory"] = False
    if has_eval and "eval_strategy" not in values:
        defaults["eval_strategy"] = values.get("save_strategy", "steps")
        if "save_steps" in values:
            defaults["eval_steps"] = values["save_steps"]
    dropped = {k for k, v in cfg.training.args.items() if v is None}
    merged = {**{k: v for k, v in defaults.items() if k not in dropped}, **values}
    save_total_limit = merged.pop("save_total_limit", None)
    merged.update(output_dir=output_dir, disable_tqdm=True, save_total_limit=None)
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
