"""Check pass-through mappings against the classes they feed.

``training.args`` feeds TRL's ``SFTConfig`` (causal LM) or transformers' ``TrainingArguments``
(sequence classification); ``training.lora`` feeds peft's ``LoraConfig``. Field names and
annotated types come from :mod:`.passthrough`: the field lists of the versions the trainer image
pins, shipped with the package (no import of transformers/TRL/PEFT), or the installed classes
when their versions differ. Keys the trainer sets itself (the lists in
:mod:`llm_finetune.core.contract`, e.g. ``output_dir``, ``max_length``) are rejected either way.
An unknown key gets a did-you-mean: the snake_case of a camelCase key, the names other tools and
older versions use (:data:`ALIASES`), else the closest field.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterator

from ..core.contract import RESERVED_LORA, reserved_args
from ..core.problems import ERROR, NOTICE, Problem
from . import passthrough
from .schema import quoted_scalar_hint

# Names people write for a field (other tools, older transformers/peft, papers) -> the field.
ALIASES = {
    "rank": "r", "lora_r": "r", "lora_rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout",
    "target_module": "target_modules", "targets": "target_modules", "modules": "target_modules",
    "lr": "learning_rate", "epochs": "num_train_epochs", "num_epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
    "train_batch_size": "per_device_train_batch_size", "eval_batch_size": "per_device_eval_batch_size",
    "per_gpu_train_batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
    "gradient_accumulation": "gradient_accumulation_steps", "scheduler": "lr_scheduler_type", "lr_scheduler": "lr_scheduler_type",
    "warmup_ratio": "warmup_steps", "warmup": "warmup_steps", "evaluation_strategy": "eval_strategy",
    "optimizer": "optim", "clip_grad_norm": "max_grad_norm", "grad_clip": "max_grad_norm",
}


def _suggestion(key: str, fields: dict[str, Any]) -> str | None:
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()
    for candidate in (snake, ALIASES.get(key), ALIASES.get(snake)):
        if candidate and candidate != key and candidate in fields:
            return candidate
    close = difflib.get_close_matches(key, list(fields), n=1)
    return close[0] if close else None


def reserved_problems(values: dict[str, Any], where: str, reserved: dict[str, tuple[str, str]]) -> Iterator[Problem]:
    for key in values:
        if key in reserved:
            yield Problem(f"{where}.{key}", reserved[key][0], reserved[key][1], ERROR, "reserved")


def check_mapping(values: dict[str, Any], what: str, where: str, skip=()) -> Iterator[Problem]:
    """Unknown keys (with a did-you-mean) and values of the wrong type for class ``what`` (SFTConfig, ...)."""
    fields, source = passthrough.fields(what)
    for key, value in values.items():
        path = f"{where}.{key}"
        if key in skip or value is None:  # null drops a default
            continue
        if key not in fields:
            close = _suggestion(str(key), fields)
            hint = f"did you mean '{close}'?" if close else f"see the {what} fields of {source}"
            yield Problem(path, f"is not a {what} field", hint, ERROR, "introspection")
            continue
        if not passthrough.matches(value, fields[key]):
            hint = f"{what}.{key} takes {passthrough.describe(fields[key])}"
            if quoted_scalar_hint(value):
                hint += f" ({quoted_scalar_hint(value)})"
            yield Problem(path, f"{value!r} has the wrong type or value", hint, ERROR, "introspection")


def args_class(transformer_type: str) -> str:
    """The class training.args feeds for ``model.transformerType``."""
    return "SFTConfig" if transformer_type == "AutoModelForCausalLM" else "TrainingArguments"


def training_args_problems(args: dict[str, Any], what: str) -> Iterator[Problem]:
    """training.args: keys the trainer sets itself, then fields and types of class ``what``."""
    reserved = reserved_args()
    yield from reserved_problems(args, "training.args", reserved)
    yield from check_mapping(args, what, "training.args", skip=reserved)


def lora_problems(lora: dict[str, Any]) -> Iterator[Problem]:
    """training.lora: keys the trainer sets itself, then LoraConfig fields and types."""
    yield from reserved_problems(lora, "training.lora", RESERVED_LORA)
    yield from check_mapping(lora, "LoraConfig", "training.lora", skip=RESERVED_LORA)


def introspection_problems(values: dict[str, Any]) -> Iterator[Problem]:
    """Problems in training.args / training.lora: keys the trainer sets itself, then fields and types."""
    training = values.get("training") if isinstance(values.get("training"), dict) else {}
    model = values.get("model") if isinstance(values.get("model"), dict) else {}
    args = training.get("args") if isinstance(training.get("args"), dict) else {}
    lora = training.get("lora") if isinstance(training.get("lora"), dict) else {}
    for where, check in (("training.args", lambda: training_args_problems(args, args_class(model.get("transformerType", "AutoModelForCausalLM")))),
                         ("training.lora", lambda: lora_problems(lora) if training.get("method", "lora") != "full" else ())):
        try:
            yield from check()
        except ImportError as exc:  # installed at another version than the shipped lists, and not importable
            yield Problem(where, f"not checked: {exc.name or 'a library'} cannot be imported", "install the trainer extra "
                          "(pip install 'llm-finetune[trainer]') at the versions of python/constraints.txt", NOTICE, "introspection")
