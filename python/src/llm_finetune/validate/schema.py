"""Validate values against the chart's ``values.schema.json`` (JSON Schema draft-07, as Helm does).

The schema is the chart's own file: there is no second copy in Python. jsonschema's
messages are turned into ``path: what is wrong — how to fix`` lines; the fix quotes the
property's ``description`` from the schema, so the hint is what the chart documents. A
``pattern`` is explained with the words of its ``x-pattern-description`` (every pattern of the
schema has one: tests/chart/test_schema.py), never printed. Patterns match as in Helm's
validators (Go regexp: :func:`go_regex`), so the verdict is Helm's (tests/validate/test_generative.py).
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any, Iterator

from ..core.problems import ERROR, Problem, format_path


_JSON_TYPES = ((type(None), "null"), (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (list, "array"), (dict, "object"))  # bool before int: True is an int in Python


def _type_name(value: Any) -> str:
    return next((name for tp, name in _JSON_TYPES if isinstance(value, tp)), type(value).__name__)


def quoted_scalar_hint(value: Any) -> str:
    """Why a number or boolean arrived as a string, when it looks like one; else ""."""
    if not isinstance(value, str):
        return ""
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value):
        return "Helm's --set keeps decimals as strings: put it in a values file or use --set-json"
    if value.lower() in ("true", "false"):
        return "a quoted or --set-string true/false is a string: write it unquoted"
    return ""


def _subschema(schema: dict[str, Any], path: list[Any]) -> dict[str, Any]:
    node: Any = schema
    for part in path:
        if not isinstance(node, dict):
            return {}
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            props = node.get("properties", {})
            node = props.get(part) or node.get("additionalProperties") or {}
        if isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#/"):
            target: Any = schema
            for seg in node["$ref"][2:].split("/"):
                target = target.get(seg, {}) if isinstance(target, dict) else {}
            node = target
    return node if isinstance(node, dict) else {}


def _describe(schema: dict[str, Any], path: list[Any]) -> str:
    desc = _subschema(schema, path).get("description", "")
    return " ".join(str(desc).split())


def _at(root: Any, path: list[Any]) -> Any:
    for part in path:
        try:
            root = root[part]
        except (KeyError, IndexError, TypeError):
            return None
    return root


SECRET_ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_NO_CREDENTIALS = ("the chart takes no credentials as values (they would be rendered in clear text): create a Secret "
                   "(kubectl create secret generic hf-token --from-literal=token=...) and set secrets.{kind}.existingSecret "
                   "to its name; the *Key fields name the keys in it")


def _words(error: Any) -> str:
    """What a `pattern` (or a `not` written for one) asks for, in words (never the expression)."""
    node = error.schema if isinstance(error.schema, dict) else {}
    words = node.get("x-pattern-description")
    if not words:
        parent = error.parent.schema if getattr(error, "parent", None) is not None and isinstance(error.parent.schema, dict) else {}
        words = parent.get("x-pattern-description", "")
    return words or "of the documented form (see the field's description)"


def _unknown(error: Any, path: list[Any], hint: str) -> Problem:
    parent, value = error.schema.get("properties", {}), error.instance
    extra = sorted(set(value) - set(parent)) if isinstance(value, dict) else []
    if len(extra) != 1:
        return Problem(format_path(path) or "(values)", f"unknown fields: {', '.join(map(str, extra))}",
                       f"known fields: {', '.join(sorted(parent))}", ERROR, "schema")
    if path[:1] == ["secrets"]:  # a pasted token must not be steered into a key-name field
        return Problem(format_path(path + extra), "unknown field", _NO_CREDENTIALS.format(kind=(path + ["hf"])[1]), ERROR, "schema")
    close = difflib.get_close_matches(str(extra[0]), list(parent), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(sorted(parent))}"
    return Problem(format_path(path + extra), "unknown field", hint, ERROR, "schema")


def _type(error: Any, where: str, hint: str) -> Problem:
    want = error.validator_value
    want = " or ".join(want) if isinstance(want, list) else want
    quoted = quoted_scalar_hint(error.instance)
    if quoted:
        hint = f"{quoted}; {hint}".rstrip("; ")
    return Problem(where, f"expected {want}, got {_type_name(error.instance)} {error.instance!r}", hint, ERROR, "schema")


def _pattern(error: Any, where: str, hint: str) -> Problem:
    if "propertyNames" in error.absolute_schema_path:  # a map key: reported at the map
        return Problem(where, f"key {error.instance!r} must be {_words(error)}", hint, ERROR, "schema")
    return Problem(where, f"{error.instance!r} must be {_words(error)}", hint, ERROR, "schema")


def _not(error: Any, where: str, hint: str) -> Problem:
    if "x-pattern-description" in error.schema or "pattern" in str(error.validator_value):
        return _pattern(error, where, hint)
    why = error.schema.get("description", "")
    return Problem(where, f"{error.instance!r} is not allowed here", why or hint or "change it or the value it conflicts with",
                   ERROR, "schema")


def _const(error: Any, where: str, hint: str) -> Problem:
    why = error.schema.get("description", "") if isinstance(error.schema, dict) else ""
    want = error.validator_value
    fix = f"use {want!r}" if want != "" else "leave it empty"
    return Problem(where, f"{error.instance!r} is not allowed here" + (f": {why}" if why else ""), fix, ERROR, "schema")


def _alternatives(error: Any, where: str, hint: str, schema: dict[str, Any], root: Any) -> Problem:
    # Report the branch that came closest: the deepest error, preferring a branch of the
    # value's own type (a pattern beats "is not of type integer").
    context = list(error.context or ())
    telling = [e for e in context if e.validator not in ("type", "const")] or context
    best = max(telling, key=lambda e: len(list(e.absolute_path)), default=None)
    if best is not None and best.validator not in ("type", "const"):
        sub = _problem(best, schema, root)
        return Problem(sub.path, sub.message, sub.hint or hint, ERROR, "schema")
    return Problem(where, f"{error.instance!r} does not match any allowed form", hint, ERROR, "schema")


def _forbidden(error: Any, path: list[Any], hint: str, root: Any) -> Problem:
    """A `false` subschema (if/then forbidding a field); jsonschema may report it at the parent object."""
    parent, value = _at(root, path), error.instance
    if path and path[-1] == "value" and isinstance(_at(root, path[:-1]), dict) and _at(root, path[:-1]).get("name") in SECRET_ENV_NAMES:
        name = _at(root, path[:-1])["name"]
        kind = "hf" if "TOKEN" in name and "AWS" not in name else "s3"
        return Problem(format_path(path), f"a literal {name} would be stored in clear text in the PyTorchJob",
                       f"use a Secret: secrets.{kind}.existingSecret (the chart sets {name} from it), or valueFrom.secretKeyRef",
                       ERROR, "schema")
    keys = [k for k, v in parent.items() if v == value] if isinstance(parent, dict) else []
    field_path = format_path(path + keys[:1]) if len(keys) == 1 else (format_path(path) or "(values)")
    return Problem(field_path, "is not allowed together with the other fields set here", hint, ERROR, "schema")


def _condition(error: Any, schema: dict[str, Any]) -> tuple[str, str] | None:
    """(what is wrong, how to fix) of a rule across fields: an ``if``/``then`` whose ``then``
    the values fail, described by the ``if``'s and the ``then``'s ``description``."""
    node: Any = schema
    found = None
    for part in error.absolute_schema_path:
        if part == "then" and isinstance(node, dict) and "description" in node.get("if", {}):
            found = (node["if"]["description"], node["then"].get("description", ""))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return found
    return found


def _problem(error: Any, schema: dict[str, Any], root: Any) -> Problem:
    path = list(error.absolute_path)
    where = format_path(path) or "(values)"
    kw, value = error.validator, error.instance
    condition = _condition(error, schema)
    if condition:
        if kw == "required":
            path.append(error.message.split("'")[1] if "'" in error.message else "")
        return Problem(format_path(path) or where, condition[0], condition[1], ERROR, "schema")
    hint = _describe(schema, path) or _describe(schema, path[:-1])  # a map's entry: the map's description
    if kw == "additionalProperties":
        return _unknown(error, path, hint)
    if kw == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return Problem(where, f"{value!r} is not allowed", f"use one of {allowed}", ERROR, "schema")
    if kw == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return Problem(format_path(path + [missing]), "is required (a null removes the chart's default)",
                       _describe(schema, path + [missing]), ERROR, "schema")
    if kw in ("oneOf", "anyOf"):
        return _alternatives(error, where, hint, schema, root)
    if error.schema is False or kw is None:
        return _forbidden(error, path, hint, root)
    handler = {"type": _type, "pattern": _pattern, "not": _not, "const": _const}.get(kw)
    if handler:
        return handler(error, where, hint)
    return Problem(where, " ".join(error.message.split()), hint, ERROR, "schema")


@functools.lru_cache(maxsize=1)
def validator_class() -> type:
    """Draft-07 with `pattern` as Helm's validators apply it (Go regexp: ``$`` is the end of the
    text, not also before a final newline), and no `format` assertions (the chart uses none)."""
    import jsonschema

    def pattern(validator, expression, instance, schema):
        if validator.is_type(instance, "string") and not go_regex(expression).search(instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match the pattern")

    return jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": pattern})


@functools.lru_cache(maxsize=None)
def go_regex(expression: str) -> "re.Pattern[str]":
    """``expression`` compiled to match what Go's regexp matches: ``$`` (outside a class) -> ``\\Z``."""
    out, i, in_class = [], 0, False
    while i < len(expression):
        c = expression[i]
        if c == "\\":
            out.append(expression[i:i + 2])
            i += 2
            continue
        if in_class and c == "]":
            in_class = False
        elif not in_class and c == "[":
            in_class = True
            start = i + 1 + (expression[i + 1:i + 2] == "^")
            start += expression[start:start + 1] == "]"
            out.append(expression[i:start])
            i = start
            continue
        out.append(r"\Z" if c == "$" and not in_class else c)
        i += 1
    return re.compile("".join(out))


def schema_problems(values: dict[str, Any], schema: dict[str, Any]) -> Iterator[Problem]:
    """Every schema violation of ``values`` (draft-07, as Helm applies it), in path order."""
    validator = validator_class()(schema)
    errs = sorted(validator.iter_errors(values), key=lambda e: [str(p) for p in e.absolute_path])
    seen = set()
    for err in errs:
        problem = _problem(err, schema, values)
        if (problem.path, problem.message) not in seen:
            seen.add((problem.path, problem.message))
            yield problem


def section_schema(schema: dict[str, Any], section: str) -> dict[str, Any]:
    """The schema of one top-level values section (for validating a rendered config file)."""
    sub = dict(_subschema(schema, [section]))
    for key in ("definitions", "$defs"):
        if key in schema:
            sub[key] = schema[key]
    return sub
