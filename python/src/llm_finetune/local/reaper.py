"""Nothing of a ``--runtime container`` run outlives run-local, however run-local ends (SIGKILL included).

A process runtime's children get SIGTERM when run-local dies (``core/proc.parent_death_signal``). A
container is not run-local's child: its engine client is, and podman passes a signal it gets on to the
container (``--sig-proxy``) but keeps waiting while the container ignores it, and the container is
never removed. So ``ContainerExecutor`` starts this process before the first container, in a session
of its own, holding the read end of a pipe whose only write end run-local keeps. When the pipe closes
— run-local finished, or was killed — it does what the kubelet does when a pod is deleted: every
container labelled with the run gets SIGTERM and, ``--grace`` seconds later (the pods'
``terminationGracePeriodSeconds``), SIGKILL (``<engine> stop --time``); then they are removed, and so
is the run's cgroup parent. It holds the workdir lock (an inherited fd) until then, so a second
run-local on the same workdir waits for it, as it waits for the processes of the process runtime.

    python -m llm_finetune.local.reaper --run-key KEY --grace SECONDS [--cgroup-parent P] -- ENGINE...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from .containers import RUN_LABEL, remove_cgroup


def run_containers(engine: list[str], run_key: str) -> list[str]:
    """Ids of the run's containers, running or not."""
    proc = subprocess.run([*engine, "ps", "-aq", "--filter", f"label={RUN_LABEL}={run_key}"],
                          capture_output=True, text=True)
    return proc.stdout.split()


def reap(engine: list[str], run_key: str, grace: int, cgroup_parent: str = "") -> list[str]:
    """Stop (SIGTERM, SIGKILL after ``grace`` s) and remove every container of the run; returns their ids."""
    ids = run_containers(engine, run_key)
    if ids:
        subprocess.run([*engine, "stop", f"--time={grace}", *ids], capture_output=True)
        subprocess.run([*engine, "rm", "-f", *ids], capture_output=True)
    if cgroup_parent:
        remove_cgroup(cgroup_parent)
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_finetune.local.reaper")
    parser.add_argument("--run-key", required=True)
    parser.add_argument("--grace", type=int, default=30)
    parser.add_argument("--cgroup-parent", default="")
    parser.add_argument("engine", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    engine = args.engine[1:] if args.engine[:1] == ["--"] else args.engine
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe's end says when
    while os.read(sys.stdin.fileno(), 4096):
        pass
    reap(engine, args.run_key, args.grace, args.cgroup_parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
