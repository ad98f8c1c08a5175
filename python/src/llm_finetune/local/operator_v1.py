"""The Kubeflow Training Operator v1.9 as ``run-local`` applies it to the rendered PyTorchJob.

Written from ``kubeflow/training-operator@v1.9.0`` (cited per rule below as ``TO:<path>:<line>``);
no cluster runs here, so this is the reference ``run-local`` executes pods against:

* **Pods and what the operator adds** (:func:`pod_labels`, :func:`operator_env`,
  :func:`injected_init_containers`): labels, the env appended to every main container (with and
  without a Master, with ``elasticPolicy``), and the ``init-pytorch`` container appended to
  Worker pods when a Master replica exists.
* **The replica lifecycle** (:class:`Reconciler`): one reconcile pass of
  ``JobController.ReconcileJobs`` over the observed pods — only the ``pytorch`` container's exit
  code counts (an init container's failure leaves ``0xbeef``), which codes recreate a pod under
  each restart policy, ``backoffLimit`` as the operator really counts it (restart counts of
  Running pods; the requeue count is always 0), ``activeDeadlineSeconds``, the conditions and
  events, and ``cleanPodPolicy`` once the job finished.

The kubelet side (a pod's phase from its containers, in-place restarts under
``OnFailure``/``Always``) is :class:`PodStatus`, filled by the executor
(:mod:`llm_finetune.local.runner`). :class:`OperatorLoop` runs the reconciler against live pods
until the job is finished: pods created, deleted and recreated as the operator would, the
Events of the operator and of the pods (``kubectl describe pytorchjob``), and the job's state
(``kubectl get pytorchjob``).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

# -- constants (TO:pkg/apis/kubeflow.org/v1/pytorch_types.go:23-31, common_types.go:24-37) --------
CONTAINER = "pytorch"
PORT_NAME = "pytorchjob-port"
DEFAULT_PORT = 23456
DEFAULT_RESTART_POLICY = "OnFailure"
LABEL_OPERATOR = "training.kubeflow.org/operator-name"
LABEL_JOB = "training.kubeflow.org/job-name"
LABEL_TYPE = "training.kubeflow.org/replica-type"
LABEL_INDEX = "training.kubeflow.org/replica-index"
LABEL_ROLE = "training.kubeflow.org/job-role"
CONTROLLER_NAME = "pytorchjob-controller"  # TO:pkg/controller.v1/pytorch/pytorchjob_controller.go:59
UNSET_EXIT_CODE = 0xBEEF  # TO:pkg/controller.v1/common/pod.go:340 ("magic number")
# The injected init container (TO:pkg/controller.v1/pytorch/initcontainer.go:35-46; defaults
# TO:pkg/config/config.go:25-36, flags TO:cmd/training-operator.v1/main.go:100-105).
INIT_CONTAINER_NAME = "init-pytorch"
INIT_CONTAINER_IMAGE = "alpine:3.10"
INIT_CONTAINER_MAX_TRIES = 100
INIT_CONTAINER_SLEEP_SECONDS = 2.0


def is_retryable_exit_code(code: int) -> bool:
    """TO:pkg/util/train/train_util.go:24-26."""
    return code >= 128


# -- the job's spec, defaulted as the operator does at reconcile ---------------------------------
@dataclass(frozen=True)
class Replica:
    rtype: str  # "Master" | "Worker"
    replicas: int
    restart_policy: str
    template: dict[str, Any]


@dataclass(frozen=True)
class JobSpec:
    kind: ClassVar[str] = "PyTorchJob"
    name: str
    namespace: str
    replicas: dict[str, Replica]
    nproc_per_node: str | None
    elastic: dict[str, Any] | None
    clean_pod_policy: str
    backoff_limit: int | None
    active_deadline: float | None

    @classmethod
    def from_manifest(cls, job: dict[str, Any]) -> "JobSpec":
        """SetDefaults_PyTorchJob (TO:pkg/apis/kubeflow.org/v1/pytorch_defaults.go:77-96)."""
        spec = job.get("spec") or {}
        run = spec.get("runPolicy") or {}
        replicas = {}
        for key, rs in (spec.get("pytorchReplicaSpecs") or {}).items():
            rtype = key[:1].upper() + key[1:].lower()  # setPyTorchTypeNamesToCamelCase
            replicas[rtype] = Replica(rtype, int(rs.get("replicas", 1)), rs.get("restartPolicy") or DEFAULT_RESTART_POLICY,
                                      rs.get("template") or {})
        elastic = spec.get("elasticPolicy")
        nproc = spec.get("nprocPerNode")
        if nproc is None and (elastic is None or elastic.get("nProcPerNode") is None):
            nproc = "auto"  # setDefaultNprocPerNode
        deadline = run.get("activeDeadlineSeconds")
        return cls(job["metadata"]["name"], job["metadata"].get("namespace") or "default", replicas,
                   None if nproc is None else str(nproc), elastic, run.get("cleanPodPolicy") or "None",
                   run.get("backoffLimit"), None if deadline is None else float(deadline))

    @property
    def has_master(self) -> bool:
        return "Master" in self.replicas

    @property
    def total_replicas(self) -> int:
        return sum(r.replicas for r in self.replicas.values())

    def replica_types(self) -> list[str]:
        """Master first (the operator iterates a Go map: any order; this one is deterministic)."""
        return sorted(self.replicas, key=lambda t: (t != "Master", t))

    def pod_names(self) -> list[tuple[str, str, int]]:
        """(name, replica type, index) of every pod (GenGeneralName: <job>-<type>-<i>)."""
        return [(f"{self.name}-{t.lower()}-{i}", t, i) for t in self.replica_types() for i in range(self.replicas[t].replicas)]

    def port(self, rtype: str) -> int:
        """The ``pytorchjob-port`` of the ``pytorch`` container, defaulted to 23456 (pytorch_defaults.go:31-36)."""
        for c in (self.replicas[rtype].template.get("spec") or {}).get("containers") or []:
            if c.get("name") == CONTAINER:
                for p in c.get("ports") or []:
                    if p.get("name") == PORT_NAME:
                        return int(p["containerPort"])
        return DEFAULT_PORT


# -- what the operator adds to a pod --------------------------------------------------------------
def pod_labels(job: JobSpec, rtype: str, index: int) -> dict[str, str]:
    """TO:pkg/controller.v1/common/pod.go:401-408, job_controller.go:236-242."""
    labels = {LABEL_OPERATOR: CONTROLLER_NAME, LABEL_JOB: job.name, LABEL_TYPE: rtype.lower(), LABEL_INDEX: str(index)}
    if (rtype == "Master") if job.has_master else (rtype == "Worker" and index == 0):  # IsMasterRole
        labels[LABEL_ROLE] = "master"
    return labels


def _nproc_int(job: JobSpec) -> int:
    """getNprocPerNodeInt (TO:pkg/controller.v1/pytorch/envvar.go:132-140)."""
    return int(job.nproc_per_node) if job.nproc_per_node and job.nproc_per_node.isdigit() else 1


def operator_env(job: JobSpec, rtype: str, index: int) -> list[tuple[str, str]]:
    """The env appended to every main container (TO:pkg/controller.v1/pytorch/envvar.go:43-127).

    Appended after the template's env, so a name set in both takes the operator's value.
    Addresses are the pods' Service names (``<job>-master-0``, ``<job>-worker-0``).
    """
    env = [("PYTHONUNBUFFERED", "1")]
    if job.has_master:  # master.go:33-61 + envvar.go:66-97
        port, addr = str(job.port("Master")), f"{job.name}-master-0"
        rank = index + 1 if rtype == "Worker" else index
        env += [("MASTER_PORT", port), ("PET_MASTER_PORT", port), ("MASTER_ADDR", addr), ("PET_MASTER_ADDR", addr),
                ("WORLD_SIZE", str(job.total_replicas * _nproc_int(job))), ("RANK", str(rank)), ("PET_NODE_RANK", str(rank))]
    if job.nproc_per_node is not None:
        env.append(("PET_NPROC_PER_NODE", job.nproc_per_node))
    if job.elastic is not None:
        env += _elastic_env(job)
    else:
        env.append(("PET_NNODES", str(job.total_replicas)))
    return env


def _elastic_env(job: JobSpec) -> list[tuple[str, str]]:
    """ElasticEnvVarGenerator (TO:pkg/controller.v1/pytorch/elastic.go:68-196), after setElasticPolicy defaults."""
    ep = job.elastic or {}
    host = ep.get("rdzvHost") or f"{job.name}-worker-0"
    port = ep.get("rdzvPort") or job.port("Worker")
    env = [("PET_RDZV_ENDPOINT", f"{host}:{port}"), ("PET_RDZV_BACKEND", ep.get("rdzvBackend") or "c10d")]
    low, high = ep.get("minReplicas"), ep.get("maxReplicas")
    if low is None and high is None:
        env.append(("PET_NNODES", str(job.replicas["Worker"].replicas)))
    else:  # pytorch_defaults.go:38-55 fills the missing bound from the other
        env.append(("PET_NNODES", f"{low if low is not None else high}:{high if high is not None else low}"))
    if ep.get("maxRestarts") is not None:
        env.append(("PET_MAX_RESTARTS", str(ep["maxRestarts"])))
    if ep.get("nProcPerNode") is not None:
        env.append(("PET_NPROC_PER_NODE", str(ep["nProcPerNode"])))
    if ep.get("rdzvId") is not None:
        env.append(("PET_RDZV_ID", str(ep["rdzvId"])))
    if ep.get("rdzvConf"):
        env.append(("PET_RDZV_CONF", ",".join(f"{c['key']}={c['value']}" for c in ep["rdzvConf"])))
    if ep.get("standalone"):
        env.append(("PET_STANDALONE", ""))
    return env


def injected_init_containers(job: JobSpec, rtype: str, *, image: str = INIT_CONTAINER_IMAGE,
                             max_tries: int = INIT_CONTAINER_MAX_TRIES) -> list[dict[str, Any]]:
    """``init-pytorch``, appended to a Worker's init containers when a Master exists (initcontainer.go:105-136)."""
    if not job.has_master or rtype != "Worker":
        return []
    master = f"{job.name}-master-0"
    command = (f"err=1;for i in $(seq {max_tries}); do if nslookup {master}; then err=0 && break; fi;"
               "echo waiting for master; sleep 2; done; exit $err")
    return [{"name": INIT_CONTAINER_NAME, "image": image, "imagePullPolicy": "IfNotPresent",
             "resources": {"limits": {"cpu": "100m", "memory": "20Mi"}, "requests": {"cpu": "50m", "memory": "10Mi"}},
             "command": ["sh", "-c", command]}]


