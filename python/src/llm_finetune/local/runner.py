"""The node side of run-local: containers as local processes, and pods as the kubelet runs them.

* :class:`Node` runs one container (:class:`~.plan.ProcessSpec`) through the runtime's
  :class:`~.executor.Executor` (a local process group, or a real container with ``--runtime
  container``), with SIGTERM when run-local dies however it dies (the kernel sends it when the
  thread that started it ends, and that thread waits for it first) and the workdir lock handed
  down (``keep_fds``, :mod:`.lock`); streams its output prefixed with ``pod/container`` (also kept
  in ``<workdir>/logs/<pod>.<container>.log``) and returns its exit code as the kubelet reports it
  (128+N when signal N killed it).
* :class:`PodRun` is one pod object (:func:`run_job`, against the Training Operator model
  :mod:`.operator_v1` or the TrainJob's :mod:`.operator_v2`): its init containers in order, then its main container;
  the phase (``Pending`` → ``Running`` → ``Succeeded``/``Failed``) from their exit codes under the
  pod's own ``restartPolicy`` (``Never`` for the replica policy ``ExitCode``); under
  ``OnFailure``/``Always`` a failed container restarts in place (``restartCount``) after the
  kubelet's back-off (10 s, doubling, at most 300 s); ``Ready`` once the main container runs (no
  probes). Deleting it sends SIGTERM, then SIGKILL after the grace period.

Ctrl-C (exit 130) and SIGTERM (exit 143) stop every pod.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ..core.errors import EXIT_INTERRUPTED, FinetuneError, Terminated
from .executor import Executor, ProcessExecutor
from .operator_v1 import INIT_CONTAINER_MAX_TRIES, INIT_CONTAINER_SLEEP_SECONDS, JobResult, OperatorLoop, PodStatus
from .operator_v2 import JobSetReconciler, JobSetSpec
from .plan import JobPlan, PodPlan, ProcessSpec

log = logging.getLogger(__name__)

BACKOFF_START, BACKOFF_MAX = 10.0, 300.0  # kubelet's container restart back-off (CrashLoopBackOff)


class StepFailed(FinetuneError):
    """The job failed: carries the failing container's exit code and message."""

    def __init__(self, spec: ProcessSpec | None, code: int, message: str):
        self.exit_code = code
        self.spec = spec
        where = f"{spec.pod}/{spec.container}" if spec else None
        super().__init__(message or f"exited with code {code}", field=where)


