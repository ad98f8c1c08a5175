"""Values the way Helm computes them: chart defaults ← ``-f`` files in order ← ``--set*``.

* Files merge like Helm's ``mergeMaps``: nested maps merge, anything else (lists
  included) replaces.
* ``--set``/``--set-string``/``--set-json`` are parsed into the merged file values
  (:mod:`.strvals`), then the result is coalesced with the chart's ``values.yaml`` like
  Helm's ``CoalesceValues``: the user's values win; a user ``null`` deletes the key.
* YAML is read as Helm reads it (YAML → JSON types, :mod:`llm_finetune.core.yamlio`): timestamps stay strings.

Where the chart comes from (``chart_dir``): ``--chart DIR``, else
:func:`llm_finetune.core.helm.find_chart` (``$LLM_FINETUNE_CHART``, the source tree, ``./chart``),
else the copy shipped inside the package: ``llm_finetune/data/chart/`` holds the chart's
``Chart.yaml``, ``values.yaml`` and ``values.schema.json``, copied at wheel build time by
``python/setup.py`` (build_py) from ``../chart`` — never edited by hand. The images
install the package from a wheel built in the image, so they carry it too.
"""

from __future__ import annotations

import copy
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..core.errors import UserError
from ..core.yamlio import read_mapping
from . import strvals

SCHEMA_FILE = "values.schema.json"
VALUES_FILE = "values.yaml"
CHART_FILE = "Chart.yaml"


def load_yaml_file(path: str | os.PathLike[str], *, what: str = "values file") -> dict[str, Any]:
    """A YAML mapping from ``path`` read as Helm reads it; a missing/unreadable/bad file is a UserError naming it."""
    return read_mapping(path, what=what, helm=True)


# ---------------------------------------------------------------------------
# Where the chart is
# ---------------------------------------------------------------------------
def packaged_chart_dir() -> Path | None:
    """The chart files shipped in the installed package, or None (source checkouts have none)."""
    try:
        base = Path(str(resources.files("llm_finetune") / "data" / "chart"))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover
        return None
    return base if (base / SCHEMA_FILE).is_file() else None


def chart_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The chart folder holding values.yaml and values.schema.json (see the module docstring)."""
    from ..core.helm import find_chart

    if explicit:
        path = Path(explicit)
        if not (path / SCHEMA_FILE).is_file():
            raise UserError(f"no {SCHEMA_FILE} in {path}", field="--chart", hint="pass the chart folder (the one with Chart.yaml)")
        return path
    try:
        found = find_chart()
        if (found / SCHEMA_FILE).is_file():
            return found
    except UserError:
        pass
    packaged = packaged_chart_dir()
    if packaged is None:
        raise UserError("chart not found", field="--chart",
                        hint="pass --chart DIR, set LLM_FINETUNE_CHART, or install the package from a wheel (it ships the chart's schema)")
    return packaged


def load_schema(chart: Path) -> dict[str, Any]:
    path = chart / SCHEMA_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("schema not found", field=str(path), hint="pass the chart folder with --chart") from None
    except ValueError as exc:
        raise UserError(f"not valid JSON: {exc}", field=str(path)) from None


def chart_defaults(chart: Path) -> dict[str, Any]:
    return load_yaml_file(chart / VALUES_FILE, what="chart values.yaml")


# ---------------------------------------------------------------------------
# Merging (Helm's mergeMaps + CoalesceValues)
# ---------------------------------------------------------------------------
def merge_maps(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's ``mergeMaps`` for ``-f`` files: maps merge recursively, other values replace."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_maps(out[key], value)
        else:
            out[key] = value
    return out


def _coalesce_tables(dst: dict[str, Any], src: dict[str, Any], prefix: str, warnings: list[str],
                     helm_major: int) -> dict[str, Any]:
    """Helm's ``coalesceTablesFullKey`` (dst = user values, src = chart defaults; dst wins).

    A user null removes the chart default's key: in Helm 3 whenever the chart has the key,
    in Helm 4 only when the chart's default is not null. Otherwise the null stays.
    """
    for key, default in src.items():
        full = f"{prefix}.{key}" if prefix else key
        if key in dst and dst[key] is None:
            if helm_major < 4 or default is not None:
                del dst[key]
        elif key not in dst:
            dst[key] = default
        elif isinstance(default, dict):
            if isinstance(dst[key], dict):
                _coalesce_tables(dst[key], default, full, warnings, helm_major)
            else:
                warnings.append(f"{full}: cannot overwrite table with non table")
        elif isinstance(dst[key], dict) and default is not None:
            warnings.append(f"{full}: destination is a table, ignoring non-table default")
    return dst


def coalesce(user: dict[str, Any], defaults: dict[str, Any], warnings: list[str] | None = None,
             helm_major: int = 4) -> dict[str, Any]:
    """Helm's ``CoalesceValues`` for a chart without subcharts: the values templates see.

    ``helm_major`` picks the null rule of that Helm version (see :func:`_coalesce_tables`).
    """
    warnings = [] if warnings is None else warnings
    dst = copy.deepcopy(user)
    for key, default in copy.deepcopy(defaults).items():
        if key in dst:
            value = dst[key]
            if value is None:
                del dst[key]
            elif isinstance(value, dict):
                if isinstance(default, dict):
                    _coalesce_tables(value, default, key, warnings, helm_major)
                elif default is not None:
                    warnings.append(f"{key}: skipped value, not a table")
        else:
            dst[key] = default
    return dst


def user_values(files: Sequence[str | os.PathLike[str]] = (),
                sets: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """``-f`` files merged in order, then each ``(mode, expression)`` of ``sets`` parsed into them.

    Helm applies ``--set-json``, then ``--set``, then ``--set-string`` (each in command-line order);
    ``sets`` is applied in the order given, so pass them in that order.
    """
    merged: dict[str, Any] = {}
    for f in files:
        merged = merge_maps(merged, load_yaml_file(f))
    for mode, expression in sets:
        flag = {"typed": "--set", "string": "--set-string", "json": "--set-json"}[mode]
        try:
            strvals.parse_into(expression, merged, mode=mode)
        except strvals.StrvalsError as exc:
            raise UserError(f"cannot parse {flag} {expression!r}: {exc}", field=flag,
                            hint="use Helm's syntax: a.b=value,list[0]=x,list={x,y}") from None
    return merged


def helm_values(chart: Path, files: Sequence[str | os.PathLike[str]] = (),
                sets: Iterable[tuple[str, str]] = (), warnings: list[str] | None = None,
                helm_major: int = 4) -> dict[str, Any]:
    """The values Helm renders the chart with: chart defaults ← files ← sets."""
    return coalesce(user_values(files, sets), chart_defaults(chart), warnings, helm_major)