def pod_restart_policy(replica: Replica) -> str:
    """The pod's own restartPolicy: ExitCode becomes Never (TO:pkg/core/pod.go:81-88)."""
    return "Never" if replica.restart_policy == "ExitCode" else replica.restart_policy


# -- observed pods and the job's status ----------------------------------------------------------
@dataclass
class PodStatus:
    """What the kubelet reports for one pod (the executor fills it)."""

    name: str
    rtype: str
    index: int
    phase: str = "Pending"  # Pending | Running | Succeeded | Failed
    deleting: bool = False  # DeletionTimestamp set, containers stopping
    pytorch_exit_code: int | None = None  # ContainerStatuses[pytorch].State.Terminated.ExitCode
    pytorch_message: str = ""
    restart_count: int = 0  # sum over (init) containers, kubelet in-place restarts
    exit_codes: dict[str, int] = field(default_factory=dict)  # each main container's last State.Terminated.ExitCode
    init_exit_codes: dict[str, int] = field(default_factory=dict)  # the same for the init containers
    conditions: tuple[str, ...] = ()  # pod conditions that are True (DisruptionTarget: evicted, preempted)

    @property
    def active(self) -> bool:
        """IsPodActive (TO:pkg/util/k8sutil/k8sutil.go:109-113)."""
        return self.phase not in ("Succeeded", "Failed") and not self.deleting


@dataclass
class Condition:
    type: str
    status: str
    reason: str
    message: str


@dataclass
class Event:
    type: str
    reason: str
    message: str
    source: str = CONTROLLER_NAME
    count: int = 1


def record_event(events: list[Event], event: Event) -> None:
    """Record an Event on the job; a repeat of an identical one only counts up (client-go's aggregation)."""
    for e in events:
        if (e.type, e.reason, e.message, e.source) == (event.type, event.reason, event.message, event.source):
            e.count += 1
            return
    events.append(event)


@dataclass
class JobStatus:
    conditions: list[Condition] = field(default_factory=list)
    replica_statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    start_time: float | None = None
    completion_time: float | None = None

    def is_true(self, ctype: str) -> bool:
        return any(c.type == ctype and c.status == "True" for c in self.conditions)

    @property
    def finished(self) -> bool:
        """IsFinished (TO:pkg/util/status.go:36-38)."""
        return self.is_true("Succeeded") or self.is_true("Failed")

    @property
    def state(self) -> str:
        """What ``kubectl get pytorchjob`` shows: the last condition's type (CRD printer column)."""
        return self.conditions[-1].type if self.conditions else ""

    def set_condition(self, ctype: str, reason: str, message: str, status: str = "True") -> None:
        """setCondition + filterOutCondition (TO:pkg/util/status.go:103-148)."""
        if self.is_true("Failed"):
            return
        current = next((c for c in self.conditions if c.type == ctype), None)
        if current is not None and current.status == status and current.reason == reason:
            return
        kept = []
        for c in self.conditions:
            if c.type == ctype or {ctype, c.type} == {"Running", "Restarting"}:
                continue
            if ctype in ("Failed", "Succeeded") and c.type == "Running":
                c = Condition(c.type, "False", c.reason, c.message)
            kept.append(c)
        self.conditions = kept + [Condition(ctype, status, reason, message)]

    def message(self, ctype: str) -> str:
        return next((c.message for c in self.conditions if c.type == ctype and c.status == "True"), "")


