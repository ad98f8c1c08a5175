"""Check pass-through mappings against the classes they feed, by introspecting the installed libraries.

``training.args`` feeds TRL's ``SFTConfig`` (causal LM) or transformers' ``TrainingArguments``
(sequence classification); ``training.lora`` feeds peft's ``LoraConfig``. Field names and
annotated types come from the installed dataclasses, so the check follows the versions
the trainer image pins. When the libraries are not importable (the initializer image has
no transformers), that check is skipped with a notice. Keys the trainer sets itself
(the lists in :mod:`llm_finetune.core.contract`, e.g. ``output_dir``, ``max_length``) are
rejected either way.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import types
import typing
from typing import Any, Iterator

from ..core.contract import RESERVED_LORA, reserved_args
from ..core.problems import ERROR, NOTICE, Problem
from .schema import quoted_scalar_hint

def _training_args_class(transformer_type: str) -> type:
    if transformer_type == "AutoModelForCausalLM":
        from trl import SFTConfig

        return SFTConfig
    from transformers import TrainingArguments

    return TrainingArguments


def _lora_class() -> type:
    from peft import LoraConfig

    return LoraConfig


def _fields(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolved forward refs: fall back to raw annotations
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls) if f.init}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def type_matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` (parsed YAML) fits annotation ``tp``; unknown annotations accept anything."""
    if tp is Any or isinstance(tp, (str, typing.ForwardRef)):
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):
            # transformers converts "Enum | str" fields with Enum(value): the string must be a member.
            return any(value in {m.value for m in e} for e in enums)
        return any(type_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {m.value for m in tp}
    if origin in (list, tuple, set, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, list):
            return False
        item_args = typing.get_args(tp)
        return not item_args or all(type_matches(v, item_args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True


def reserved_problems(values: dict[str, Any], where: str, reserved: dict[str, tuple[str, str]]) -> Iterator[Problem]:
    for key in values:
        if key in reserved:
            yield Problem(f"{where}.{key}", reserved[key][0], reserved[key][1], ERROR, "reserved")


def check_mapping(values: dict[str, Any], cls: type, where: str, what: str, skip=()) -> Iterator[Problem]:
    """Unknown keys (with a did-you-mean) and values of the wrong type for dataclass ``cls``."""
    fields = _fields(cls)
    for key, value in values.items():
        path = f"{where}.{key}"
        if key in skip or value is None:  # null drops a chart default
            continue
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"see the {what} fields of the installed version"
            yield Problem(path, f"is not a {what} field", hint, ERROR, "introspection")
            continue
        if not type_matches(value, fields[key]):
            hint = f"{what}.{key} takes {_describe(fields[key])}"
            if quoted_scalar_hint(value):
                hint += f" ({quoted_scalar_hint(value)})"
            yield Problem(path, f"{value!r} has the wrong type or value", hint, ERROR, "introspection")


def training_args_problems(args: dict[str, Any], cls: type) -> Iterator[Problem]:
    """training.args: keys the trainer sets itself, then fields and types of ``cls``."""
    reserved = reserved_args()
    yield from reserved_problems(args, "training.args", reserved)
    yield from check_mapping(args, cls, "training.args", cls.__name__, skip=reserved)


def lora_problems(lora: dict[str, Any]) -> Iterator[Problem]:
    """training.lora: keys the trainer sets itself, then LoraConfig fields and types."""
    yield from reserved_problems(lora, "training.lora", RESERVED_LORA)
    yield from check_mapping(lora, _lora_class(), "training.lora", "LoraConfig", skip=RESERVED_LORA)


def introspection_problems(values: dict[str, Any]) -> Iterator[Problem]:
    """Problems in training.args / training.lora: keys the trainer sets itself (always checked),
    then fields and types against the installed libraries (a notice when they are missing)."""
    training = values.get("training") if isinstance(values.get("training"), dict) else {}
    model = values.get("model") if isinstance(values.get("model"), dict) else {}
    transformer_type = model.get("transformerType", "AutoModelForCausalLM")
    args = training.get("args") if isinstance(training.get("args"), dict) else {}
    lora = training.get("lora") if isinstance(training.get("lora"), dict) else {}
    check_lora = training.get("method", "lora") != "full"
    # trl/peft import bitsandbytes, which warns about missing CPU kernels: not the user's problem here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        args_cls = _training_args_class(transformer_type)
    except ImportError as exc:
        yield from reserved_problems(args, "training.args", reserved_args())
        yield Problem("training.args", f"not checked: {exc.name or 'transformers/trl'} is not installed",
                      "install the trainer extra (pip install 'llm-finetune[trainer]') to check TrainingArguments keys and types",
                      NOTICE, "introspection")
    else:
        yield from training_args_problems(args, args_cls)
    if not check_lora:
        return
    try:
        _lora_class()
    except ImportError as exc:
        yield from reserved_problems(lora, "training.lora", RESERVED_LORA)
        yield Problem("training.lora", f"not checked: {exc.name or 'peft'} is not installed",
                      "install the trainer extra to check LoraConfig keys and types", NOTICE, "introspection")
    else:
        yield from lora_problems(lora)
