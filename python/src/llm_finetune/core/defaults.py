"""What ``training.args`` (TrainingArguments; TRL's SFTConfig for a causal LM) and
``training.lora`` (LoraConfig) keys take when the user leaves them unset: the one table of
the chart's own defaults.

``training.args``/``training.lora`` in the values hold the user's keys only (values.yaml has
them empty, so Helm merges nothing into them). ``training.defaults`` picks what fills the rest:

* ``recommended`` (the chart's default): :data:`RECOMMENDED`, each with why; a user ``null``
  drops one (the library's own default applies);
* ``v1``: exactly what the v1 reference trainer uses. kubeflow-training 1.9.4 ``train()``
  sends ``TrainingArguments(...).to_dict()`` and ``LoraConfig(...).__dict__`` as JSON, and the
  v1 trainer rebuilds ``TrainingArguments``/``LoraConfig`` from them
  (training-operator@v1.9.0:sdk/python/kubeflow/trainer/hf_llm_training.py, ``__main__`` and
  ``setup_peft_model``): the classes' own defaults. The trainer builds TRL's SFTConfig for a
  causal LM, whose defaults differ from TrainingArguments' for a few fields (learning rate,
  logging steps, gradient checkpointing, bf16): in v1 mode those take TrainingArguments'
  (``trainer/args.py``). A ``null`` is the same as leaving the key out.

In both modes the chart decides :data:`ALWAYS` (and the paths, :data:`.contract.CHART_MANAGED`).
The README's table of the defaults that differ from the v1 reference is generated from this
module (``tests/tools/chart_docs.py``); ``tests/chart/test_v1_defaults.py`` proves v1 mode
against the real kubeflow-training SDK.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping

RECOMMENDED_MODE = "recommended"
V1_MODE = "v1"
MODES = (RECOMMENDED_MODE, V1_MODE)
LORA_PREFIX = "lora."


@dataclass(frozen=True)
class Node:
    """What the trainer knows about where it runs when it builds the arguments."""

    cuda: bool = False
    bf16_ok: bool = False
    causal_lm: bool = True
    has_eval: bool = False


# A conditional default: (the user's keys over the static defaults, nulls included; the node) -> keys to set.
Rule = Callable[[Mapping[str, Any], Node], dict[str, Any]]


@dataclass(frozen=True)
class Default:
    key: str  # a TrainingArguments field, or lora.<LoraConfig field>
    why: str
    value: Any = None  # a static default
    rule: Rule | None = None  # a conditional one (then ``shown`` says when, for the README)
    shown: str = ""
    v1_note: str = ""  # what the v1 value means, when it is not obvious

    @property
    def static(self) -> bool:
        return self.rule is None


def _bf16(args: Mapping[str, Any], node: Node) -> dict[str, Any]:
    if "bf16" in args:
        return {}
    return {"bf16": bool(node.cuda and node.bf16_ok and not args.get("fp16"))}  # fp16 and bf16 exclude each other


def _checkpointing(args: Mapping[str, Any], node: Node) -> dict[str, Any]:
    if "activation_checkpointing" in args or "gradient_checkpointing" in args:  # gradient_*: the deprecated alias
        return {}
    return {"activation_checkpointing": bool(node.cuda and node.causal_lm)}


def _eval(args: Mapping[str, Any], node: Node) -> dict[str, Any]:
    if not node.has_eval or "eval_strategy" in args:
        return {}
    strategy = args.get("save_strategy") if args.get("save_strategy") in ("steps", "epoch") else "steps"
    out: dict[str, Any] = {"eval_strategy": strategy}
    if strategy == "steps" and args.get("save_steps") is not None and "eval_steps" not in args:
        out["eval_steps"] = args["save_steps"]
    return out


RECOMMENDED: tuple[Default, ...] = (
    Default("num_train_epochs", "one pass is usually enough for an adapter; raise it for small datasets", 1),
    Default("per_device_train_batch_size", "fits a 7B model with LoRA at 1024 tokens on a 24 GB GPU", 4),
    Default("learning_rate", "adapters start from zero and need a higher rate than full fine-tuning", 2e-4),
    Default("lr_scheduler_type", "the usual schedule for LoRA fine-tuning", "cosine"),
    Default("warmup_steps", "3 % warmup (below 1: a ratio of the total steps in transformers 5)", 0.03),
    Default("logging_steps", "loss and progress in the pod log from the start", 10),
    Default("save_steps", "checkpoints often enough to resume a preempted pod", 100),
    Default("save_total_limit", "bounds what checkpoints take on the claim; resuming needs only the last complete one "
            "(applied by the chart's checkpoint rotation, after a checkpoint is complete)", 2),
    Default("report_to", "TensorBoard logs in the run folder (`<run>/logs`)", ["tensorboard"]),
    Default("logging_first_step", "the first step's loss: a quick sanity check", True),
    Default("include_num_input_tokens_seen", "tokens/s in the progress lines", "non_padding"),
    Default("ddp_find_unused_parameters", "an adapter has no unused parameters: skips a slow search under DDP", False),
    Default("disable_tqdm", "one progress line per log step instead of tqdm bars in pod logs", True),
    Default("bf16", "mixed precision where the GPU supports it", rule=_bf16,
            shown="`True` on a GPU with bf16, unless `fp16`"),
    Default("activation_checkpointing", "memory for speed, as TRL's SFTConfig (also set by its deprecated alias "
            "`gradient_checkpointing`); on CPU (tests, demos) speed matters more", rule=_checkpointing,
            shown="`True` on a GPU, causal LM (with `fsdp`: `fsdp_config.activation_checkpointing`)"),
    Default("eval_strategy", "evaluate at every checkpoint when `data.evalSplit`/`evalRatio` is set", rule=_eval,
            shown="`save_strategy` (and `eval_steps` = `save_steps`) with evaluation data"),
    Default("lora.r", "more capacity at little cost", 16),
    Default("lora.lora_alpha", "alpha = 2 r, the usual scaling", 32),
    Default("lora.lora_dropout", "light regularization", 0.05),
    Default("lora.target_modules", "adapters on every linear layer train better than on attention only", "all-linear",
            v1_note="PEFT's per-architecture list, e.g. `q_proj`, `v_proj`"),
)

# Keys the trainer sets in both modes, whatever the user wrote: key -> (what it sets, why). The paths
# (output_dir, logging_dir) and lora.use_dora are refused in the values (core.contract).
ALWAYS: dict[str, tuple[str, str]] = {
    "use_cpu": ("`True` (no GPU)", "without it each torchrun process on a CPU node trains alone (transformers "
                "then turns `dataloader_pin_memory` off: pinning needs an accelerator)"),
    "lora.task_type": ("from `model.transformerType`",
                       "a classifier's head is trained and saved with the adapter (the v1 trainer trains LoRA "
                       "weights only and leaves the new head as initialized)"),
}


def _split(lora: bool) -> tuple[Default, ...]:
    return tuple(d for d in RECOMMENDED if d.key.startswith(LORA_PREFIX) == lora)


def args_defaults(mode: str, user: Mapping[str, Any], node: Node) -> dict[str, Any]:
    """The chart's defaults for the ``training.args`` keys ``user`` leaves unset (none in v1 mode).

    ``user``: the user's ``training.args`` with their nulls (a null drops a default)."""
    if mode == V1_MODE:
        return {}
    static = {d.key: copy.deepcopy(d.value) for d in _split(False) if d.static and d.key not in user}
    view = {**static, **user}
    out = dict(static)
    for d in _split(False):
        if not d.static:
            out.update({k: v for k, v in d.rule(view, node).items() if k not in user})
    return out


def lora_defaults(mode: str, user: Mapping[str, Any]) -> dict[str, Any]:
    """The chart's defaults for the ``training.lora`` keys ``user`` leaves unset (none in v1 mode)."""
    if mode == V1_MODE:
        return {}
    return {d.key[len(LORA_PREFIX):]: copy.deepcopy(d.value) for d in _split(True) if d.key[len(LORA_PREFIX):] not in user}