# -- one reconcile pass ---------------------------------------------------------------------------
@dataclass
class Actions:
    create: list[tuple[str, str, int]] = field(default_factory=list)  # (pod, replica type, index)
    delete: list[str] = field(default_factory=list)


class Reconciler:
    """``JobController.ReconcileJobs`` (TO:pkg/controller.v1/common/job.go:78-364) for one PyTorchJob."""

    def __init__(self, job: JobSpec):
        self.job = job
        self.status = JobStatus()
        self.events: list[Event] = []
        self.kind = "PyTorchJob"
        self.set_condition("Created", "Created", f"PyTorchJob {job.name} is created.")

    def event(self, etype: str, reason: str, message: str, source: str = CONTROLLER_NAME) -> None:
        record_event(self.events, Event(etype, reason, message, source))

    def set_condition(self, ctype: str, reason: str, message: str, status: str = "True") -> None:
        self.status.set_condition(ctype, self.kind + reason, message, status)

    def reconcile(self, pods: dict[str, PodStatus], now: float) -> Actions:
        actions = Actions()
        if self.status.finished:  # job.go:122-144: CleanUpResources, nothing else
            actions.delete += self._cleanup(pods)
            return actions
        failure = self._past_limits(pods, now)
        if failure:
            if self.status.completion_time is None:
                self.status.completion_time = now
            actions.delete += [p.name for p in pods.values() if not p.deleting]  # DeletePodsAndServices, not finished yet
            self.event("Normal", self.kind + "Failed", failure)
            self.set_condition("Failed", "Failed", failure)
            return actions
        for rtype in self.job.replica_types():  # ReconcilePods (TO:pkg/controller.v1/common/pod.go:269-380)
            self._reconcile_replica(rtype, self.job.replicas[rtype], pods, actions)
        self._update_status(now)
        return actions

    def _cleanup(self, pods: dict[str, PodStatus]) -> list[str]:
        """DeletePodsAndServices on a finished job (TO:pkg/controller.v1/common/job.go:43-69)."""
        policy = self.job.clean_pod_policy
        if policy == "None":
            return []
        return [p.name for p in pods.values() if not p.deleting
                and (policy == "All" or p.phase in ("Running", "Pending"))]

    def _past_limits(self, pods: dict[str, PodStatus], now: float) -> str:
        """backoffLimit and activeDeadlineSeconds (TO:pkg/controller.v1/common/job.go:175-214, pkg/core/job.go:81-133)."""
        job = self.job
        if job.backoff_limit is not None:
            failed = sum(1 for p in pods.values() if p.phase == "Failed")
            previous = sum(s.get("Failed", 0) for s in self.status.replica_statuses.values())
            active = sum(1 for p in pods.values() if p.active)
            previous_retry = 0  # jc.WorkQueue is a FakeWorkQueue: NumRequeues is always 0
            exceeds = failed > previous and active != job.total_replicas and previous_retry + 1 > job.backoff_limit
            if exceeds or self._past_backoff_limit(pods):
                return f"Job {job.name} has failed because it has reached the specified backoff limit"
        start = self.status.start_time
        if job.active_deadline is not None and start is not None and now - start >= job.active_deadline:
            return f"Job {job.name} has failed because it was active longer than specified deadline"
        return ""

    def _past_backoff_limit(self, pods: dict[str, PodStatus]) -> bool:
        """PastBackoffLimit: restart counts of Running pods only (TO:pkg/core/job.go:95-133)."""
        total = 0
        for rtype, replica in self.job.replicas.items():
            if replica.restart_policy not in ("OnFailure", "Always", "ExitCode"):
                continue
            total += sum(p.restart_count for p in pods.values() if p.rtype == rtype and p.phase == "Running")
        limit = self.job.backoff_limit or 0
        return total > 0 if limit == 0 else total >= limit

    def _reconcile_replica(self, rtype: str, replica: Replica, pods: dict[str, PodStatus], actions: Actions) -> None:
        counts = {"Active": 0, "Succeeded": 0, "Failed": 0}  # initializeReplicaStatuses
        self.status.replica_statuses[rtype] = counts
        for index in range(replica.replicas):
            name = f"{self.job.name}-{rtype.lower()}-{index}"
            pod = pods.get(name)
            if pod is None:
                actions.create.append((name, rtype, index))
                continue
            if pod.pytorch_exit_code is not None:  # pod.go:339-348, every pass while it is terminated
                self.event("Normal", "ExitedWithCode", f"Pod: {self.job.namespace}.{pod.name} exited with code {pod.pytorch_exit_code}")
            if pod.phase == "Failed":
                self._failed_pod(rtype, replica, pod, actions)
            # updateJobReplicaStatuses (TO:pkg/core/status.go:34-50)
            if pod.phase == "Running":
                counts["Failed" if pod.deleting else "Active"] += 1
            elif pod.phase in ("Succeeded", "Failed"):
                counts[pod.phase] += 1

    def _failed_pod(self, rtype: str, replica: Replica, pod: PodStatus, actions: Actions) -> None:
        """A Failed pod: exit code of ``pytorch`` only, then the restart policy (TO:pkg/controller.v1/common/pod.go:339-373)."""
        code = UNSET_EXIT_CODE if pod.pytorch_exit_code is None else pod.pytorch_exit_code
        policy = replica.restart_policy
        if (policy == "ExitCode" and is_retryable_exit_code(code)) or policy in ("OnFailure", "Always"):
            if not pod.deleting:
                actions.delete.append(pod.name)
            msg = f"job {self.job.name} is restarting because {rtype} replica(s) failed."
            self.event("Warning", self.kind + "Restarting", msg)
            self.set_condition("Restarting", "Restarting", msg)
        elif policy == "ExitCode":
            msg = f'job "{self.job.name}" is failing because "{rtype}" replica(s) failed.'
            self.event("Warning", self.kind + "Failed", msg)
            self.set_condition("Failed", "Failed", msg)

    def _update_status(self, now: float) -> None:
        """PyTorchJobReconciler.UpdateJobStatus (TO:pkg/controller.v1/pytorch/pytorchjob_controller.go:343-447)."""
        job, status = self.job, self.status
        if status.start_time is None:
            status.start_time = now
        for rtype, replica in job.replicas.items():
            counts = status.replica_statuses[rtype]
            succeeded, running, failed = counts["Succeeded"], counts["Active"], counts["Failed"]
            expected = replica.replicas - succeeded
            if self._succeeded(rtype, expected, running, succeeded, now):
                return
            if failed > 0 and replica.replicas > succeeded + running:
                if replica.restart_policy != "Never":
                    msg = f"PyTorchJob {job.name} is restarting because {failed} {rtype} replica(s) failed."
                    self.event("Warning", self.kind + "Restarting", msg)
                    self.set_condition("Restarting", "Restarting", msg)
                else:
                    msg = f"PyTorchJob {job.name} is failed because {failed} {rtype} replica(s) failed."
                    self.event("Normal", self.kind + "Failed", msg)
                    if status.completion_time is None:
                        status.completion_time = now
                    self.set_condition("Failed", "Failed", msg)

    def _succeeded(self, rtype: str, expected: int, running: int, succeeded: int, now: float) -> bool:
        job, status = self.job, self.status
        if job.has_master:
            if rtype != "Master":
                return False
            if running > 0:
                self.set_condition("Running", "Running", f"PyTorchJob {job.name} is running.")
            done = expected == 0
            msg = f"PyTorchJob {job.name} is successfully completed."
        else:
            if rtype != "Worker":
                return False
            done = expected == 0 or (job.elastic is not None and succeeded > 0)
            msg = f"PyTorchJob {job.namespace}/{job.name} successfully completed."
            if not done and running > 0:
                self.set_condition("Running", "Running", f"PyTorchJob {job.namespace}/{job.name} is running.")
        if done:
            self.event("Normal", self.kind + "Succeeded", msg)
            if status.completion_time is None:
                status.completion_time = now
            self.set_condition("Succeeded", "Succeeded", msg)
        return done and job.has_master


