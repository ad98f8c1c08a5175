"""Execute a :class:`~llm_finetune.local.plan.JobPlan`: every pod at once, like the cluster.

Each pod runs its init containers in order, then its main container; the pods of a stage run
concurrently (Workers' init containers wait for the Master's downloads, torchrun's
rendezvous joins the trainers), and a stage starts once every pod of the earlier ones
succeeded (a TrainJob's ``node`` pods after its ``init`` job: JobSet's ``dependsOn``). Output
lines are prefixed with ``pod/container`` and kept in ``<workdir>/logs/``. The first process
that fails stops every other one, and its own termination message and exit code become run-local's. Ctrl-C (exit 130) and SIGTERM (exit
143) stop all processes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import EXIT_INTERRUPTED, FinetuneError, Terminated
from .executor import Executor, ProcessExecutor
from .plan import JobPlan, PodPlan, ProcessSpec

log = logging.getLogger(__name__)


class StepFailed(FinetuneError):
    """A pod's container failed: carries that container's exit code and message."""

    def __init__(self, spec: ProcessSpec, code: int, message: str):
        self.exit_code = code
        self.spec = spec
        super().__init__(message or f"exited with code {code}", field=f"{spec.pod}/{spec.container}")


@dataclass
class _Outcome:
    spec: ProcessSpec
    code: int


class Runner:
    def __init__(self, plan: JobPlan, *, stream=None, keep_fds: tuple[int, ...] = (), executor: Executor | None = None):
        self.plan = plan
        self.keep_fds = keep_fds  # handed to every process (the workdir lock: local/lock.py)
        self.stream = stream or sys.stdout
        self.executor = executor or ProcessExecutor()
        self.lock = threading.Lock()
        self.procs: list[tuple[ProcessSpec, subprocess.Popen]] = []
        self.failure: _Outcome | None = None
        self.stopping = threading.Event()
        self.logs = Path(plan.workdir) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # -- process control --------------------------------------------------
    def _start(self, spec: ProcessSpec) -> subprocess.Popen | None:
        with self.lock:
            if self.stopping.is_set():
                return None
            Path(spec.termination_log).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.unlink(spec.termination_log)
            except FileNotFoundError:
                pass
            # The executor starts it in its own session, with SIGTERM when run-local dies, however it dies: the
            # kernel sends it when the thread that started it ends, and _run_pod waits for it first.
            proc = self.executor.start(spec, self.plan.workdir, self.keep_fds)
            self.procs.append((spec, proc))
            return proc

    def stop_all(self, sig: int = signal.SIGTERM, grace: float = 20.0) -> None:
        self.stopping.set()
        with self.lock:
            procs = [(s, p) for s, p in self.procs if p.poll() is None]
        for s, p in procs:
            self.executor.signal(s, p, sig)
        deadline = time.monotonic() + grace
        for s, p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.executor.signal(s, p, signal.SIGKILL)
                p.wait()

    def _pump(self, pod: PodPlan, spec: ProcessSpec, proc: subprocess.Popen) -> None:
        prefix = f"[{pod.short}/{spec.container}] "
        with open(self.logs / f"{spec.pod}.{spec.container}.log", "ab") as fh:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                fh.write(raw)
                fh.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self.lock:
                    print(prefix + line, file=self.stream, flush=True)

    # -- pods ---------------------------------------------------------------
    def _run_pod(self, pod: PodPlan) -> None:
        for spec in pod.processes:
            proc = self._start(spec)
            if proc is None:
                return
            self._pump(pod, spec, proc)
            code = proc.wait()
            if code != 0:
                with self.lock:
                    if self.failure is None and not self.stopping.is_set():
                        self.failure = _Outcome(spec, code)
                threading.Thread(target=self.stop_all, daemon=True).start()
                return
            if self.stopping.is_set():
                return

    def run(self) -> None:
        """Run every pod; raise :class:`StepFailed` with the failing step's message and code."""
        stopped_by: list[int] = []  # SIGINT (Ctrl-C) or SIGTERM: every pod is stopped with it

        def on_signal(signum, frame):  # noqa: ARG001
            if not stopped_by:
                stopped_by.append(signum)
                threading.Thread(target=self.stop_all, kwargs={"sig": signum}, daemon=True).start()

        in_main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        try:
            self.executor.prepare(self.plan)
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
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop_all(grace=5.0)
            self.executor.finish(self.plan)
        if stopped_by == [signal.SIGINT]:
            raise KeyboardInterrupt
        if stopped_by:
            raise Terminated(hint="every process of the job was stopped (SIGTERM: trainers save a checkpoint first)")
        if self.failure:
            spec, code = self.failure.spec, self.failure.code
            try:
                message = Path(spec.termination_log).read_text(encoding="utf-8").strip()
            except OSError:
                message = ""
            if code < 0:  # killed by a signal
                code = 128 - code
            raise StepFailed(spec, code or EXIT_INTERRUPTED, message)
