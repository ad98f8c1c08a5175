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
  name, the pod's labels and annotations (the downward API);
* for a PyTorchJob, what the Training Operator v1.9 adds (:mod:`.operator_v1`): its labels, its
  env on the main containers (with and without a Master, with ``elasticPolicy``) and its
  ``init-pytorch`` container on Workers when a Master exists (run here as a built-in wait for
  the Master to be Ready);
* DNS: a pod's Service name (``<job>-worker-0``) in an address variable (``*_ADDR``, ``*_HOST``,
  ``*_ENDPOINT``) is 127.0.0.1 here and the job's port (``*_PORT``) a free local port, so that
  runs side by side do not clash; Events the pods post (:mod:`llm_finetune.core.events`) go to
  ``<workdir>/events.jsonl``.
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
from ..core.events import EVENTS_FILE_ENV
from . import operator_v1 as op
from .podspec import ContainerSpec, container_spec

# Local environment variables a pod-like process may inherit (besides what the pod declares).
PASS_THROUGH_ENV = ("LANG", "LC_ALL", "HF_ENDPOINT", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                    "LLM_FINETUNE_LOG_LEVEL")
TRAINER_CONTAINER = op.CONTAINER
EVENTS_FILE = "events.jsonl"


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
    builtin: str = ""  # "wait-for-master": the operator's init-pytorch, run as a wait here
    wait_for: str = ""  # the pod whose Service it waits for


@dataclass
class PodPlan:
    name: str
    replica_type: str  # PyTorchJob: Master/Worker; TrainJob: the replicated job (init, node)
    index: int
    processes: list[ProcessSpec] = field(default_factory=list)
    stage: int = 0  # pods of a stage start once every pod of the earlier stages succeeded (JobSet dependsOn)
    restart_policy: str = "Never"  # the pod's own restartPolicy (the replica's ExitCode -> Never)
    grace: float = 30.0  # terminationGracePeriodSeconds

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
    labels: dict[str, str] = field(default_factory=dict)
    restart_policy: str = "Never"
    injected: tuple[str, ...] = ()  # init containers the operator added (init-pytorch)


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
    job: Any = None  # op.JobSpec (a PyTorchJob: the Training Operator model) or operator_v2.JobSetSpec (a TrainJob)

    @property
    def events_file(self) -> str:
        return str(Path(self.workdir) / EVENTS_FILE)


def find(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m.get("kind") == kind]


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
              **{f"metadata.annotations['{k}']": v for k, v in pod.annotations.items()},
              **{f"metadata.labels['{k}']": v for k, v in pod.labels.items()}}
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


class _Network:
    """The job's Service names resolve to 127.0.0.1 here; its port is a free local one."""

    ADDRESS_SUFFIXES = ("_ADDR", "_HOST", "_ENDPOINT")

    def __init__(self, services: set[str], ports: set[str], port: int | None):
        self.services, self.ports, self.port = services, ports, str(port) if port else ""

    def localize(self, name: str, value: str) -> str:
        host, sep, port = value.partition(":")
        if not name.endswith(self.ADDRESS_SUFFIXES + ("_PORT",)):
            return value
        if value in self.services:
            return "127.0.0.1"
        if sep and host in self.services and port in self.ports and self.port:
            return f"127.0.0.1:{self.port}"
        if name.endswith("_PORT") and value in self.ports and self.port:
            return self.port
        return value


def _pytorchjob_pods(manifests: list[dict[str, Any]]) -> tuple[dict[str, Any], op.JobSpec, list[Pod]]:
    """The pods Training Operator v1.9 creates for the rendered PyTorchJob (:mod:`.operator_v1`)."""
    jobs = find(manifests, "PyTorchJob")
    if len(jobs) != 1:
        raise UserError(f"expected one PyTorchJob in the rendered chart, found {len(jobs)}")
    job = op.JobSpec.from_manifest(jobs[0])
    pods = []
    for name, rtype, index in job.pod_names():
        replica = job.replicas[rtype]
        meta, pod_spec = replica.template.get("metadata") or {}, copy.deepcopy(replica.template.get("spec") or {})
        injected_env = [{"name": k, "value": v} for k, v in op.operator_env(job, rtype, index)]
        for c in pod_spec.get("containers") or []:  # main containers only (envvar.go:49)
            c["env"] = upsert_env(c.get("env") or [], injected_env)
        injected = op.injected_init_containers(job, rtype)
        pod_spec["initContainers"] = list(pod_spec.get("initContainers") or []) + injected
        rank0 = (rtype == "Master") if job.has_master else (index == 0)
        pods.append(Pod(name, rtype, index, pod_spec, dict(meta.get("annotations") or {}),
                        rank0_trainer=TRAINER_CONTAINER if rank0 else "",
                        labels={**(meta.get("labels") or {}), **op.pod_labels(job, rtype, index)},
                        restart_policy=op.pod_restart_policy(replica), injected=tuple(c["name"] for c in injected)))
    return jobs[0], job, pods


def build_plan(manifests: list[dict[str, Any]], workdir: str | os.PathLike[str], *,
               local_env: dict[str, str] | None = None, master_port: int | None = None) -> JobPlan:
    """Plan the local processes for the rendered manifests (no side effects but folders)."""
    local_env = dict(os.environ if local_env is None else local_env)
    spec: Any
    if find(manifests, "TrainJob"):
        from . import operator_v2

        job, spec, pods = operator_v2.pods(manifests)
        network = _Network({operator_v2.master_service(spec.name)}, {str(operator_v2.DEFAULT_PORT)}, master_port)
    else:
        job, spec, pods = _pytorchjob_pods(manifests)
        network = _Network({p.name for p in pods}, {str(spec.port(t)) for t in spec.replicas}, master_port)
    namespace = job["metadata"].get("namespace") or "default"
    workdir = Path(workdir).resolve()
    volumes = _Volumes(workdir, {c["metadata"]["name"]: c for c in find(manifests, "ConfigMap")})
    missing: list[str] = []
    plans: list[PodPlan] = []
    config_file, rank0_mounts = "", {}
    for pod in pods:
        plan = PodPlan(pod.name, pod.replica_type, pod.index, stage=pod.stage, restart_policy=pod.restart_policy,
                       grace=float(pod.spec.get("terminationGracePeriodSeconds", 30)))
        folders = {v["name"]: volumes.folder(pod.name, v) for v in pod.spec.get("volumes") or []}
        containers = [(c, True) for c in pod.spec.get("initContainers") or []]
        containers += [(c, False) for c in pod.spec.get("containers") or []]
        for container, is_init in containers:
            if container["name"] in pod.injected:
                plan.processes.append(_injected(container, pod, workdir, f"{job['metadata']['name']}-master-0"))
                continue
            spec_ = _process(container, is_init, pod, folders, namespace=namespace, workdir=workdir,
                             local_env=local_env, missing=missing)
            spec_.env = {k: network.localize(k, v) for k, v in spec_.env.items()}
            plan.processes.append(spec_)
            if not is_init and container["name"] == pod.rank0_trainer:
                rank0_mounts = dict(spec_.mounts)
                if "--config" in spec_.argv[:-1]:
                    config_file = spec_.argv[spec_.argv.index("--config") + 1]
        plans.append(plan)
    if missing:
        raise UserError("secrets referenced by the chart are not in the local environment: " + ", ".join(sorted(set(missing))),
                        hint="export those variables before run-local (secrets are never read from files)")
    return JobPlan(job["metadata"]["name"], namespace, config_file, plans, str(workdir), rank0_mounts, spec)


def _injected(container: dict[str, Any], pod: Pod, workdir: Path, master: str) -> ProcessSpec:
    """The operator's init-pytorch: run as a wait for the Master's Service (runner.PodRun)."""
    argv = list(container.get("command") or [])
    return ProcessSpec(pod.name, container["name"], True, argv, {}, argv,
                       str(workdir / "pods" / pod.name / f"termination-log.{container['name']}"),
                       builtin="wait-for-master", wait_for=master)


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
    env[EVENTS_FILE_ENV] = str(workdir / EVENTS_FILE)
    env[PATH_MAP_ENV] = ",".join(f"{src}={dst}" for src, dst in mounts)
    # The pod's view (no path mapping; the operator's env is in the pod spec already) for a container runtime.
    pod_env = {k: local_env[k] for k in PASS_THROUGH_ENV if k in local_env}
    pod_env.update(_container_env(container, pod=pod, namespace=namespace, mounts=[], local_env=local_env,
                                  missing_secrets=[]))
    as_container = container_spec(pod.name, pod.spec, container, folders={k: str(v) for k, v in folders.items()},
                                  env=pod_env, init=is_init)
    return ProcessSpec(pod.name, container["name"], is_init, argv, env, rendered, str(term), mounts, as_container)
