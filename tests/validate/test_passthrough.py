"""The shipped field lists of SFTConfig/TrainingArguments/LoraConfig are what live introspection of
the pinned versions gives, and the validator uses them without importing the libraries."""

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from llm_finetune.validate import passthrough as P

REPO = Path(__file__).resolve().parents[2]


def test_shipped_fields_are_the_installed_libraries():
    data = P.shipped()
    for dist, version in data["versions"].items():
        assert P.installed_version(dist) == version, f"{dist}: run python -m llm_finetune.validate.passthrough --write"
    live = P.generate()
    assert json.dumps(live, sort_keys=True) == json.dumps(data, sort_keys=True), \
        "the data file is stale: run python -m llm_finetune.validate.passthrough --write"


def test_descriptors_do_not_depend_on_what_was_imported_before():
    """typing caches Unions by equality, and equal Unions may list their members in any order: an
    annotation gets the order of whichever equal Union some module built first. (Why comparing the
    shipped data with live introspection failed only after the trainer tests had imported TRL.)"""
    key = f"only-here-{id(object())}"
    typing.Optional[typing.Union[list[typing.Literal[key]], str]]  # built first, e.g. by another library
    written = typing.Optional[typing.Union[str, list[typing.Literal[key]]]]
    assert typing.get_args(written)[0] is not str  # the cached order, not the written one
    assert P.descriptor(written) == {"anyOf": ["str", {"list": {"literal": [key]}}, "null"]}
    assert P.descriptor(typing.Literal["b", True, "a", None]) == {"literal": ["a", "b", True, None]}


def test_pinned_or_absent_libraries_use_the_shipped_data(monkeypatch):
    P.fields.cache_clear()
    monkeypatch.setattr(P, "installed_version", lambda dist: None)
    fields, source = P.fields("LoraConfig")
    assert "the pinned peft" in source and fields["r"] == "int"
    P.fields.cache_clear()


def test_other_installed_versions_are_introspected_live(monkeypatch):
    P.fields.cache_clear()
    monkeypatch.setattr(P, "installed_version", lambda dist: "0.0.1")
    calls = []
    monkeypatch.setattr(P, "live_fields", lambda name: calls.append(name) or {"r": "int"})
    assert P.fields("LoraConfig") == ({"r": "int"}, "the installed peft 0.0.1")
    assert calls == ["LoraConfig"]
    P.fields.cache_clear()


@pytest.mark.parametrize("value, descriptor, ok", [
    ("cosine", {"anyOf": [{"enum": ["linear", "cosine"], "name": "SchedulerType"}, "str"]}, True),
    ("cosin", {"anyOf": [{"enum": ["linear", "cosine"], "name": "SchedulerType"}, "str"]}, False),
    (["cosine"], {"anyOf": [{"enum": ["linear"], "name": "S"}, "str"]}, False),  # no crash on an unhashable value
    (2, "float", True), (True, "int", False), (1.5, "int", False), (None, {"anyOf": ["int", "null"]}, True),
    ([1, 2], {"list": "int"}, True), ([1, "a"], {"list": "int"}, False), ({"a": 1}, "dict", True),
    ("lora_only", {"literal": ["none", "all", "lora_only"]}, True), (1, {"literal": [True]}, False),
])
def test_matcher(value, descriptor, ok):
    assert P.matches(value, descriptor) is ok


def test_validate_imports_no_ml_library():
    """The fast path: a values check in a fresh interpreter never imports torch/transformers/trl/peft."""
    code = ("import sys\nfrom llm_finetune.cli import main\n"
            "rc = main(['validate', '-f', sys.argv[1]])\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules)\n"
            "print('HEAVY', heavy)\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "values-examples" / "v1-llm-lora.yaml")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout
