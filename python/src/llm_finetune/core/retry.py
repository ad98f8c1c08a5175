"""Retries with exponential backoff and jitter, shared by every provider.

A provider passes a ``classify(exc)`` function that returns ``None`` when the exception is
transient (try again), or the exception to raise at once: a
:class:`~llm_finetune.core.errors.FinetuneError` for a permanent failure (e.g. a ``UserError``
naming the source and the fix), or ``exc`` itself for an unexpected error (a bug: exit 203). When the budget
(``download.retries`` retries after the first attempt) is spent, the last transient error
becomes an :class:`~llm_finetune.core.errors.ExternalError` (exit 202).
"""

from __future__ import annotations

import errno
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

from .errors import ExternalError, FinetuneError, UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
Classifier = Callable[[BaseException], Optional[BaseException]]
MAX_DELAY = 60.0


def describe(exc: BaseException) -> str:
    """One short line for an exception (no traceback, no request URLs with signatures)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def disk_error(exc: BaseException, where: str) -> FinetuneError | None:
    """A disk-full / quota / read-only error as a UserError with the fix, else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on the volume ({where})",
                         hint="increase storage.size (shared mode) or storage.perPod.size (perPod mode)")
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return UserError(f"the volume is read-only ({where})",
                         hint="the initializer needs the workspace volume mounted read-write")
    return None


@dataclass
class RetryPolicy:
    retries: int = 5
    backoff: float = 1.0
    field: str | None = None  # config field the final error names (e.g. "model.uri")
    sleep: Callable[[float], None] = time.sleep
    # Set when another thread failed for good: pending retries stop waiting.
    cancelled: threading.Event | None = None

    def delay(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (1-based): backoff * 2^(attempt-1), +-50 % jitter, capped."""
        base = self.backoff * (2 ** (attempt - 1))
        return min(MAX_DELAY, base * random.uniform(0.5, 1.5))

    def call(self, fn: Callable[[], T], *, what: str, classify: Classifier,
             on_retry: Callable[[], None] | None = None) -> T:
        """Run ``fn`` until it succeeds, a permanent error occurs, or the budget is spent.

        ``what`` names the operation and source in messages ("GET s3://b/k"). ``on_retry``
        runs before each retry (e.g. to roll back progress counters).
        """
        attempts = max(0, self.retries) + 1
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except FinetuneError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                permanent = disk_error(exc, what) or classify(exc)
                if permanent is exc:
                    raise
                if permanent is not None:
                    raise permanent from exc
                if attempt == attempts or (self.cancelled is not None and self.cancelled.is_set()):
                    raise ExternalError(
                        f"{what} failed after {attempt} attempt(s): {describe(exc)}", field=self.field,
                        hint="the service kept failing; the pod is retried (exit 202), "
                             "or raise download.retries") from exc
                wait = self.delay(attempt)
                log.warning("%s: %s; retry %d/%d in %.1fs", what, describe(exc), attempt, attempts - 1, wait)
                if on_retry is not None:
                    on_retry()
                if self.cancelled is not None:
                    if self.cancelled.wait(wait):
                        raise ExternalError(f"{what}: cancelled after a failure elsewhere", field=self.field) from exc
                else:
                    self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover
