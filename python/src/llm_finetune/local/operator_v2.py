"""What Kubeflow Trainer v2 makes of the rendered TrainJob: its pods, as the cluster would create them.

run-local executes the ``backend: trainjob`` render with this model (the PyTorchJob backend has its
own, ``operator_v1``). From the rendered ``TrainJob`` and the ``TrainingRuntime`` it references it
does what three controllers do, and nothing more:

* **the trainer** (kubeflow/trainer v2.3.0): the runtime's JobSet template, with the TrainJob's
  ``spec.trainer`` applied to the container ``node`` of the replicated job labelled
  ``trainer.kubeflow.org/trainjob-ancestor-step: trainer`` — image, command and args replaced,
  env upserted, ``resourcesPerNode`` merged, ``numNodes`` pods
  (``pkg/runtime/framework/plugins/jobset/builder.go`` ``Trainer()``,
  ``pkg/runtime/core/trainingruntime.go`` ``newRuntimeInfo``) — and the torch plugin's env on that
  container only (``pkg/runtime/framework/plugins/torch/torch.go`` ``EnforceMLPolicy``):
  ``PET_NNODES``, ``PET_NPROC_PER_NODE`` (the TrainJob's ``numProcPerNode``; unset means ``auto``,
  which becomes the CPU request when no GPU is requested), ``PET_NODE_RANK`` from the pod's
  completion-index annotation, ``PET_MASTER_ADDR=<job>-node-0-0.<job>`` and ``PET_MASTER_PORT=29500``;
* **JobSet** (kubernetes-sigs/jobset v0.12.0): one Job per replicated job (``replicas: 1``), named
  ``<job>-<replicated job>-0``, its pods ``<job>-<replicated job>-0-<index>``
  (``pkg/util/placement/placement.go``); a replicated job with ``dependsOn: Complete`` starts only
  after those jobs completed (``pkg/controllers/depends_on.go``): here a later *stage*;
* **the Job controller** (Kubernetes): Indexed completion mode, the annotation
  ``batch.kubernetes.io/job-completion-index`` and env ``JOB_COMPLETION_INDEX`` on every container
  (``pkg/controller/job/indexed_job_utils.go`` ``addCompletionIndexEnvVariables``).

On one machine every "pod" is 127.0.0.1, so ``PET_MASTER_ADDR`` is ``127.0.0.1`` and the port a
free one (the caller's), so that runs side by side do not clash.
"""

from __future__ import annotations

import copy
from typing import Any

from ..core.errors import UserError
from .plan import Pod, upsert_env

GROUP = "trainer.kubeflow.org"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
TRAINER_ANCESTOR = "trainer"
NODE = "node"
DEFAULT_PORT = 29500  # constants.ContainerTrainerPort
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
PET_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")


def _one(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m.get("kind") == kind and str(m.get("apiVersion", "")).startswith(GROUP + "/")]


def find_runtime(manifests: list[dict[str, Any]], job: dict[str, Any]) -> dict[str, Any]:
    ref = job["spec"]["runtimeRef"]
    kind = ref.get("kind") or "ClusterTrainingRuntime"
    for runtime in _one(manifests, kind):
        if runtime["metadata"]["name"] == ref["name"]:
            return runtime
    raise UserError(f"TrainJob {job['metadata']['name']} references {kind} {ref['name']!r}, which the chart did not render",
                    hint="run-local needs the chart's own TrainingRuntime: leave trainjob.runtimeRef empty")


