"""Validate values against the chart's ``values.schema.json`` (JSON Schema draft-07, as Helm does).

The schema is the chart's own file: there is no second copy in Python. jsonschema's
messages are turned into ``path: what is wrong — how to fix`` lines; the fix quotes the
property's ``description`` from the schema, so the hint is what the chart documents.
"""

from __future__ import annotations

import difflib
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
    hint = _describe(schema, path)
    if kw == "additionalProperties":
        parent = error.schema.get("properties", {})
        extra = sorted(set(value) - set(parent)) if isinstance(value, dict) else []
        if len(extra) == 1:
            close = difflib.get_close_matches(extra[0], list(parent), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(sorted(parent))}"
            return Problem(format_path(path + [extra[0]]), "unknown field", hint, ERROR, "schema")
        return Problem(where, f"unknown fields: {', '.join(extra)}", f"known fields: {', '.join(sorted(parent))}", ERROR, "schema")
    if kw == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        msg = f"expected {want}, got {_type_name(value)} {value!r}"
        quoted = quoted_scalar_hint(value)
        if quoted:
            hint = f"{quoted}; {hint}".rstrip("; ")
        return Problem(where, msg, hint, ERROR, "schema")
    if kw == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return Problem(where, f"{value!r} is not allowed", f"use one of {allowed}", ERROR, "schema")
    if kw == "pattern":
        return Problem(where, f"{value!r} does not match {error.validator_value}", hint, ERROR, "schema")
    if kw == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return Problem(format_path(path + [missing]), "is required", _describe(schema, path + [missing]), ERROR, "schema")
    if kw in ("oneOf", "anyOf"):
        # Report the branch that came closest: the deepest error, preferring a branch of the
        # value's own type (a pattern beats "is not of type integer").
        context = list(error.context or ())
        telling = [e for e in context if e.validator not in ("type", "const")] or context
        best = max(telling, key=lambda e: len(list(e.absolute_path)), default=None)
        if best is not None and best.validator not in ("type", "const"):
            sub = _problem(best, schema, root)
            return Problem(sub.path, sub.message, sub.hint or hint, ERROR, "schema")
        return Problem(where, f"{value!r} does not match any allowed form", hint, ERROR, "schema")
    if error.schema is False or kw is None:
        # A `false` subschema (e.g. if/then forbidding a field): jsonschema reports it at the parent object.
        parent = _at(root, path)
        keys = [k for k, v in parent.items() if v == value] if isinstance(parent, dict) else []
        field_path = format_path(path + keys[:1]) if len(keys) == 1 else where
        return Problem(field_path, "is not allowed together with the other fields set here", hint, ERROR, "schema")
    return Problem(where, " ".join(error.message.split()), hint, ERROR, "schema")


def schema_problems(values: dict[str, Any], schema: dict[str, Any]) -> Iterator[Problem]:
    """Every schema violation of ``values`` (draft-07), in path order."""
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)  # no format assertions: Helm makes none
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
