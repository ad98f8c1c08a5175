"""Exit codes, error types and the termination message.

Exit codes follow fms-hf-tuning and line up with Kubeflow's ``restartPolicy: ExitCode``
(1-127 are permanent failures, 128-255 are retried:
training-operator@v1.9.0:pkg/util/train/train_util.go ``IsRetryableExitCode``: ``>= 128``):

====  ==============================================================
code  meaning
====  ==============================================================
0     success
1     user error: bad config or values, missing repo/bucket/file,
      wrong credentials, unsupported combination. Fix the input.
2     command-line usage error (argparse)
130   interrupted by SIGINT (Ctrl-C); retried under ExitCode
143   stopped by SIGTERM (pod deleted, evicted or preempted; run-local
      stopped), 128 + 15 as for a process the signal killed: the command
      logs one line and writes the termination message; the initializer
      keeps what it downloaded and the trainer saves a checkpoint first,
      so the next attempt resumes. Retried under ExitCode
202   external error: a remote service kept failing after all retries
      (retried under ExitCode)
203   internal error: a bug; the traceback is in the log
====  ==============================================================

Every failure writes one line to the termination log (``/dev/termination-log`` in a pod,
``$LLM_FINETUNE_TERMINATION_LOG`` elsewhere) so ``kubectl describe pod`` shows it.

SIGTERM: :func:`guarded` makes it raise :class:`Terminated` in the main thread (once: a
second SIGTERM during the clean-up is ignored), which unwinds like Ctrl-C does.
``Terminated`` is a ``BaseException``: no ``except Exception`` (ours or a library's) can
take it for a transient error and retry. Where it is swallowed all the same — the signal
landed in a weakref finalizer or a ``__del__`` (Python prints "Exception ignored" and goes
on: seen with urllib3 closing a connection pool), or in a library's ``except
BaseException`` — the command still stops the same way (the line, the message, 143): at
once from ``sys.unraisablehook``, else when it has not reached :func:`guarded` within
:data:`SWALLOWED_STOP_SECONDS`. A command that must do something first (the trainer: a
checkpoint) installs its own handler.

The Training Operator v1.9 reads the exit code of the ``pytorch`` container only; an init
container that fails leaves it unset (0xbeef, "retryable"). So the chart's init container
does not exit with its code: :func:`write_outcome` records ``{code, message}`` in the pod's
``/tmp`` and ``launch`` (the ``pytorch`` container) exits with it (:func:`read_outcome`).
What users see on a cluster for each code: README "Failures and retries".
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_EXTERNAL_ERROR = 202
EXIT_INTERNAL_ERROR = 203

TERMINATION_LOG_ENV = "LLM_FINETUNE_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# Kubernetes keeps at most 4096 bytes of a termination message.
_TERMINATION_MESSAGE_LIMIT = 4096
SWALLOWED_STOP_SECONDS = 5.0  # SIGTERM -> guarded at the latest, else the process stops without it

log = logging.getLogger(__name__)


class _Rendered:
    """A message a person can act on: ``field: message — hint``."""

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None):
        self.message = message
        self.field = field
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.field}: {self.message}" if self.field else self.message
        if self.hint:
            text += f" — {self.hint}"
        return text


class FinetuneError(_Rendered, Exception):
    """Base error: a message a person can act on, and the exit code that goes with it."""

    exit_code = EXIT_INTERNAL_ERROR


class Terminated(_Rendered, BaseException):
    """Stopped by SIGTERM (after what had to be saved). Exit code 143, retried under ExitCode.

    A ``BaseException`` like ``KeyboardInterrupt``: the signal handler raises it wherever the
    main thread is, and an ``except Exception`` there must not swallow it.
    """

    exit_code = EXIT_TERMINATED

    def __init__(self, message: str = "stopped by SIGTERM", *, field: str | None = None, hint: str | None = None):
        super().__init__(message, field=field, hint=hint)


class UserError(FinetuneError):
    """The input is wrong (values, config, data, credentials). Exit code 1."""

    exit_code = EXIT_USER_ERROR


class ConfigError(UserError):
    """A config or values field is wrong."""


class ExternalError(FinetuneError):
    """A remote service failed after every retry. Exit code 202 (retryable)."""

    exit_code = EXIT_EXTERNAL_ERROR


class InternalError(FinetuneError):
    """A bug. Exit code 203."""

    exit_code = EXIT_INTERNAL_ERROR


def termination_log_path() -> str:
    return os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG)


_last_message = ""


def last_message() -> str:
    """The last one-line message this process wrote to the termination log ("" if none)."""
    return _last_message


def write_termination_message(message: str) -> None:
    """Write ``message`` to the termination log; never raise (the log may not exist locally)."""
    global _last_message
    _last_message = message
    path = termination_log_path()
    if not path:
        return
    data = message.encode("utf-8", "replace")[:_TERMINATION_MESSAGE_LIMIT]
    try:
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError:
        pass


class _Stop:
    """:func:`guarded`'s SIGTERM handler: raise :class:`Terminated` once, and stop the process
    as ``guarded`` would should that exception be swallowed (see the module doc)."""

    def __init__(self, step: str, hint: str | None) -> None:
        self.step, self.hint = step, hint
        self.backstop: threading.Timer | None = None

    def __call__(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal handler signature
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # later SIGTERMs are ignored (the clean-up runs)
        self.backstop = threading.Timer(SWALLOWED_STOP_SECONDS, self.exit_now)
        self.backstop.daemon = True
        self.backstop.start()
        raise Terminated()

    def caught(self) -> None:
        if self.backstop is not None:
            self.backstop.cancel()

    def exit_now(self) -> None:
        from .proc import exit_now

        _failed(self.step, Terminated(hint=self.hint).render(), EXIT_TERMINATED, level=logging.WARNING)
        exit_now(EXIT_TERMINATED)

    def install(self) -> Callable[[], None]:
        """Install the handler and the unraisable hook (main thread only); returns what puts the previous back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous, previous_hook = signal.signal(signal.SIGTERM, self), sys.unraisablehook

        def hook(unraisable: Any) -> None:
            if isinstance(unraisable.exc_value, Terminated):
                self.exit_now()  # raised where Python could only print it and go on
            previous_hook(unraisable)

        sys.unraisablehook = hook

        def restore() -> None:
            signal.signal(signal.SIGTERM, previous)
            sys.unraisablehook = previous_hook

        return restore


