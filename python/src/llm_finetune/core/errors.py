"""Exit codes, error types and the termination message.

Exit codes follow fms-hf-tuning and line up with Kubeflow's ``restartPolicy: ExitCode``
(1-127 are permanent failures, 128-255 are retried):

====  ==============================================================
code  meaning
====  ==============================================================
0     success
1     user error: bad config or values, missing repo/bucket/file,
      wrong credentials, unsupported combination. Fix the input.
2     command-line usage error (argparse)
130   interrupted (SIGINT/SIGTERM); retried under ExitCode
143   terminated (SIGTERM): the trainer saved a checkpoint and stopped;
      retried under ExitCode, the next attempt resumes
202   external error: a remote service kept failing after all retries
      (retried under ExitCode)
203   internal error: a bug; the traceback is in the log
====  ==============================================================

Every failure writes one line to the termination log (``/dev/termination-log`` in a pod,
``$LLM_FINETUNE_TERMINATION_LOG`` elsewhere) so ``kubectl describe pod`` shows it.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

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

log = logging.getLogger("llm_finetune")


class FinetuneError(Exception):
    """Base error: a message a person can act on, and the exit code that goes with it."""

    exit_code = EXIT_INTERNAL_ERROR

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


def write_termination_message(message: str) -> None:
    """Write ``message`` to the termination log; never raise (the log may not exist locally)."""
    path = termination_log_path()
    if not path:
        return
    data = message.encode("utf-8", "replace")[:_TERMINATION_MESSAGE_LIMIT]
    try:
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError:
        pass


def guarded(step: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's main: map exceptions to exit codes and a termination message.

    ``step`` names the command in the message ("initializer", "trainer", ...).
    """

    def decorate(fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs) -> int:
            try:
                return fn(*args, **kwargs) or EXIT_OK
            except FinetuneError as exc:
                msg = f"{step}: {exc.render()}"
                log.error(msg)
                write_termination_message(msg)
                return exc.exit_code
            except KeyboardInterrupt:
                msg = f"{step}: interrupted"
                log.error(msg)
                write_termination_message(msg)
                return EXIT_INTERRUPTED
            except Exception as exc:  # noqa: BLE001 - last resort, keeps the traceback in the log
                log.exception("%s: internal error", step)
                msg = f"{step}: internal error: {type(exc).__name__}: {exc}"
                write_termination_message(msg)
                return EXIT_INTERNAL_ERROR

        return wrapper

    return decorate

