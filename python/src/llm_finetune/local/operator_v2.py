"""What Kubeflow Trainer v2 makes of the rendered TrainJob: its pods, and how it runs them.

run-local executes the ``backend: trainjob`` render with this model (the PyTorchJob backend has its
own, ``operator_v1``). From the rendered ``TrainJob`` and the ``TrainingRuntime`` it references it
does what four controllers do, and nothing more:

* **the trainer** (kubeflow/trainer v2.3.0): the runtime's JobSet template, with the TrainJob's
  ``spec.trainer`` applied to the container ``node`` of the replicated job labelled
  ``trainer.kubeflow.org/trainjob-ancestor-step: trainer`` — image, command and args replaced,
  env upserted, ``resourcesPerNode`` merged, ``numNodes`` pods
  (``pkg/runtime/framework/plugins/jobset/builder.go`` ``Trainer()``,
  ``pkg/runtime/core/trainingruntime.go`` ``newRuntimeInfo``) — and the torch plugin's env on that
  container only (``pkg/runtime/framework/plugins/torch/torch.go`` ``EnforceMLPolicy``):
  ``PET_NNODES``, ``PET_NPROC_PER_NODE`` (the TrainJob's ``numProcPerNode``; unset means ``auto``,
  which becomes the CPU request when no GPU is requested), ``PET_NODE_RANK`` from the pod's
  completion-index annotation, ``PET_MASTER_ADDR=<job>-node-0-0.<job>`` and ``PET_MASTER_PORT=29500``.
  The TrainJob's conditions are the JobSet's ``Completed``/``Failed`` renamed ``Complete``/``Failed``
  (``pkg/runtime/framework/plugins/jobset/jobset.go`` ``Status``); ``activeDeadlineSeconds`` fails
  it with ``DeadlineExceeded`` and deletes the JobSet (``pkg/controller/trainjob_controller.go``
  ``reconcileDeadline``);
* **JobSet** (kubernetes-sigs/jobset v0.12.0, :class:`JobSetReconciler`): one Job per replicated
  job (``replicas: 1``), named ``<job>-<replicated job>-0``, its pods ``<job>-<replicated job>-0-<index>``
  (``pkg/util/placement/placement.go``); a replicated job with ``dependsOn: Complete`` is created
  only once those jobs completed (``pkg/controllers/depends_on.go``); a failed Job runs the
  ``failurePolicy`` (``pkg/controllers/failure_policy.go``): none → the JobSet fails
  (``FailedJobs``); else the first rule whose ``onJobFailureReasons``/``targetReplicatedJobs`` match
  the earliest failed Job decides, no match meaning ``RestartJobSet``: every Job deleted and
  created again (``status.restarts``), until ``maxRestarts`` → ``ReachedMaxRestarts``;
  ``BlockingRecreate`` creates the new Jobs only once every old pod is gone
  (``pkg/controllers/jobset_controller.go`` ``constructJobsFromTemplate``); a finished JobSet
  deletes its active Jobs (``reconcile``); success when every Job completed (``AllJobsCompleted``);
* **the Job controller** (Kubernetes, :class:`ChildJob`): Indexed completion mode, the annotation
  ``batch.kubernetes.io/job-completion-index`` and env ``JOB_COMPLETION_INDEX`` on every container
  (``pkg/controller/job/indexed_job_utils.go`` ``addCompletionIndexEnvVariables``); a failed pod
  goes through the ``podFailurePolicy`` (``pkg/controller/job/pod_failure_policy.go``: the first
  rule whose ``onExitCodes`` match a terminated container — main or init — or whose
  ``onPodConditions`` match; ``FailJob`` fails the Job with reason ``PodFailurePolicy``, ``Ignore``
  does not count the failure), counted failures beyond ``backoffLimit`` fail it with
  ``BackoffLimitExceeded``, else the index gets a new pod after the pod-failure back-off (10 s,
  doubling, at most 10 min: ``pkg/controller/job/job_controller.go``); a failed Job's active pods
  are deleted; complete when every index succeeded.

On one machine every "pod" is 127.0.0.1: :mod:`.plan` maps the Service name in ``PET_MASTER_ADDR``
to 127.0.0.1 and the port to a free one, so that runs side by side do not clash. One pod name
stands for all the pods a Job creates for one index (the cluster adds a random suffix): a
replacement is created once the pod before it is gone.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import UserError
from .operator_v1 import Actions, Condition, Event, PodStatus, record_event
from .plan import Pod, upsert_env

GROUP = "trainer.kubeflow.org"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
TRAINER_ANCESTOR = "trainer"
NODE = "node"
DEFAULT_PORT = 29500  # constants.ContainerTrainerPort
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
PET_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
CONTROLLER = "jobset-controller"
# batch/v1 Job defaults and the Job controller's pod-failure back-off (kubernetes pkg/apis/batch/v1/defaults.go,
# pkg/controller/job/job_controller.go DefaultJobPodFailureBackOff / MaxJobPodFailureBackOff).
JOB_BACKOFF_LIMIT = 6
POD_BACKOFF_START, POD_BACKOFF_MAX = 10.0, 600.0
# jobset v0.12.0 pkg/constants/constants.go
FAILED_JOBS = ("FailedJobs", "jobset failed due to one or more job failures")
FAIL_JOBSET = ("FailJobSetFailurePolicyAction", "applying FailJobSet failure policy action")
MAX_RESTARTS = ("ReachedMaxRestarts", "jobset failed due to reaching max number of restarts")
RESTART_JOBSET = ("RestartJobSetFailurePolicyAction", "applying RestartJobSet failure policy action")
RESTART_IGNORING_MAX = ("RestartJobSetAndIgnoreMaxRestartsFailurePolicyAction",
                        "applying RestartJobSetAndIgnoreMaxRestarts failure policy action")
ALL_COMPLETED = ("AllJobsCompleted", "jobset completed successfully")
DEADLINE = ("DeadlineExceeded", "TrainJob exceeded its active deadline")  # trainer constants.go


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


# -- the JobSet the trainer builds -----------------------------------------------------------------
@dataclass(frozen=True)
class ReplicatedJob:
    name: str
    pods: int  # the Job's parallelism = completions (numNodes for the trainer's job)
    depends_on: tuple[str, ...]  # replicated jobs that must be Complete first
    backoff_limit: int
    pod_failure_rules: tuple[dict[str, Any], ...]
    is_trainer: bool = False

    def pod_name(self, jobset: str, index: int) -> str:
        return f"{jobset}-{self.name}-0-{index}"  # placement.GenPodName, job index 0 (replicas: 1)


@dataclass(frozen=True)
class JobSetSpec:
    """What run-local needs of the JobSet the trainer creates for the TrainJob (the same name)."""

    name: str
    namespace: str
    replicated_jobs: tuple[ReplicatedJob, ...]
    failure_policy: dict[str, Any] | None
    active_deadline: float | None
    kind: str = "TrainJob"

    def pod_names(self) -> list[tuple[str, str, int]]:
        return [(r.pod_name(self.name, i), r.name, i) for r in self.replicated_jobs for i in range(r.pods)]

    @property
    def blocking_recreate(self) -> bool:
        return (self.failure_policy or {}).get("restartStrategy") == "BlockingRecreate"


UNMODELLED_ACTIONS = {"RestartJob", "RestartJobAndIgnoreMaxRestarts"}  # behind jobset's RestartJob feature gate


def jobset_spec(job: dict[str, Any], runtime: dict[str, Any], num_nodes: int) -> JobSetSpec:
    template = runtime["spec"]["template"]["spec"]
    rjobs = []
    for rjob in template["replicatedJobs"]:
        if int(rjob.get("replicas", 1)) != 1:
            raise UserError(f"replicated job {rjob['name']!r} has replicas {rjob['replicas']}; run-local models replicas: 1")
        spec = rjob["template"]["spec"]
        trainer = ((rjob["template"].get("metadata") or {}).get("labels") or {}).get(ANCESTOR_LABEL) == TRAINER_ANCESTOR
        rjobs.append(ReplicatedJob(rjob["name"], num_nodes if trainer else int(spec.get("parallelism") or 1),
                                   tuple(d["name"] for d in rjob.get("dependsOn") or []),
                                   int(spec.get("backoffLimit", JOB_BACKOFF_LIMIT)),
                                   tuple((spec.get("podFailurePolicy") or {}).get("rules") or []), trainer))
    policy = template.get("failurePolicy")
    unmodelled = sorted({r.get("action") for r in (policy or {}).get("rules") or []} & UNMODELLED_ACTIONS)
    if unmodelled:
        raise UserError(f"the runtime's failurePolicy uses {', '.join(unmodelled)}, which run-local does not model",
                        hint="run-local models FailJobSet, RestartJobSet and RestartJobSetAndIgnoreMaxRestarts")
    deadline = job["spec"].get("activeDeadlineSeconds")
    return JobSetSpec(job["metadata"]["name"], job["metadata"].get("namespace") or "default", tuple(rjobs), policy,
                      float(deadline) if deadline else None)


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


def pods(manifests: list[dict[str, Any]]) -> tuple[dict[str, Any], JobSetSpec, list[Pod]]:
    """(the TrainJob, its JobSet, the pods of that JobSet in stage order) for the rendered chart."""
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
    spec = jobset_spec(job, runtime, num_nodes)
    out: list[Pod] = []
    for rjob, model in zip(rjobs, spec.replicated_jobs):
        template = copy.deepcopy(rjob["template"]["spec"]["template"])
        if model.is_trainer:
            _apply_trainer(template["spec"], trainer, name, num_nodes)
        for index in range(model.pods):
            pod_spec = copy.deepcopy(template["spec"])
            for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
                c["env"] = upsert_env(c.get("env") or [], [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {
                    "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}}])
            annotations = {**((template.get("metadata") or {}).get("annotations") or {}), COMPLETION_INDEX: str(index)}
            out.append(Pod(model.pod_name(name, index), rjob["name"], index, pod_spec, annotations,
                           stages[rjob["name"]], NODE if model.is_trainer and index == 0 else "",
                           labels=dict((template.get("metadata") or {}).get("labels") or {}),
                           restart_policy=pod_spec.get("restartPolicy") or "OnFailure"))  # JobSet's webhook default
    out.sort(key=lambda p: p.stage)
    return job, spec, out


def master_service(job_name: str) -> str:
    """PET_MASTER_ADDR: the first trainer pod's hostname in the JobSet's headless Service (torch.go)."""
    return f"{job_name}-{NODE}-0-0.{job_name}"


def _apply_trainer(spec: dict[str, Any], trainer: dict[str, Any], job_name: str, num_nodes: int) -> None:
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
    node["env"] = upsert_env(env, [
        {"name": "PET_NNODES", "value": str(num_nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": nproc_per_node(trainer, node["resources"])},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}},
        {"name": "PET_MASTER_ADDR", "value": master_service(job_name)},
        {"name": "PET_MASTER_PORT", "value": str(DEFAULT_PORT)},
    ])
    if not any(p.get("containerPort") == DEFAULT_PORT for p in node.get("ports") or []):
        node.setdefault("ports", []).append({"containerPort": DEFAULT_PORT})


# -- the Job controller, for one Job of the JobSet ---------------------------------------------------
def match_pod_failure_policy(rules: tuple[dict[str, Any], ...], pod: PodStatus, namespace: str) -> tuple[str, bool, str]:
    """(action, counted, FailJob message) of a failed pod (kubernetes pkg/controller/job/pod_failure_policy.go)."""
    for index, rule in enumerate(rules):
        action, message = rule.get("action", ""), ""
        if rule.get("onExitCodes") is not None:
            matched = _matching_container(rule["onExitCodes"], pod)
            if matched is None:
                continue
            message = (f"Container {matched[0]} for pod {namespace}/{pod.name} failed with exit code {matched[1]} "
                       f"matching {action} rule at index {index}")
        elif rule.get("onPodConditions") is not None:
            wanted = {(c["type"], c.get("status", "True")) for c in rule["onPodConditions"]}
            found = next((t for t in pod.conditions if (t, "True") in wanted), None)
            if found is None:
                continue
            message = f"Pod {namespace}/{pod.name} has condition {found} matching {action} rule at index {index}"
        else:
            continue
        return action, action != "Ignore", message if action == "FailJob" else ""
    return "", True, ""


def _matching_container(requirement: dict[str, Any], pod: PodStatus) -> tuple[str, int] | None:
    """matchOnExitCodes: main containers first, then init containers; exit code 0 never matches."""
    values, name = set(requirement.get("values") or []), requirement.get("containerName")
    for container, code in [*pod.exit_codes.items(), *pod.init_exit_codes.items()]:
        if code and (name is None or name == container):
            if (code in values) == (requirement.get("operator") == "In"):
                return container, code
    return None


@dataclass
class ChildJob:
    """One Job of the JobSet (``<jobset>-<replicated job>-0``), Indexed, as the Job controller runs it."""

    rjob: ReplicatedJob
    jobset: str
    namespace: str
    failures: int = 0  # counted pod failures (status.failed, less the ignored ones)
    succeeded: set[int] = field(default_factory=set)
    not_before: dict[int, float] = field(default_factory=dict)  # index -> when its next pod may be created
    condition: Condition | None = None  # Complete or Failed
    failed_at: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.jobset}-{self.rjob.name}-0"

    def reconcile(self, pods: dict[str, PodStatus], taken: set[str], now: float, actions: Actions) -> None:
        """``pods``: this generation's live pods; ``taken``: every live pod name (an old pod still being deleted)."""
        mine = {i: pods.get(self.rjob.pod_name(self.jobset, i)) for i in range(self.rjob.pods)}
        if self.condition is None:
            for index, pod in mine.items():
                self._index(index, pod, taken, now, actions)
        if self.condition is not None and self.condition.type == "Failed":  # a failed Job's active pods are deleted
            actions.delete += [p.name for p in mine.values() if p is not None and p.active]
        elif self.condition is None and len(self.succeeded) == self.rjob.pods:
            self.condition = Condition("Complete", "True", "CompletionsReached", "Reached expected number of succeeded pods")

    def _index(self, index: int, pod: PodStatus | None, taken: set[str], now: float, actions: Actions) -> None:
        name = self.rjob.pod_name(self.jobset, index)
        if pod is None:
            if index not in self.succeeded and name not in taken and now >= self.not_before.get(index, 0.0):
                actions.create.append((name, self.rjob.name, index))
            return
        if pod.deleting or pod.phase not in ("Succeeded", "Failed"):
            return
        if pod.phase == "Succeeded":
            self.succeeded.add(index)
            return
        action, counted, message = match_pod_failure_policy(self.rjob.pod_failure_rules, pod, self.namespace)
        self.failures += counted
        if action == "FailJob":
            self._fail(now, "PodFailurePolicy", message)
        elif self.failures > self.rjob.backoff_limit:
            self._fail(now, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        else:  # a new pod for this index, after the back-off
            actions.delete.append(pod.name)
            delay = min(POD_BACKOFF_MAX, POD_BACKOFF_START * 2 ** max(0, self.failures - 1)) if counted else 0.0
            self.not_before[index] = now + delay

    def _fail(self, now: float, reason: str, message: str) -> None:
        self.condition, self.failed_at = Condition("Failed", "True", reason, message), now


# -- JobSet + the TrainJob's status ---------------------------------------------------------------------
@dataclass
class TrainJobStatus:
    """The TrainJob's conditions (``kubectl get trainjob`` shows the last one's type) and the JobSet's restarts."""

    conditions: list[Condition] = field(default_factory=list)
    restarts: int = 0  # JobSet status.restarts
    restarts_count_towards_max: int = 0
    last_restart: str = ""  # the JobSet's Restarting condition reason: FailurePolicy_<rule> or DefaultFailurePolicy

    @property
    def finished(self) -> bool:
        return any(c.type in ("Complete", "Failed") and c.status == "True" for c in self.conditions)

    @property
    def state(self) -> str:
        return self.conditions[-1].type if self.conditions else ""

    def message(self, ctype: str) -> str:
        return next((c.message for c in self.conditions if c.type == ctype and c.status == "True"), "")


class JobSetReconciler:
    """The JobSet controller's reconcile for the TrainJob's JobSet, and the trainer's status and deadline."""

    def __init__(self, spec: JobSetSpec):
        self.spec = spec
        self.status = TrainJobStatus()
        self.events: list[Event] = []
        self.jobs: dict[str, ChildJob] = {}  # the current restart's Jobs, by replicated job
        self.generation: dict[str, int] = {}  # pod name -> the restart it was created in
        self.start: float | None = None

    def event(self, etype: str, reason: str, message: str, source: str = CONTROLLER) -> None:
        record_event(self.events, Event(etype, reason, message, source))

    def reconcile(self, pods: dict[str, PodStatus], now: float) -> Actions:
        actions = Actions()
        self.start = now if self.start is None else self.start
        if self.status.finished:  # a finished JobSet deletes its active Jobs
            actions.delete += [n for n, p in pods.items() if p.active]
            return actions
        if self.spec.active_deadline is not None and now - self.start >= self.spec.active_deadline:
            self._finish("Failed", *DEADLINE, "trainer")  # the trainer deletes the JobSet: every pod goes
            actions.delete += [n for n, p in pods.items() if not p.deleting]
            return actions
        old = {n for n in pods if self.generation.get(n, 0) < self.status.restarts}  # Jobs of an earlier restart
        actions.delete += [n for n in old if not pods[n].deleting]
        current = {n: p for n, p in pods.items() if n not in old}
        for job in self.jobs.values():
            job.reconcile(current, set(pods), now, actions)
        failed = [j for j in self.jobs.values() if j.condition is not None and j.condition.type == "Failed"]
        if failed:
            self._failure_policy(failed, pods, actions)
        elif len(self.jobs) == len(self.spec.replicated_jobs) and all(j.condition for j in self.jobs.values()):
            self._finish("Complete", *ALL_COMPLETED)
        elif not (old and self.spec.blocking_recreate):
            self._create_jobs(current, set(pods), now, actions)
        for name, _, _ in actions.create:
            self.generation[name] = self.status.restarts
        actions.delete = list(dict.fromkeys(actions.delete))  # a Job's own deletions and the JobSet's
        return actions

    def _create_jobs(self, pods: dict[str, PodStatus], taken: set[str], now: float, actions: Actions) -> None:
        """reconcileReplicatedJobs: in order; a replicated job once its dependsOn jobs completed."""
        for rjob in self.spec.replicated_jobs:
            if rjob.name in self.jobs:
                continue
            if not all(d in self.jobs and self.jobs[d].condition is not None for d in rjob.depends_on):
                continue
            job = self.jobs[rjob.name] = ChildJob(rjob, self.spec.name, self.spec.namespace)
            job.reconcile(pods, taken, now, actions)

    def _failure_policy(self, failed: list[ChildJob], pods: dict[str, PodStatus], actions: Actions) -> None:
        """executeFailurePolicy (jobset v0.12.0 pkg/controllers/failure_policy.go)."""
        policy = self.spec.failure_policy
        first = min(failed, key=lambda j: j.failed_at)
        if policy is None:
            return self._fail(first, FAILED_JOBS, actions, pods)
        for rule in policy.get("rules") or []:
            matching = [j for j in failed if _rule_applies(rule, j)]
            if matching:
                first, action, rule_name = min(matching, key=lambda j: j.failed_at), rule.get("action"), rule.get("name", "")
                break
        else:
            action, rule_name = "RestartJobSet", ""
        if action == "FailJobSet":
            return self._fail(first, FAIL_JOBSET, actions, pods)
        counted = action == "RestartJobSet"
        if counted and self.status.restarts_count_towards_max >= int(policy.get("maxRestarts") or 0):
            return self._fail(first, MAX_RESTARTS, actions, pods)
        reason, message = RESTART_JOBSET if counted else RESTART_IGNORING_MAX
        self.event("Warning", reason, f"{message} (first failed job: {first.name})")
        self.status.restarts += 1
        self.status.restarts_count_towards_max += counted
        self.status.last_restart = f"FailurePolicy_{rule_name}" if rule_name else "DefaultFailurePolicy"
        self.jobs = {}
        actions.delete += [n for n, p in pods.items() if not p.deleting]  # every Job deleted (foreground)

    def _fail(self, first: ChildJob, what: tuple[str, str], actions: Actions, pods: dict[str, PodStatus]) -> None:
        self._finish("Failed", what[0], f"{what[1]} (first failed job: {first.name})")
        actions.delete += [n for n, p in pods.items() if p.active]

    def _finish(self, ctype: str, reason: str, message: str, source: str = CONTROLLER) -> None:
        self.status.conditions.append(Condition(ctype, "True", reason, message))
        self.event("Normal" if ctype == "Complete" else "Warning", reason, message, source)


def _rule_applies(rule: dict[str, Any], job: ChildJob) -> bool:
    """ruleIsApplicable: the Job's failure reason, message patterns and replicated job."""
    condition = job.condition
    assert condition is not None
    reasons, targets = rule.get("onJobFailureReasons") or [], rule.get("targetReplicatedJobs") or []
    patterns = rule.get("onJobFailureMessagePatterns") or []
    return ((not reasons or condition.reason in reasons) and (not targets or job.rjob.name in targets)
            and (not patterns or any(re.search(p, condition.message) for p in patterns)))
