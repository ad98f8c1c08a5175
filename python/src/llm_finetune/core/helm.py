"""Run the real ``helm`` binary: render the chart (run-local, tests) and find the chart folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import UserError

HELM_BIN_ENV = "HELM_BIN"
CHART_DIR_ENV = "LLM_FINETUNE_CHART"


# The repository root of a source checkout (python/src/llm_finetune/core/helm.py -> four levels up).
_SOURCE_ROOT = Path(__file__).resolve().parents[4]


def helm_binary(explicit: str | None = None) -> str:
    """``explicit``, else ``$HELM_BIN``, else ``helm`` on PATH, else the one ``make`` put in this checkout's .tools/."""
    tools = _SOURCE_ROOT / ".tools"
    installed = [str(p) for p in (tools / "helm-4.1" / "helm", tools / "helm-3.17" / "helm") if p.is_file()]
    candidate = explicit or os.environ.get(HELM_BIN_ENV) or shutil.which("helm") or next(iter(installed), None)
    if not candidate or not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
        raise UserError("helm not found", hint="install Helm 3.17+ or set HELM_BIN (make run/test install it under .tools/)")
    return candidate


def find_chart(explicit: str | None = None) -> Path:
    """The chart folder: ``explicit``, ``$LLM_FINETUNE_CHART``, or ``chart/`` of this source tree / the CWD."""
    candidates = [explicit, os.environ.get(CHART_DIR_ENV)]
    candidates += [str(_SOURCE_ROOT / "chart"), str(Path.cwd() / "chart")]
    for c in filter(None, candidates):
        if (Path(c) / "Chart.yaml").is_file():
            return Path(c)
    raise UserError("chart not found", hint="pass --chart DIR or set LLM_FINETUNE_CHART")


def template(chart: str | os.PathLike[str], *, values_files: Sequence[str] = (), set_values: Sequence[str] = (),
             release: str = "ft", namespace: str = "default", helm: str | None = None,
             extra_args: Iterable[str] = ()) -> str:
    """``helm template`` and return the manifest text; a failure is a UserError with Helm's message."""
    cmd = [helm_binary(helm), "template", release, str(chart), "--namespace", namespace]
    for f in values_files:
        cmd += ["-f", str(f)]
    for s in set_values:
        cmd += ["--set", s]
    cmd += list(extra_args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"helm template failed: {proc.stderr.strip()}", hint="fix the values named above")
    return proc.stdout


def load_manifests(text: str) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(text) if d]