# -- run-local: the reconcile loop over live pods ------------------------------------------------
class PodHandle(Protocol):
    """A running pod as the executor shows it (see :class:`llm_finetune.local.runner.PodRun`)."""

    status: PodStatus
    ready: bool
    gone: threading.Event

    def delete(self, sig: int = ...) -> None: ...


@dataclass
class PodRecord:
    """Every pod object created for one pod name, oldest first."""

    starts: int = 0
    exit_codes: list[int | None] = field(default_factory=list)  # the pytorch container's code per pod (None: never ran)
    phases: list[str] = field(default_factory=list)


@dataclass
class JobResult:
    state: str
    status: JobStatus
    events: list[Event]
    pods: dict[str, PodRecord]
    left_running: list[str]  # pods cleanPodPolicy left running at the end (stopped by run-local)
    stopped: str = ""  # why run-local stopped the job itself (its safety limit), else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "conditions": [vars(c) for c in self.status.conditions],
            "events": [vars(e) for e in self.events],
            "pods": {name: {"starts": r.starts, "exitCodes": r.exit_codes, "phases": r.phases} for name, r in self.pods.items()},
            "leftRunning": self.left_running,
            **({"restarts": self.status.restarts} if hasattr(self.status, "restarts") else {}),  # a TrainJob's JobSet
            "stopped": self.stopped,
        }


