"""Turn the rendered chart into local processes: the pods of the job, as the cluster would run them.

Nothing here rebuilds a command by hand. An operator model turns the rendered job into the
pods the cluster would create (:class:`Pod`: metadata, pod spec with the operator's env
added, and a stage): the PyTorchJob's below (Master, then ``Worker`` replicas), the
TrainJob's in :mod:`.operator_v2`. For every pod the plan takes each init container and
container as rendered (``command`` + ``args``, ``env``, ``volumeMounts``) and only does what
Kubernetes would do:

* volumes → local folders: a claim is one folder shared by every pod, an ephemeral
  volume or emptyDir one folder per pod, a ConfigMap a folder holding its data files;
  each ``mountPath`` maps to its folder (argv, env values and, through
  ``LLM_FINETUNE_PATH_MAP``, the job config's paths);
* ``env``: literal values (path-mapped), ``secretKeyRef`` from the local environment
  variable of the same name (never from a file), ``fieldRef`` for the namespace, the pod
  name and the pod's annotations (the downward API);
* for a PyTorchJob, the Training Operator's injected env for the ``pytorch`` container
  (``pkg/controller.v1/pytorch/envvar.go`` in kubeflow/training-operator v1.9):
  ``MASTER_ADDR``/``MASTER_PORT``/``PET_MASTER_ADDR``/``PET_MASTER_PORT``,
  ``WORLD_SIZE`` = replicas × nprocPerNode, ``RANK`` = ``PET_NODE_RANK`` = replica index
  (Workers start at 1), ``PET_NPROC_PER_NODE``, ``PET_NNODES``, ``PYTHONUNBUFFERED``;
  with ``MASTER_ADDR=127.0.0.1`` since every "pod" is on this machine.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import PATH_MAP_ENV
from ..core.errors import TERMINATION_LOG_ENV, UserError
from .podspec import ContainerSpec, container_spec

# Local environment variables a pod-like process may inherit (besides what the pod declares).
PASS_THROUGH_ENV = ("LANG", "LC_ALL", "HF_ENDPOINT", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                    "LLM_FINETUNE_LOG_LEVEL")
TRAINER_CONTAINER = "pytorch"


@dataclass
class ProcessSpec:
    pod: str
    container: str
    init: bool
    argv: list[str]
    env: dict[str, str]
    rendered_argv: list[str]  # the manifest's command + args, before path mapping
    termination_log: str
    mounts: list[tuple[str, str]] = field(default_factory=list)  # (mount path, local folder), longest path first
    container_spec: ContainerSpec | None = None  # the same container as the pod spec has it (--runtime container)


@dataclass
class PodPlan:
    name: str
    replica_type: str  # PyTorchJob: Master/Worker; TrainJob: the replicated job (init, node)
    index: int
    processes: list[ProcessSpec] = field(default_factory=list)
    stage: int = 0  # pods of a stage start once every pod of the earlier stages succeeded (JobSet dependsOn)

    @property
    def short(self) -> str:
        """How log lines name the pod: master-0, worker-1, init-0, node-1."""
        return f"{self.replica_type.lower()}-{self.index}"


@dataclass
class Pod:
    """A pod as an operator model says the cluster creates it: the pod spec with the operator's
    env added to its containers, the annotations the downward API reads, and its stage."""

    name: str
    replica_type: str
    index: int
    spec: dict[str, Any]
    annotations: dict[str, str] = field(default_factory=dict)
    stage: int = 0
    rank0_trainer: str = ""  # the container running global rank 0's trainer, in that pod only


def upsert_env(env: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A variable of the same name is replaced in place, others appended (what both operators do)."""
    out = [dict(e) for e in env]
    for item in extra:
        for i, e in enumerate(out):
            if e["name"] == item["name"]:
                out[i] = dict(item)
                break
        else:
            out.append(dict(item))
    return out


@dataclass
class JobPlan:
    job_name: str
    namespace: str
    config_file: str  # local path of the mounted job config.yaml
    pods: list[PodPlan]
    workdir: str
    mounts: dict[str, str]  # pod mount path -> local folder, of global rank 0's trainer container


def find(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m.get("kind") == kind]


def _replica_types(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    specs = job["spec"]["pytorchReplicaSpecs"]
    order = sorted(specs, key=lambda t: (t != "Master", t))
    return [(t, specs[t]) for t in order]


def _total_replicas(job: dict[str, Any]) -> int:
    return sum(int(s.get("replicas", 1)) for _, s in _replica_types(job))


def _master_port(job: dict[str, Any]) -> int:
    """The Master's pytorchjob-port (the operator's webhook defaults it to 23456)."""
    for c in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]:
        if c.get("name") == TRAINER_CONTAINER:
            for p in c.get("ports") or []:
                if p.get("name") == "pytorchjob-port":
                    return int(p["containerPort"])
    return 23456


