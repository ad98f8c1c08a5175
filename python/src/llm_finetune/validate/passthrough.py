"""The fields of the pass-through classes (TRL ``SFTConfig``, transformers ``TrainingArguments``,
peft ``LoraConfig``), without importing them when it can.

Importing transformers/TRL/PEFT takes seconds (torch comes with them), so the field names and
annotated types of the versions the trainer image pins ship with the package as data:
``llm_finetune/data/passthrough_fields.json``, written by ``python -m
llm_finetune.validate.passthrough --write`` from live introspection and compared with it by
``make test`` (tests/validate/test_passthrough.py). :func:`fields` uses that file when the
libraries are not installed or are installed at the pinned versions, and introspects the
installed classes when their versions differ (then the answers follow what is installed) or
when ``LLM_FINETUNE_INTROSPECT=live``.

A field's type is a JSON *descriptor* of its annotation: ``"bool" | "int" | "float" | "str" |
"null" | "dict" | "any"``, ``{"list": item}``, ``{"enum": [values], "name": class}``,
``{"literal": [values]}``, ``{"anyOf": [descriptors]}``. One matcher (:func:`matches`) serves
both sources.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import json
import os
import sys
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

CLASSES = {  # class name -> (import path, the distributions its fields come from)
    "SFTConfig": ("trl:SFTConfig", ("transformers", "trl")),
    "TrainingArguments": ("transformers:TrainingArguments", ("transformers",)),
    "LoraConfig": ("peft:LoraConfig", ("peft",)),
}
DATA_FILE = "passthrough_fields.json"
# Fields that take more than their annotation says. transformers 5 annotates ``fsdp`` as ``str | None``
# (for its argparse CLI) but documents ``fsdp=True`` with ``fsdp_config`` and deprecates the string
# form (transformers v5.24.0 src/transformers/training_args.py, ``_process_fsdp_args``).
WIDER = {"fsdp": {"anyOf": ["bool", "str", "null"]}}
WIDER_IN = ("SFTConfig", "TrainingArguments")
INTROSPECT_ENV = "LLM_FINETUNE_INTROSPECT"  # "live": always introspect the installed classes (make bench's baseline)


# --------------------------------------------------------------------------- descriptors
def _canonical(items: Any) -> list[Any]:
    """Members of a Union/Literal in a fixed order (null last).

    typing caches ``Union[...]``/``Literal[...]`` by equality, and equal ones may list their
    members in another order (``Optional[Union[A, B]]`` is ``Union[B, A, None]`` when some
    module built that first): the order of ``get_args`` depends on what was imported before.
    """
    return sorted(items, key=lambda d: (d is None or d == "null", json.dumps(d, sort_keys=True, default=str)))


def descriptor(tp: Any) -> Any:
    """The JSON descriptor of annotation ``tp`` (what :func:`matches` needs, nothing more)."""
    if tp is Any or isinstance(tp, (str, typing.ForwardRef)):
        return "any"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": _canonical(descriptor(a) for a in typing.get_args(tp))}
    if origin is typing.Literal:
        return {"literal": _canonical(typing.get_args(tp))}
    if tp is type(None):
        return "null"
    for py, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if tp is py:
            return name
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp], "name": tp.__name__}
    if origin in (list, tuple, set, typing.Sequence) or tp in (list, tuple):
        args = typing.get_args(tp)
        return {"list": descriptor(args[0]) if args else "any"}
    if origin is dict or tp is dict:
        return "dict"
    return "any"  # a class of the library (e.g. LoraRuntimeConfig): not checked


def matches(value: Any, d: Any) -> bool:
    """Whether ``value`` (parsed YAML) fits descriptor ``d``."""
    if isinstance(d, dict):
        if "anyOf" in d:
            enums = [a for a in d["anyOf"] if isinstance(a, dict) and "enum" in a]
            if enums and isinstance(value, str):
                # transformers converts "Enum | str" fields with Enum(value): the string must be a member.
                return any(value in e["enum"] for e in enums)
            return any(matches(value, a) for a in d["anyOf"])
        if "literal" in d:
            return any(value == v and type(value) is type(v) for v in d["literal"])
        if "enum" in d:
            return isinstance(value, (str, int, float)) and value in d["enum"]
        if "list" in d:
            return isinstance(value, list) and all(matches(v, d["list"]) for v in value)
    checks = {
        "any": lambda v: True, "null": lambda v: v is None, "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str), "dict": lambda v: isinstance(v, dict),
    }
    return checks[d](value)


def describe(d: Any) -> str:
    """``d`` in words, for a hint: ``int or null``, ``one of 'no', 'steps', 'epoch'``."""
    if isinstance(d, dict):
        if "anyOf" in d:
            return " or ".join(describe(a) for a in d["anyOf"])
        if "literal" in d or "enum" in d:
            return "one of " + ", ".join(repr(v) for v in d.get("literal", d.get("enum", [])))
        if "list" in d:
            return "list"
    return {"any": "anything", "null": "null"}.get(d, d)


# --------------------------------------------------------------------------- live introspection
def _class(name: str) -> type:
    module, _, attr = CLASSES[name][0].partition(":")
    import importlib
    import logging

    # trl/peft import bitsandbytes, which warns about missing CPU kernels: not the user's problem here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    return getattr(importlib.import_module(module), attr)


def live_fields(name: str) -> dict[str, Any]:
    """Field name -> descriptor of the installed class ``name`` (imports it: seconds)."""
    cls = _class(name)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolved forward refs: fall back to raw annotations
        hints = {}
    found = {f.name: descriptor(hints.get(f.name, f.type)) for f in dataclasses.fields(cls) if f.init}
    return {k: WIDER.get(k, d) if name in WIDER_IN else d for k, d in found.items()}


def installed_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def generate() -> dict[str, Any]:
    """The data file's content from the installed libraries."""
    dists = sorted({d for _, deps in CLASSES.values() for d in deps})
    return {"versions": {d: installed_version(d) for d in dists},
            "classes": {name: live_fields(name) for name in sorted(CLASSES)}}


# --------------------------------------------------------------------------- the shipped data
def data_path() -> Path:
    return Path(str(resources.files("llm_finetune") / "data" / DATA_FILE))


@functools.lru_cache(maxsize=1)
def shipped() -> dict[str, Any]:
    return json.loads(data_path().read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def fields(name: str) -> tuple[dict[str, Any], str]:
    """(field -> descriptor, where from) for class ``name``.

    The shipped data when each library the class comes from is absent or at the pinned version;
    live introspection when one is installed at another version. ImportError when it must
    introspect and cannot.
    """
    data = shipped()
    pinned = data["versions"]
    if os.environ.get(INTROSPECT_ENV) == "live":
        return live_fields(name), "the installed libraries (" + INTROSPECT_ENV + "=live)"
    differ = [f"{d} {installed_version(d)}" for d in CLASSES[name][1]
              if installed_version(d) not in (None, pinned[d])]
    if not differ:
        return data["classes"][name], "the pinned " + ", ".join(f"{d} {pinned[d]}" for d in CLASSES[name][1])
    return live_fields(name), "the installed " + ", ".join(differ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_finetune.validate.passthrough", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write data/{DATA_FILE} from the installed libraries")
    args = parser.parse_args(argv)
    text = json.dumps(generate(), indent=1, sort_keys=True) + "\n"
    if args.write:
        data_path().write_text(text, encoding="utf-8")
        print(f"wrote {data_path()}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