class Node:
    """Runs containers through a runtime's executor, like a node's kubelet (see the module docstring)."""

    def __init__(self, workdir: str | os.PathLike[str], *, stream=None, keep_fds: tuple[int, ...] = (),
                 executor: Executor | None = None):
        self.executor = executor or ProcessExecutor()
        self.stream = stream or sys.stdout
        self.workdir = str(workdir)
        self.keep_fds = keep_fds  # handed to every process (the workdir lock: local/lock.py)
        self.lock = threading.Lock()
        self.running: dict[str, list[tuple[ProcessSpec, subprocess.Popen]]] = {}
        self.logs = Path(workdir) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def run(self, spec: ProcessSpec, short: str, cancelled: threading.Event) -> int | None:
        """Run ``spec`` to its end in this thread; its exit code, or None when ``cancelled`` before it started."""
        Path(spec.termination_log).parent.mkdir(parents=True, exist_ok=True)
        Path(spec.termination_log).unlink(missing_ok=True)
        with self.lock:
            if cancelled.is_set():
                return None
            proc = self.executor.start(spec, self.workdir, self.keep_fds)
            self.running.setdefault(spec.pod, []).append((spec, proc))
        try:
            self._pump(spec, short, proc)
            code = proc.wait()
        finally:
            with self.lock:
                self.running[spec.pod].remove((spec, proc))
        return 128 - code if code < 0 else code

    def say(self, spec: ProcessSpec, short: str, line: str) -> None:
        """A line in the container's log, as if the container printed it."""
        with open(self.logs / f"{spec.pod}.{spec.container}.log", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        with self.lock:
            print(f"[{short}/{spec.container}] {line}", file=self.stream, flush=True)

    def signal_pod(self, pod: str, sig: int) -> None:
        with self.lock:
            procs = list(self.running.get(pod, []))
        for spec, proc in procs:
            self.executor.signal(spec, proc, sig)

    def pods_running(self) -> list[str]:
        with self.lock:
            return [pod for pod, procs in self.running.items() if procs]

    def _pump(self, spec: ProcessSpec, short: str, proc: subprocess.Popen) -> None:
        prefix = f"[{short}/{spec.container}] "
        with open(self.logs / f"{spec.pod}.{spec.container}.log", "ab") as fh:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                fh.write(raw)
                fh.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self.lock:
                    print(prefix + line, file=self.stream, flush=True)


def stop_pods(node: Node, pods: list[str], sig: int, grace: float,
              alive: Callable[[], bool]) -> None:
    """Signal ``pods``' processes with ``sig``; SIGKILL what is still running after ``grace`` seconds."""
    for pod in pods:
        node.signal_pod(pod, sig)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive():
        for pod in pods:
            node.signal_pod(pod, signal.SIGKILL)


class PodRun:
    """One pod object of a PyTorchJob, from creation until it is gone (kubelet semantics, see the module docstring)."""

    def __init__(self, plan: PodPlan, node: Node, *, service_ready: Callable[[str], bool]):
        self.plan = plan
        self.node = node
        self.service_ready = service_ready  # DNS of another pod's Service answers once that pod is Ready
        self.status = PodStatus(plan.name, plan.replica_type, plan.index)
        self.ready = False
        self.cancelled = threading.Event()
        self.gone = threading.Event()
        self.failed_spec: ProcessSpec | None = None
        self.finished_at = 0.0
        self.thread = threading.Thread(target=self._run, name=plan.name, daemon=True)

    def start(self) -> "PodRun":
        # A new pod: fresh emptyDir and ephemeral volumes (claims are outside pods/<pod>/volumes).
        shutil.rmtree(Path(self.node.workdir) / "pods" / self.plan.name / "volumes", ignore_errors=True)
        for spec in self.plan.processes:
            for _, folder in spec.mounts:
                Path(folder).mkdir(parents=True, exist_ok=True)
        self.node.executor.prepare_pod(self.plan)
        self.thread.start()
        return self

    def delete(self, sig: int = signal.SIGTERM) -> None:
        """``kubectl delete pod``: ``sig`` (SIGTERM) to every container, SIGKILL after the grace period."""
        if self.status.deleting:
            return
        self.status.deleting = True
        self.cancelled.set()
        threading.Thread(target=self._terminate, args=(sig,), name=f"{self.plan.name}-delete", daemon=True).start()

    def _terminate(self, sig: int) -> None:
        stop_pods(self.node, [self.plan.name], sig, self.plan.grace, self.thread.is_alive)
        self.thread.join()
        self.gone.set()

    def _run(self) -> None:
        try:
            self._lifecycle()
        finally:
            self.finished_at = time.monotonic()

    def _lifecycle(self) -> None:
        for spec in (s for s in self.plan.processes if s.init):
            if not self._until_done(spec, init=True):
                return
        self.status.phase, self.ready = "Running", True
        for spec in (s for s in self.plan.processes if not s.init):  # the chart's pods have one main container
            self._until_done(spec, init=False)

    def _until_done(self, spec: ProcessSpec, *, init: bool) -> bool:
        """Run a container until it ends for good: restarted in place unless the pod's policy says not to."""
        delay = BACKOFF_START
        while True:
            code = self._exec(spec)
            if code is None or self.cancelled.is_set():
                return False
            (self.status.init_exit_codes if init else self.status.exit_codes)[spec.container] = code
            if not init:
                self.status.pytorch_exit_code = code
            policy = self.plan.restart_policy
            if code == 0 and (init or policy != "Always"):
                if not init:
                    self.status.phase = "Succeeded"
                return True
            if code != 0 and policy == "Never":
                self.status.phase, self.failed_spec = "Failed", spec
                return False
            self.status.restart_count += 1
            if self.cancelled.wait(delay):
                return False
            delay = min(BACKOFF_MAX, delay * 2)

    def _exec(self, spec: ProcessSpec) -> int | None:
        if spec.builtin == "wait-for-master":
            return self._wait_for_master(spec)
        return self.node.run(spec, self.plan.short, self.cancelled)

    def _wait_for_master(self, spec: ProcessSpec) -> int | None:
        """The operator's init-pytorch: ``nslookup <job>-master-0`` every 2 s, ``maxTries`` times.

        The Master's headless Service has no ``publishNotReadyAddresses``
        (kubeflow/training-operator@v1.9.0:pkg/controller.v1/common/service.go:221-236): its name
        resolves once the Master pod is Ready.
        """
        for _ in range(INIT_CONTAINER_MAX_TRIES):
            if self.service_ready(spec.wait_for):
                return 0
            self.node.say(spec, self.plan.short, "waiting for master")
            if self.cancelled.wait(INIT_CONTAINER_SLEEP_SECONDS):
                return None
        return 1


def _on_stop_signals(stop: Callable[[int], None]) -> Callable[[], list[int]]:
    """SIGINT/SIGTERM call ``stop(signum)`` once (main thread only); returns what restores the handlers
    and says which signal stopped the run."""
    stopped_by: list[int] = []

    def on_signal(signum, frame):  # noqa: ARG001
        if not stopped_by:
            stopped_by.append(signum)
            threading.Thread(target=stop, args=(signum,), daemon=True).start()

    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}

    def restore() -> list[int]:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        return stopped_by

    return restore