def guarded(step: str, *, terminated: str | None = None) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's main: map exceptions to exit codes and a termination message.

    ``step`` names the command in the message ("initializer", "trainer", ...); ``terminated``
    is the hint of the message when SIGTERM stops it (what is kept, what happens next).
    """

    def decorate(fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs) -> int:
            stop = _Stop(step, terminated)
            restore = stop.install()
            try:
                return fn(*args, **kwargs) or EXIT_OK
            except FinetuneError as exc:
                return _failed(step, exc.render(), exc.exit_code)
            except Terminated as exc:
                stop.caught()
                if terminated and not exc.hint:
                    exc.hint = terminated
                return _failed(step, exc.render(), EXIT_TERMINATED, level=logging.WARNING)
            except KeyboardInterrupt:
                return _failed(step, "interrupted (SIGINT)", EXIT_INTERRUPTED)
            except Exception as exc:  # noqa: BLE001 - last resort, keeps the traceback in the log
                log.exception("%s: internal error", step)
                msg = f"{step}: internal error: {type(exc).__name__}: {exc}"
                write_termination_message(msg)
                return EXIT_INTERNAL_ERROR
            finally:
                restore()

        return wrapper

    return decorate


def _failed(step: str, text: str, code: int, *, level: int = logging.ERROR) -> int:
    msg = f"{step}: {text}"
    log.log(level, msg)
    write_termination_message(msg)
    return code


def write_outcome(path: str | os.PathLike[str], code: int, message: str) -> None:
    """Record a command's outcome for a later container of the same pod (atomic)."""
    import json
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps({"code": int(code), "message": message}), encoding="utf-8")
    os.replace(tmp, p)


def read_outcome(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """The outcome :func:`write_outcome` recorded, or None when there is none (or it is unreadable)."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return int(data["code"]), str(data.get("message") or "")
    except (OSError, ValueError, KeyError, TypeError):
        return None
