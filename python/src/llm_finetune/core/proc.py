"""Process lifetime: children that die with their parent, and an exit that cannot hang.

* :func:`parent_death_signal` — a ``preexec_fn`` for ``subprocess.Popen``: the child gets
  SIGTERM (``prctl(PR_SET_PDEATHSIG)``, Linux) when the parent dies, however it dies
  (SIGKILL included). The kernel sends it when the *thread* that started the child exits:
  start and wait for a child in the same, long-lived thread.
* :func:`die_with_parent` — the same, set by a process on itself, for processes someone else
  starts: torchrun starts the trainer's workers in sessions of their own, so a signal to
  the launcher's process group never reaches them; ``launch`` exports its PID in
  :data:`LAUNCHER_PID_ENV` and ``train`` calls this first thing.
* :func:`arm_exit_watchdog` — after SIGTERM/SIGINT a command has written its message; if a
  library thread (a blocked download) keeps the interpreter from exiting, the process
  still ends with its exit code within a few seconds (well inside a pod's grace period).
* :func:`exit_on_sigterm` / :func:`watch_signal` — a Python signal handler runs only when the main
  thread gets back to Python code; a main thread blocked in C++ (torch's rendezvous store, a gloo
  collective whose peer is gone) would ignore SIGTERM for as long as it waits. These see it in a
  thread instead (the wakeup fd).

Elsewhere than Linux the two first are no-ops.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Callable

log = logging.getLogger(__name__)

LAUNCHER_PID_ENV = "LLM_FINETUNE_LAUNCHER_PID"
EXIT_WATCHDOG_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when this thread (of the parent) ends."""
    prctl = _prctl()  # resolved before fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
            if os.getppid() != parent:  # the parent died between fork and prctl
                os._exit(128 + int(sig))

    return preexec


def die_with_parent(expected_parent: int, sig: int = signal.SIGTERM) -> bool:
    """Get ``sig`` when the parent process dies; False when ``expected_parent`` is already gone."""
    prctl = _prctl()
    if prctl is None:
        return True
    prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return os.getppid() == expected_parent


def watch_signal(sig: int, on_signal: Callable[[], None]) -> None:
    """Call ``on_signal()`` in a thread each time ``sig`` arrives, also while the main thread is blocked
    in C/C++ code (a collective, a store), where Python runs no handler. Needs a Python handler for
    ``sig`` (``signal.signal``), which still runs when the main thread gets back to Python. Main thread only."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        while data := os.read(read_fd, 64):
            if int(sig) in data:
                on_signal()

    threading.Thread(target=watch, name=f"signal-{int(sig)}-watch", daemon=True).start()


def exit_on_sigterm(on_term: Callable[[], int]) -> Callable[[], bool]:
    """From now on SIGTERM calls ``on_term()`` in a thread and the process exits with what it returns,
    wherever the main thread is. Returns ``active()``: False once someone else handles SIGTERM
    (``signal.signal`` replaced the handler), and then this one does nothing any more."""
    def handler(signum, frame) -> None:  # noqa: ARG001 - the watcher thread does the work
        pass

    signal.signal(signal.SIGTERM, handler)

    def active() -> bool:
        return signal.getsignal(signal.SIGTERM) is handler

    def on_signal() -> None:
        if active():
            exit_now(on_term())

    watch_signal(signal.SIGTERM, on_signal)
    return active


def exit_now(code: int) -> None:
    """Flush stdout and stderr, then end the process with ``code`` at once (threads blocked in I/O included)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def arm_exit_watchdog(code: int, seconds: float = EXIT_WATCHDOG_SECONDS) -> None:
    """End the process with ``code`` in ``seconds`` unless it has exited by then."""

    def expire() -> None:
        log.warning("threads still running %.0fs after the stop: exiting %d now", seconds, code)
        exit_now(code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