def _merge_resources(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """trainingruntime.MergeResourceRequirements: limits and requests merged per resource name."""
    out = copy.deepcopy(base or {})
    for kind in ("requests", "limits"):
        if override.get(kind):
            out.setdefault(kind, {}).update(override[kind])
    return out


def _quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def nproc_per_node(trainer: dict[str, Any], resources: dict[str, Any]) -> str:
    """PET_NPROC_PER_NODE: numProcPerNode, else "auto"; "auto" without a GPU is the CPU request
    (else limit), at least 1 (torch.go getNumCPUPerNode; runtime.GetNumGPUPerNode: any resource
    name containing "gpu")."""
    if trainer.get("numProcPerNode") is not None:
        return str(int(trainer["numProcPerNode"]))
    gpus = any("gpu" in name.lower() and _quantity(q) > 0
               for kind in ("requests", "limits") for name, q in (resources.get(kind) or {}).items())
    if gpus:
        return "auto"
    cpu = (resources.get("requests") or {}).get("cpu") or (resources.get("limits") or {}).get("cpu")
    return str(max(1, int(_quantity(cpu)))) if cpu is not None else "1"


def _stages(replicated_jobs: list[dict[str, Any]]) -> dict[str, int]:
    stage: dict[str, int] = {}
    for rjob in replicated_jobs:
        deps = rjob.get("dependsOn") or []
        for dep in deps:
            if dep["name"] not in stage:
                raise UserError(f"replicated job {rjob['name']!r} depends on {dep['name']!r}, which does not come before it")
            if dep.get("status") != "Complete":
                raise UserError(f"replicated job {rjob['name']!r}: dependsOn status {dep.get('status')!r} is not modelled by run-local",
                                hint="run-local models dependsOn status Complete")
        stage[rjob["name"]] = max((stage[d["name"]] + 1 for d in deps), default=0)
    return stage


def pods(manifests: list[dict[str, Any]], *, master_port: int = DEFAULT_PORT) -> tuple[dict[str, Any], list[Pod]]:
    """(the TrainJob, its pods in stage order) for the rendered chart."""
    jobs = _one(manifests, "TrainJob")
    if len(jobs) != 1:
        raise UserError(f"expected one TrainJob in the rendered chart, found {len(jobs)}")
    job = jobs[0]
    name = job["metadata"]["name"]
    trainer = job["spec"].get("trainer") or {}
    runtime = find_runtime(manifests, job)
    rjobs = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    stages = _stages(rjobs)
    num_nodes = int(trainer.get("numNodes") or (runtime["spec"].get("mlPolicy") or {}).get("numNodes") or 1)
    out: list[Pod] = []
    for rjob in rjobs:
        is_trainer = ((rjob["template"].get("metadata") or {}).get("labels") or {}).get(ANCESTOR_LABEL) == TRAINER_ANCESTOR
        job_spec = rjob["template"]["spec"]
        count = num_nodes if is_trainer else int(job_spec.get("parallelism") or 1)
        template = copy.deepcopy(job_spec["template"])
        spec = template["spec"]
        if is_trainer:
            _apply_trainer(spec, trainer, name, num_nodes, master_port)
        for index in range(count):
            pod_spec = copy.deepcopy(spec)
            for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
                c["env"] = upsert_env(c.get("env") or [], [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {
                    "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}}])
            annotations = {**((template.get("metadata") or {}).get("annotations") or {}), COMPLETION_INDEX: str(index)}
            out.append(Pod(f"{name}-{rjob['name']}-0-{index}", rjob["name"], index, pod_spec, annotations,
                           stages[rjob["name"]], NODE if is_trainer and index == 0 else ""))
    out.sort(key=lambda p: p.stage)
    return job, out


def _apply_trainer(spec: dict[str, Any], trainer: dict[str, Any], job_name: str, num_nodes: int, port: int) -> None:
    containers = [c for c in spec["containers"] if c["name"] == NODE]
    if not containers:
        raise UserError(f"the trainer's replicated job has no container named {NODE!r}")
    node = containers[0]
    for key in ("image", "command", "args"):
        if trainer.get(key) is not None:
            node[key] = copy.deepcopy(trainer[key])
    node["resources"] = _merge_resources(node.get("resources") or {}, trainer.get("resourcesPerNode") or {})
    reserved = sorted({e["name"] for e in trainer.get("env") or []} & set(PET_ENV))
    if reserved:
        raise UserError(f"TrainJob spec.trainer.env sets {', '.join(reserved)}, which the trainer reserves",
                        hint="the trainer's webhook rejects them: remove them from job.env")
    env = upsert_env(node.get("env") or [], trainer.get("env") or [])
    env = upsert_env(env, [
        {"name": "PET_NNODES", "value": str(num_nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": nproc_per_node(trainer, node["resources"])},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}},
        # <job>-node-0-0.<job> in the cluster; every local "pod" is this machine.
        {"name": "PET_MASTER_ADDR", "value": "127.0.0.1"},
        {"name": "PET_MASTER_PORT", "value": str(port)},
    ])
    node["env"] = env
    if not any(p.get("containerPort") == DEFAULT_PORT for p in node.get("ports") or []):
        node.setdefault("ports", []).append({"containerPort": DEFAULT_PORT})