def _raise_if_stopped(stopped_by: list[int]) -> None:
    if stopped_by == [signal.SIGINT]:
        raise KeyboardInterrupt
    if stopped_by:
        raise Terminated(hint="every process of the job was stopped (SIGTERM: trainers save a checkpoint first)")


def run_job(plan: JobPlan, *, max_pod_starts: int = 10, stream=None, keep_fds: tuple[int, ...] = (),
            executor: Executor | None = None) -> tuple[JobResult, PodRun | None]:
    """Run the job as the cluster would (its controllers + kubelets) until it finished: a PyTorchJob against
    the Training Operator v1.9 model, a TrainJob against the trainer + JobSet + Job controller model
    (:class:`.operator_v2.JobSetReconciler`).

    Returns the result and the pod whose failure ended the job (the latest failed one), if any.
    """
    node = Node(plan.workdir, stream=stream, keep_fds=keep_fds, executor=executor)
    plans = {p.name: p for p in plan.pods}
    runs: list[PodRun] = []
    Path(plan.events_file).unlink(missing_ok=True)

    def start_pod(name: str) -> PodRun:
        run = PodRun(plans[name], node, service_ready=loop.ready)
        runs.append(run)
        return run.start()

    reconciler = JobSetReconciler(plan.job) if isinstance(plan.job, JobSetSpec) else None
    loop = OperatorLoop(plan.job, start_pod, events_file=plan.events_file, max_pod_starts=max_pod_starts,
                        reconciler=reconciler)
    stopping = threading.Event()

    def stop(signum: int) -> None:
        stopping.set()
        loop.stop_all(signum)

    restore = _on_stop_signals(stop)
    try:
        node.executor.prepare(plan)
        result = loop.run_until(stopping)
    finally:
        stopped_by = restore()
        loop.stop_all()
        node.executor.finish(plan)
    _raise_if_stopped(stopped_by)
    failed = [r for r in runs if r.status.phase == "Failed"]
    return result, (max(failed, key=lambda r: r.finished_at) if failed else None)


def failure_message(run: PodRun) -> str:
    """The failed container's termination message (its one line)."""
    spec = run.failed_spec
    try:
        return Path(spec.termination_log).read_text(encoding="utf-8").strip() if spec else ""
    except OSError:
        return ""


class Runner:
    """Every pod of a plan at once, in stages, the first failure stopping the rest: no operator model (the container
    tests drive an executor with it; run-local itself runs both backends through :func:`run_job`)."""

    def __init__(self, plan: JobPlan, *, stream=None, keep_fds: tuple[int, ...] = (), executor: Executor | None = None):
        self.plan = plan
        self.node = Node(plan.workdir, stream=stream, keep_fds=keep_fds, executor=executor)
        self.failure: tuple[ProcessSpec, int] | None = None
        self.stopping = threading.Event()

    def stop_all(self, sig: int = signal.SIGTERM, grace: float = 20.0) -> None:
        self.stopping.set()
        stop_pods(self.node, self.node.pods_running(), sig, grace, lambda: bool(self.node.pods_running()))

    def _run_pod(self, pod: PodPlan) -> None:
        for spec in pod.processes:
            code = self.node.run(spec, pod.short, self.stopping)
            if code is None:
                return
            if code != 0:
                if self.failure is None and not self.stopping.is_set():
                    self.failure = (spec, code)
                threading.Thread(target=self.stop_all, daemon=True).start()
                return
            if self.stopping.is_set():
                return

    def run(self) -> None:
        """Run every pod; raise :class:`StepFailed` with the failing step's message and code."""
        restore = _on_stop_signals(lambda signum: self.stop_all(signum))
        try:
            self.node.executor.prepare(self.plan)
            for stage in sorted({p.stage for p in self.plan.pods}):  # a later stage waits for the earlier ones (dependsOn)
                if self.failure or self.stopping.is_set():
                    break
                threads = [threading.Thread(target=self._run_pod, args=(p,), name=p.name, daemon=True)
                           for p in self.plan.pods if p.stage == stage]
                for t in threads:
                    t.start()
                for t in threads:
                    while t.is_alive():
                        t.join(0.2)
        finally:
            stopped_by = restore()
            self.stop_all(grace=5.0)
            self.node.executor.finish(self.plan)
        _raise_if_stopped(stopped_by)
        if self.failure:
            spec, code = self.failure
            try:
                message = Path(spec.termination_log).read_text(encoding="utf-8").strip()
            except OSError:
                message = ""
            raise StepFailed(spec, code or EXIT_INTERRUPTED, message)
