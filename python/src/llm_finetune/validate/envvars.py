"""``job.env`` / ``initializer.env``: names the chart or the Training Operator already set, and repeats.

A container's env is a list keyed by name: the API server's server-side apply (Helm 4's default,
Argo CD's option) refuses a name twice, and where it is accepted the later entry silently wins.
The chart refuses the same at render time (``llm-finetune.checkEnvNames`` in
chart/templates/_pod.tpl); tests/chart/test_env.py checks :data:`CHART_ENV` against what the chart
renders.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..core.problems import ERROR, Problem

# Set on every job container by the chart (llm-finetune.env): writable homes and caches under /tmp.
CHART_ENV = ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TRITON_CACHE_DIR", "MPLCONFIGDIR", "HF_HUB_DISABLE_PROGRESS_BARS",
             "HF_HUB_DISABLE_TELEMETRY", "PYTHONUNBUFFERED")
# Set on the trainer container only (the grace period torchrun gives its workers).
TRAINER_ENV = ("TORCH_ELASTIC_SHUTDOWN_TIMEOUT",)
# Appended by the Training Operator to the trainer container, after ours, so they win
# (training-operator@v1.9.0:pkg/controller.v1/pytorch/envvar.go setPodEnv, master.go).
OPERATOR_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PET_NODE_RANK", "PET_NPROC_PER_NODE", "PET_NNODES",
                "PET_MASTER_ADDR", "PET_MASTER_PORT")
# Set by the chart on the PyTorchJob's containers only (backend pytorchjob; chart/templates/_podtemplate.tpl):
# the pod's identity (llm-finetune.podIdentityEnv) on both, and on the trainer the rendezvous timeout and
# whether it posts failure Events (llm-finetune.pytorchjobTrainerEnv).
POD_ENV = ("LLM_FINETUNE_POD_NAME", "LLM_FINETUNE_POD_INDEX", "POD_NAMESPACE")
PYTORCHJOB_TRAINER_ENV = ("PET_RDZV_CONF", "LLM_FINETUNE_JOB_EVENTS")
SECRET_ENV = {"hf": ("HF_TOKEN",), "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}


def _set_by(values: dict[str, Any], section: str) -> dict[str, str]:
    """Env name -> who sets it, for the containers of ``section`` (job: the trainer; initializer)."""
    owners = {name: "the chart (a writable home/cache under /tmp)" for name in CHART_ENV}
    secrets = values.get("secrets") if isinstance(values.get("secrets"), dict) else {}
    for kind, names in SECRET_ENV.items():
        ref = secrets.get(kind) if isinstance(secrets.get(kind), dict) else {}
        if ref.get("existingSecret"):
            owners.update({n: f"the chart, from secrets.{kind}.existingSecret" for n in names})
    if values.get("backend", "pytorchjob") == "pytorchjob":
        owners.update({n: "the chart (the pod's identity)" for n in POD_ENV})
        if section == "job":
            owners.update({n: "the chart (rendezvous timeout, failure Events)" for n in PYTORCHJOB_TRAINER_ENV})
    if section == "job":
        owners.update({n: "the chart (torchrun's shutdown grace)" for n in TRAINER_ENV})
        owners.update({n: "the Training Operator, after your entries (yours would be ignored)" for n in OPERATOR_ENV})
    return owners


def rule_env(values: dict[str, Any]) -> Iterator[Problem]:
    for section in ("job", "initializer"):
        env = values[section].get("env") if isinstance(values.get(section), dict) else None
        if not isinstance(env, list):
            continue
        owners = _set_by(values, section)
        seen: dict[str, int] = {}
        for i, entry in enumerate(env):
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                continue
            path = f"{section}.env[{i}].name"
            if name in owners:
                yield Problem(path, f"{name} is already set by {owners[name]}",
                              "remove this entry (a container's env holds each name once)", ERROR, "env")
            elif name in seen:
                yield Problem(path, f"{name} is also set by {section}.env[{seen[name]}]",
                              "keep one entry per name (a container's env holds each name once)", ERROR, "env")
            seen.setdefault(name, i)