class OperatorLoop:
    """Reconcile the job against live pods until it is finished (and cleaned up), like the operator."""

    def __init__(self, job: JobSpec, start_pod: Callable[[str], PodHandle], *, events_file: str | None = None,
                 max_pod_starts: int = 10, poll: float = 0.2, clock: Callable[[], float] = time.monotonic,
                 reconciler: Any = None):
        self.job, self.start_pod, self.poll, self.clock = job, start_pod, poll, clock
        self.events_file, self.events_read = events_file, 0
        self.max_pod_starts = max_pod_starts
        # The Training Operator's; a TrainJob's JobSet brings its own (operator_v2.JobSetReconciler): the same
        # reconcile(pods, now) -> Actions, status (finished, state, conditions) and events.
        self.reconciler = reconciler or Reconciler(job)
        self.live: dict[str, PodHandle] = {}
        self.records: dict[str, PodRecord] = {name: PodRecord() for name, _, _ in job.pod_names()}
        self.stopped = ""

    def ready(self, pod: str) -> bool:
        handle = self.live.get(pod)
        return bool(handle is not None and handle.ready and not handle.status.deleting)

    def run_until(self, stop: threading.Event) -> JobResult:
        while not stop.is_set():
            self._forget_gone()
            actions = self.reconciler.reconcile({n: h.status for n, h in self.live.items()}, self.clock())
            for name in actions.delete:
                self.live[name].delete()
            self._read_pod_events()
            if self.reconciler.status.finished:  # this pass issued cleanPodPolicy's deletions
                return self._result()
            if not self._create(actions.create):
                return self._result()
            stop.wait(self.poll)
        return self._result()

    def stop_all(self, sig: int = signal.SIGTERM) -> None:
        """Delete every live pod (``sig`` first, SIGKILL after its grace period) and wait until they are gone."""
        for handle in list(self.live.values()):
            handle.delete(sig)
        for handle in list(self.live.values()):
            handle.gone.wait()

    def _create(self, pods: list[tuple[str, str, int]]) -> bool:
        for name, _, _ in pods:
            if name in self.live:  # still being deleted: created once it is gone (expectations)
                continue
            record = self.records[name]
            if record.starts >= self.max_pod_starts:
                self.stopped = (f"pod {name} was created {record.starts} times; the operator would keep recreating it "
                                f"(run-local stops at --max-pod-starts {self.max_pod_starts})")
                return False
            record.starts += 1
            self.live[name] = self.start_pod(name)
        return True

    def _forget_gone(self) -> None:
        for name, handle in list(self.live.items()):
            if handle.gone.is_set():
                self._record(name, handle)
                del self.live[name]

    def _record(self, name: str, handle: PodHandle) -> None:
        record = self.records[name]
        record.exit_codes.append(handle.status.pytorch_exit_code)
        record.phases.append(handle.status.phase + (" (deleted)" if handle.status.deleting else ""))

    def _read_pod_events(self) -> None:
        """Events the pods posted (llm_finetune.core.events writes them to a file here)."""
        if not self.events_file:
            return
        try:
            with open(self.events_file, encoding="utf-8") as fh:
                fh.seek(self.events_read)
                lines = fh.readlines()
                self.events_read = fh.tell()
        except OSError:
            return
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            self.reconciler.event(e.get("type", "Warning"), e.get("reason", ""), e.get("message", ""),
                                  (e.get("source") or {}).get("component", ""))

    def _result(self) -> JobResult:
        left = [n for n, h in self.live.items() if h.status.phase not in ("Succeeded", "Failed") and not h.status.deleting]
        self.stop_all()
        self._read_pod_events()
        for name, handle in list(self.live.items()):
            self._record(name, handle)
        self.live.clear()
        status = self.reconciler.status
        return JobResult(status.state, status, self.reconciler.events, self.records, left, self.stopped)
