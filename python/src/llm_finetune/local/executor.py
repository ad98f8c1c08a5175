"""How the runner starts the plan's containers: the seam between ``runner.py`` and a runtime.

``run-local --runtime process`` (the default) runs each container's command as a local process
(``ProcessExecutor``, here); ``--runtime container`` runs it as a real container from its image
(``containers.ContainerExecutor``). Both take the same plan (``plan.py``).
"""

from __future__ import annotations

import os
import subprocess
from typing import Protocol

from ..core.proc import parent_death_signal
from .plan import JobPlan, PodPlan, ProcessSpec


class Executor(Protocol):
    name: str

    def prepare(self, plan: JobPlan) -> None:
        """Before any pod starts (checks, volumes); raise ``UserError`` to stop the run."""

    def prepare_pod(self, pod: PodPlan) -> None:
        """Before each pod object starts (a recreated pod gets fresh emptyDir and ephemeral folders): what the
        kubelet does to its volumes."""

    def start(self, spec: ProcessSpec, cwd: str, keep_fds: tuple[int, ...] = ()) -> subprocess.Popen:
        """Start one container; its output (stdout and stderr together) on the handle's stdout. What is started
        gets ``keep_fds`` (the workdir lock) and SIGTERM when run-local dies (``parent_death_signal``)."""

    def signal(self, spec: ProcessSpec, proc: subprocess.Popen, sig: int) -> None:
        """Deliver ``sig`` to everything the container runs."""

    def finish(self, plan: JobPlan) -> None:
        """After the run (also on failure or Ctrl-C): nothing of it may keep running."""


class ProcessExecutor:
    """Each container's command as a local process in its own session (so a signal reaches its children)."""

    name = "process"

    def prepare(self, plan: JobPlan) -> None:
        return None

    def prepare_pod(self, pod: PodPlan) -> None:
        return None

    def start(self, spec: ProcessSpec, cwd: str, keep_fds: tuple[int, ...] = ()) -> subprocess.Popen:
        return subprocess.Popen(spec.argv, env=spec.env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=parent_death_signal(),
                                pass_fds=keep_fds)

    def signal(self, spec: ProcessSpec, proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def finish(self, plan: JobPlan) -> None:
        return None