def operator_env(job: dict[str, Any], replica_type: str, index: int, master_port: int) -> dict[str, str]:
    """What the Training Operator v1 adds to each container of a PyTorchJob pod."""
    nproc = str(job["spec"].get("nprocPerNode") or "1")
    nproc_int = int(nproc) if nproc.isdigit() else 1
    rank = index + 1 if replica_type == "Worker" else index
    total = _total_replicas(job)
    env = {"PYTHONUNBUFFERED": "1"}  # envvar.go: "Set PYTHONUNBUFFERED to true"
    if "Master" in job["spec"]["pytorchReplicaSpecs"]:
        env.update({
            "MASTER_PORT": str(master_port), "MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(master_port), "PET_MASTER_ADDR": "127.0.0.1",
            "WORLD_SIZE": str(total * nproc_int), "RANK": str(rank),
            "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": str(rank),
        })
    if job["spec"].get("elasticPolicy") is None:
        env["PET_NNODES"] = str(total)
    return env


class _Volumes:
    """Local folders standing in for the pod volumes."""

    def __init__(self, workdir: Path, configmaps: dict[str, dict[str, Any]]):
        self.workdir = workdir
        self.configmaps = configmaps

    def folder(self, pod: str, volume: dict[str, Any]) -> Path:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            return self.workdir / "claims" / volume["persistentVolumeClaim"]["claimName"]
        if "configMap" in volume:
            cm_name = volume["configMap"]["name"]
            cm = self.configmaps.get(cm_name)
            if cm is None:
                raise UserError(f"pod {pod} mounts ConfigMap {cm_name!r}, which the chart did not render")
            d = self.workdir / "configmaps" / cm_name
            d.mkdir(parents=True, exist_ok=True)
            for key, text in (cm.get("data") or {}).items():
                (d / key).write_text(text, encoding="utf-8")
            return d
        if "ephemeral" in volume or "emptyDir" in volume:
            return self.workdir / "pods" / pod / "volumes" / name
        raise UserError(f"pod {pod}: volume {name!r} of an unsupported type for run-local",
                        hint="run-local supports persistentVolumeClaim, ephemeral, emptyDir and configMap volumes")


def _map_prefix(value: str, mounts: list[tuple[str, str]]) -> str:
    for src, dst in mounts:
        if value == src or value.startswith(src + "/"):
            return dst + value[len(src):]
    return value


def _resolve_executable(name: str) -> str:
    """Console scripts (llm-finetune, torchrun) from this interpreter's environment first, then PATH."""
    if os.sep in name:
        return name
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise UserError(f"command {name!r} rendered by the chart is not installed here",
                        hint="install the python/ package with its extras (make venv)")
    return found


def _container_env(container: dict[str, Any], *, pod: Pod, namespace: str, mounts: list[tuple[str, str]],
                   local_env: dict[str, str], missing_secrets: list[str]) -> dict[str, str]:
    fields = {"metadata.namespace": namespace, "metadata.name": pod.name,
              **{f"metadata.annotations['{k}']": v for k, v in pod.annotations.items()}}
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = _map_prefix(str(item["value"]), mounts)
            continue
        source = item.get("valueFrom") or {}
        if "secretKeyRef" in source:
            if name in local_env:
                env[name] = local_env[name]
            elif not source["secretKeyRef"].get("optional"):
                ref = source["secretKeyRef"]
                missing_secrets.append(f"{name} (Secret {ref.get('name')}/{ref.get('key')})")
        elif "fieldRef" in source:
            path = source["fieldRef"].get("fieldPath")
            env[name] = fields.get(path, "")
        elif "configMapKeyRef" in source or "resourceFieldRef" in source:
            continue
    return env


def _pytorchjob_pods(manifests: list[dict[str, Any]], master_port: int | None) -> tuple[dict[str, Any], list[Pod]]:
    """The Training Operator v1's pods of the rendered PyTorchJob, with its env on the ``pytorch`` containers."""
    jobs = find(manifests, "PyTorchJob")
    if len(jobs) != 1:
        raise UserError(f"expected one PyTorchJob in the rendered chart, found {len(jobs)}")
    job = jobs[0]
    port = master_port or _master_port(job)
    pods = []
    for replica_type, spec in _replica_types(job):
        for index in range(int(spec.get("replicas", 1))):
            pod_spec = copy.deepcopy(spec["template"]["spec"])
            injected = [{"name": k, "value": v} for k, v in operator_env(job, replica_type, index, port).items()]
            for c in pod_spec.get("containers") or []:
                c["env"] = upsert_env(c.get("env") or [], injected)
            pods.append(Pod(f"{job['metadata']['name']}-{replica_type.lower()}-{index}", replica_type, index, pod_spec,
                            rank0_trainer=TRAINER_CONTAINER if replica_type == "Master" else ""))
    return job, pods


