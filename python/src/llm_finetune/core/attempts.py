"""The attempt ledger: how often a pod of this run started without progress, kept on the claim.

Why: under ``restartPolicy: ExitCode`` the Training Operator v1.9 recreates a pod whose
``pytorch`` container exits >= 128 and never counts it. ``backoffLimit`` sums the restart
counts of *Running* pods, always 0 for the pods' own ``restartPolicy: Never``, and its other
check needs a requeue count that is always 0 (kubeflow/training-operator@v1.9.0:
pkg/core/job.go:95-133, pkg/controller.v1/common/job.go:175-214,
pkg/common/util/fake_workqueue.go:56): only ``backoffLimit: 0`` ever ends a job. So the chart
counts itself, with ``run.backoffLimit`` (= ``job.runPolicy.backoffLimit``) as the number of
retries a pod gets without progress:

* ``<paths.run>/.llm-finetune/attempts/<pod>.json``, one per pod that has the run folder on a
  writable volume: ``attempts`` (starts since the last progress), ``progress`` (the newest
  complete checkpoint's step when it started), ``open`` (started, not ended), ``lastFailure``,
  ``gaveUp``.
* :func:`begin` — the initializer, first container of every pod attempt, so an attempt killed
  hard (out of memory, eviction: no exit code of ours) is counted too. A newer complete
  checkpoint resets the count: a pod stopped by SIGTERM after a checkpoint never runs out.
  ``gaveUp`` means an earlier pod gave up (exit 1); the operator never recreates a pod after
  that, so this pod belongs to a new PyTorchJob of the same run (the user deleted the Failed
  one to resume it) and the count starts over.
* :meth:`Attempt.finish` — ``launch``, when the pod's work ends: a retryable failure (>= 128) of
  the last attempt the budget allows becomes permanent (exit 1): "gave up after N attempt(s) ...".
  A permanent failure sets ``gaveUp`` as well (the job ends Failed).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .volume import CHECKPOINT_MARKER, atomic_write_json, list_checkpoints, read_json

log = logging.getLogger(__name__)

KILLED = "the previous attempt was killed before it could report (out of memory, evicted, or its node was lost)"


def ledger_path(run_dir: str | os.PathLike[str], pod: str) -> Path:
    return Path(run_dir) / ".llm-finetune" / "attempts" / f"{pod}.json"


def progress_of(run_dir: str | os.PathLike[str]) -> int | None:
    """Step of the newest checkpoint that carries the trainer's completion marker."""
    for ckpt in list_checkpoints(Path(run_dir) / "checkpoints"):
        if (ckpt / CHECKPOINT_MARKER).is_file():
            return int(ckpt.name.rsplit("-", 1)[1])
    return None


@dataclass
class Attempt:
    path: Path
    number: int  # 1 = the first attempt since the last progress
    limit: int | None  # retries allowed without progress; None: no limit
    data: dict[str, Any]

    @property
    def last_allowed(self) -> bool:
        """A retryable failure of this attempt is not retried any more."""
        return self.limit is not None and self.number > self.limit

    @property
    def over_budget(self) -> bool:
        """The attempt before this one was already the last allowed (and was killed before it could say so)."""
        return self.limit is not None and self.number > self.limit + 1

    def give_up(self, failure: str) -> str:
        """End the run's budget: the permanent message (exit 1)."""
        self._end(failure, ended_job=True)
        return (f"gave up after {self.number} attempt(s) of this pod without a new checkpoint "
                f"(job.runPolicy.backoffLimit={self.limit}); last failure: {failure}")

    def finish(self, code: int, failure: str) -> str | None:
        """Record how this attempt ended; the give-up message when a retryable failure must become permanent."""
        if code == 0:
            self._end(None, ended_job=False)
        elif code < 128:  # permanent: the operator fails the job and never recreates a pod of it
            self._end(failure, ended_job=True)
        elif self.last_allowed:
            return self.give_up(failure)
        else:
            self._end(failure, ended_job=False)
        return None

    def _end(self, failure: str | None, *, ended_job: bool) -> None:
        self.data.update(open=False, lastFailure=failure, gaveUp=ended_job, endedAt=time.time())
        _write(self.path, self.data)


def begin(run_dir: str | os.PathLike[str], pod: str, limit: int | None) -> Attempt | None:
    """Count a new attempt of ``pod``; None when the run folder cannot be written here (no ledger)."""
    path = ledger_path(run_dir, pod)
    data = read_json(path) or {}
    if data.get("gaveUp"):
        log.info("attempts: a pod %s ended its job Failed before; this is a new job of the run, counting from 1", pod)
        data = {}
    progress = progress_of(run_dir)
    if data.get("progress") != progress:
        data["attempts"] = 0
    if data.get("open"):
        data["lastFailure"] = KILLED
    data.update(attempts=int(data.get("attempts") or 0) + 1, progress=progress, open=True, startedAt=time.time())
    try:
        _write(path, data)
    except OSError as exc:
        log.info("attempts: not counted (%s: %s)", path.parent, exc.strerror or exc)
        return None
    attempt = Attempt(path, data["attempts"], limit, data)
    budget = "no limit" if limit is None else f"{limit} retr{'y' if limit == 1 else 'ies'} without progress allowed"
    log.info("attempt %d of pod %s (%s)", attempt.number, pod, budget)
    return attempt


def current(run_dir: str | os.PathLike[str], pod: str, limit: int | None) -> Attempt | None:
    """The attempt :func:`begin` opened in this pod, or None (nothing is counted)."""
    path = ledger_path(run_dir, pod)
    data = read_json(path)
    if not data or not data.get("open"):
        return None
    return Attempt(path, int(data.get("attempts") or 1), limit, data)


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)
