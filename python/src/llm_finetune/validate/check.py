"""The validator's entry points: values files, merged values, a rendered config.

* :func:`validate_files` — ``llm-finetune validate -f ... --set ...``: merge like Helm
  (:mod:`.values`, :mod:`.strvals`), validate against ``values.schema.json`` with
  jsonschema draft-07 (:mod:`.schema`), then :mod:`.rules` and :mod:`.introspect`.
* :func:`validate_values` — the same on an already merged mapping.
* :func:`validate_config` — a rendered ``config.yaml`` (the preflight hook): each values
  section against its part of the same schema, the strict config loader, and the rules
  that apply to what a config (plus optional extra values) holds.
* :func:`check_job_config` — the same for the images: the trainer applies it at start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..core.config import JobConfig
from ..core.problems import ERROR, WARNING, Problem, raise_first_error

CONFIG_SECTIONS = ("model", "dataset", "data", "training", "output", "download")


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    source: str = ""  # what was validated, for the summary line
    values: dict[str, Any] = field(default_factory=dict)  # the merged values (values mode)

    def by_severity(self, severity: str) -> list[Problem]:
        return [p for p in self.problems if p.severity == severity]

    @property
    def errors(self) -> list[Problem]:
        return self.by_severity(ERROR)

    @property
    def warnings(self) -> list[Problem]:
        return self.by_severity(WARNING)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        def n(count: int, word: str) -> str:
            return f"{count} {word}{'' if count == 1 else 's'}"

        counts = f"{n(len(self.errors), 'error')}, {n(len(self.warnings), 'warning')}"
        return f"{'valid' if self.ok else 'invalid'}: {self.source} ({counts})"

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.ok, "source": self.source, "errors": len(self.errors),
                "warnings": len(self.warnings), "problems": [p.to_dict() for p in self.problems]}


def _under(path: str, prefixes: set[str]) -> bool:
    return any(path == p or path.startswith(p + ".") or path.startswith(p + "[") for p in prefixes)


def validate_values(values: dict[str, Any], schema: dict[str, Any], *, introspect: bool = True) -> list[Problem]:
    """Schema problems, then semantic problems on fields the schema did not already reject."""
    from .rules import semantic_problems
    from .schema import schema_problems

    return _combine(list(schema_problems(values, schema)), semantic_problems(values, introspect=introspect))


def _combine(schema_found: list[Problem], semantic: list[Problem]) -> list[Problem]:
    """Schema and rule problems without repeats: where both reject a field, the rule's message
    is the more specific one; a rule is not run past a field the schema rejected. No message
    repeats a credential it found (:func:`llm_finetune.validate.credentials.redact`)."""
    from dataclasses import replace

    from .credentials import redact

    specific = {p.path for p in semantic if p.severity == ERROR}
    problems = [p for p in schema_found if p.path not in specific]
    rejected = {p.path for p in problems}
    found = problems + [p for p in semantic if not _under(p.path, rejected)]
    return [replace(p, path=redact(p.path), message=redact(p.message), hint=redact(p.hint)) for p in found]


def validate_files(files: Sequence[str | os.PathLike[str]] = (), sets: Iterable[tuple[str, str]] = (),
                   chart: str | os.PathLike[str] | None = None, *, introspect: bool = True) -> Report:
    """Merge values like ``helm template -f ... --set ...`` would and validate them."""
    from . import values as V

    sets = list(sets)
    chart_path = V.chart_dir(chart)
    schema = V.load_schema(chart_path)
    warnings: list[str] = []
    merged = V.helm_values(chart_path, files, sets, warnings)
    problems = [Problem(w.split(":", 1)[0], w.split(":", 1)[1].strip(), "", WARNING, "merge") for w in warnings]
    problems += validate_values(merged, schema, introspect=introspect)
    parts = ["chart defaults"] + [str(f) for f in files] + ([f"{len(sets)} --set"] if sets else [])
    return Report(problems, " + ".join(parts), merged)


def config_values(config: dict[str, Any]) -> dict[str, Any]:
    """The values-shaped view of a rendered config: its values sections and storage.mode."""
    view = {k: config[k] for k in CONFIG_SECTIONS if k in config}
    storage = config.get("storage")
    if isinstance(storage, dict) and "mode" in storage:
        view["storage"] = {"mode": storage["mode"]}
    return view


def validate_config(config: dict[str, Any], schema: dict[str, Any], *, extra_values: dict[str, Any] | None = None,
                    introspect: bool = True) -> list[Problem]:
    """Problems of a rendered config mapping; ``extra_values`` adds values the config lacks (preflight)."""
    from ..core.config import from_dict
    from ..core.errors import ConfigError
    from .rules import semantic_problems
    from .schema import schema_problems, section_schema
    from .values import merge_maps

    problems: list[Problem] = []
    view = config_values(config)
    for section, value in view.items():
        sub = section_schema(schema, section)
        if section == "storage":  # the config holds storage.mode only: the rest is not required here
            sub = {k: v for k, v in sub.items() if k != "required"}
        for p in schema_problems(value, sub):
            path = f"{section}.{p.path}" if p.path != "(values)" else section
            problems.append(Problem(path, p.message, p.hint, p.severity, p.rule))
    if not problems:  # the strict loader stops at the first problem: run it when the schema found none
        try:
            from_dict(config)
        except ConfigError as exc:
            problems.append(Problem(exc.field or "config", exc.message, exc.hint or "", ERROR, "config"))
    return _combine(problems, semantic_problems(merge_maps(view, extra_values or {}), introspect=introspect))


def check_job_config(cfg: JobConfig, chart: str | os.PathLike[str] | None = None) -> None:
    """For the images: the validator's checks of a loaded job config, the first error raised as a ConfigError.

    :func:`validate_config` on ``cfg`` (its values sections against the chart's schema, the
    strict loader, the semantic rules); the ``training.args``/``training.lora`` introspection
    is left to the trainer, which checks them against the classes it builds.
    """
    from . import values as V

    raise_first_error(validate_config(cfg.to_dict(), V.load_schema(V.chart_dir(chart)), introspect=False))


def validate_config_file(path: str | os.PathLike[str], chart: str | os.PathLike[str] | None = None, *,
                         extra_values: dict[str, Any] | None = None, introspect: bool = True) -> Report:
    from . import values as V

    config = V.load_yaml_file(path, what="config file")
    schema = V.load_schema(V.chart_dir(chart))
    return Report(validate_config(config, schema, extra_values=extra_values, introspect=introspect), str(Path(path)))