def build_plan(manifests: list[dict[str, Any]], workdir: str | os.PathLike[str], *,
               local_env: dict[str, str] | None = None, master_port: int | None = None) -> JobPlan:
    """Plan the local processes for the rendered manifests (no side effects but folders)."""
    local_env = dict(os.environ if local_env is None else local_env)
    if find(manifests, "TrainJob"):
        from . import operator_v2

        job, pods = operator_v2.pods(manifests, master_port=master_port or operator_v2.DEFAULT_PORT)
    else:
        job, pods = _pytorchjob_pods(manifests, master_port)
    namespace = job["metadata"].get("namespace") or "default"
    workdir = Path(workdir).resolve()
    volumes = _Volumes(workdir, {c["metadata"]["name"]: c for c in find(manifests, "ConfigMap")})
    missing: list[str] = []
    plans: list[PodPlan] = []
    config_file, rank0_mounts = "", {}
    for pod in pods:
        plan = PodPlan(pod.name, pod.replica_type, pod.index, stage=pod.stage)
        folders = {v["name"]: volumes.folder(pod.name, v) for v in pod.spec.get("volumes") or []}
        containers = [(c, True) for c in pod.spec.get("initContainers") or []]
        containers += [(c, False) for c in pod.spec.get("containers") or []]
        for container, is_init in containers:
            spec = _process(container, is_init, pod, folders, namespace=namespace, workdir=workdir,
                            local_env=local_env, missing=missing)
            plan.processes.append(spec)
            if not is_init and container["name"] == pod.rank0_trainer:
                rank0_mounts = dict(spec.mounts)
                if "--config" in spec.argv[:-1]:
                    config_file = spec.argv[spec.argv.index("--config") + 1]
        plans.append(plan)
    if missing:
        raise UserError("secrets referenced by the chart are not in the local environment: " + ", ".join(sorted(set(missing))),
                        hint="export those variables before run-local (secrets are never read from files)")
    return JobPlan(job["metadata"]["name"], namespace, config_file, plans, str(workdir), rank0_mounts)


def _process(container: dict[str, Any], is_init: bool, pod: Pod, folders: dict[str, Path], *, namespace: str,
             workdir: Path, local_env: dict[str, str], missing: list[str]) -> ProcessSpec:
    """One container as a local process: argv and env path-mapped, secrets from the local environment."""
    mounts = sorted(((m["mountPath"].rstrip("/"), str(folders[m["name"]])) for m in container.get("volumeMounts") or []),
                    key=lambda m: len(m[0]), reverse=True)
    for _, folder in mounts:
        Path(folder).mkdir(parents=True, exist_ok=True)
    rendered = list(container.get("command") or []) + list(container.get("args") or [])
    if not rendered:
        raise UserError(f"{pod.name}/{container['name']}: no command rendered",
                        hint="run-local runs the chart's explicit container commands")
    argv = [_map_prefix(a, mounts) for a in rendered]
    argv[0] = _resolve_executable(argv[0])
    env = {k: local_env[k] for k in PASS_THROUGH_ENV if k in local_env}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + local_env.get("PATH", "/usr/bin:/bin")
    env.update(_container_env(container, pod=pod, namespace=namespace, mounts=mounts, local_env=local_env,
                              missing_secrets=missing))
    tmp = dict(mounts).get("/tmp")
    if tmp:
        env["TMPDIR"] = tmp
    term = workdir / "pods" / pod.name / f"termination-log.{container['name']}"
    env[TERMINATION_LOG_ENV] = str(term)
    env[PATH_MAP_ENV] = ",".join(f"{src}={dst}" for src, dst in mounts)
    # The pod's view (no path mapping; the operator's env is in the pod spec already) for a container runtime.
    pod_env = {k: local_env[k] for k in PASS_THROUGH_ENV if k in local_env}
    pod_env.update(_container_env(container, pod=pod, namespace=namespace, mounts=[], local_env=local_env,
                                  missing_secrets=[]))
    as_container = container_spec(pod.name, pod.spec, container, folders={k: str(v) for k, v in folders.items()},
                                  env=pod_env, init=is_init)
    return ProcessSpec(pod.name, container["name"], is_init, argv, env, rendered, str(term), mounts, as_container)
