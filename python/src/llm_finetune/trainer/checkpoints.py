"""Checkpoints on the volume: completeness markers, resume, rotation and SIGTERM.

* transformers writes ``<paths.run>/checkpoints/checkpoint-N``; once rank 0 has written it,
  our ``on_save`` hook adds ``.llm-finetune-complete.json`` (step + every file's size),
  written last and atomically. A folder without it (killed while saving) or whose files no
  longer match it (damaged) is *incomplete*: resume skips it with a warning.
* ``training.resume``: ``auto`` = the newest complete checkpoint of this run (none: start
  fresh); ``never`` = start fresh (old checkpoints of this run are removed); anything else is
  a checkpoint path (pod path; it must hold ``trainer_state.json``).
* Rotation (``save_total_limit``) is ours, after the marker: transformers' own rotation runs
  before our marker exists and could delete the last complete checkpoint.
* Every rank's state: transformers has each rank write ``rng_state_<rank>.pth`` into its own
  output folder (rank > 0: node-local scratch). ``on_save`` moves those files into rank 0's
  checkpoint (:func:`~.dist.gather_rank_files`) before the marker, so a checkpoint restores
  every rank's random generators (dropout, sampling): a resumed run continues the loss curve
  of an uninterrupted one. A resume says which ranks a checkpoint cannot restore
  (:func:`warn_missing_rank_state`).
* SIGTERM (pod deleted/preempted): the next optimizer step saves a checkpoint and training
  stops; the command exits 143 (retried under ``restartPolicy: ExitCode``) and the next
  attempt resumes from it. Every rank agrees on the stop at each step (one tiny all-reduce).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, Terminated
from ..core.volume import CHECKPOINT_MARKER as MARKER
from ..core.volume import atomic_write_json, list_checkpoints, read_json, walk_files
from ..core.volume import checkpoint_step as step_of
from .dist import Ranks, gather_rank_files

log = logging.getLogger(__name__)



def checkpoint_files(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    p = Path(path)
    return [{"path": f, "size": (p / f).stat().st_size} for f in walk_files(p)]


def mark_complete(path: str | os.PathLike[str], step: int) -> None:
    """Write the completeness marker of a fully written checkpoint (rank 0)."""
    atomic_write_json(Path(path) / MARKER, {"step": step, "files": checkpoint_files(path),
                                            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    data = read_json(Path(path) / MARKER)
    return data if data is not None and isinstance(data.get("files"), list) else None


def incomplete_reason(path: str | os.PathLike[str], files: list[dict[str, Any]] | None = None) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from, or None when it is complete.

    ``files`` (rank 0's list) overrides the marker's list: a rank checks it sees the same files.
    """
    p = Path(path)
    if files is None:
        marker = read_marker(p)
        if marker is None:
            return "no completeness marker (it was being written when the run stopped)"
        files = marker["files"]
    for entry in files:
        f = p / entry["path"]
        try:
            size = f.stat().st_size
        except OSError:
            return f"{entry['path']} is missing"
        if size != int(entry["size"]):
            return f"{entry['path']} has {size} bytes, expected {entry['size']}"
    try:
        json.loads((p / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "trainer_state.json is missing or damaged"
    return None


def missing_rank_state(path: str | os.PathLike[str], world_size: int) -> list[int]:
    """The ranks whose RNG state ``path`` lacks (transformers names it per rank when world_size > 1)."""
    p = Path(path)
    if world_size <= 1:
        return [] if (p / "rng_state.pth").is_file() else [0]
    return [r for r in range(world_size) if not (p / f"rng_state_{r}.pth").is_file()]


def warn_missing_rank_state(path: str | os.PathLike[str], world_size: int) -> None:
    """Say which ranks a resume from ``path`` cannot restore exactly, and why."""
    lacking = missing_rank_state(path, world_size)
    if lacking:
        log.warning("checkpoint %s has no RNG state of rank(s) %s: they resume with fresh random generators, so "
                    "dropout and sampling differ from an uninterrupted run (it was written with save_only_model, by "
                    "another number of processes, or by an older version)", path, ", ".join(map(str, lacking)))


def latest_complete(checkpoints_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint; newer incomplete ones are skipped with a warning."""
    for ckpt in list_checkpoints(checkpoints_dir):
        reason = incomplete_reason(ckpt)
        if reason is None:
            return ckpt
        log.warning("skipping checkpoint %s: %s", ckpt, reason)
    return None


def resolve_resume(setting: str, checkpoints_dir: str) -> Path | None:
    """The checkpoint to resume from (rank 0), per ``training.resume``; tidies the checkpoints dir."""
    from ..core.config import map_path

    if setting == "never":
        old = list_checkpoints(checkpoints_dir)
        if old:
            log.warning("training.resume is never: removing %d checkpoint(s) of an earlier attempt in %s",
                        len(old), checkpoints_dir)
            for p in old:
                shutil.rmtree(p, ignore_errors=True)
        return None
    if setting == "auto":
        found = latest_complete(checkpoints_dir)
    else:
        found = Path(map_path(setting))
        if not (found / "trainer_state.json").is_file():
            raise ConfigError(f"{setting} is not a checkpoint (no trainer_state.json there)", field="training.resume",
                              hint="use auto, never, or the path of a checkpoint-N folder")
        if read_marker(found) is None:
            log.warning("resuming from %s, which has no completeness marker (not written by this trainer)", found)
        elif (reason := incomplete_reason(found)) is not None:
            raise ConfigError(f"checkpoint {setting} is incomplete: {reason}", field="training.resume",
                              hint="pick an earlier checkpoint, or set auto")
    # Incomplete checkpoints newer than the resume point would be overwritten in place: remove them.
    start = step_of(found) if found is not None and step_of(found) is not None else -1
    for ckpt in list_checkpoints(checkpoints_dir):
        if (step_of(ckpt) or 0) > start and Path(ckpt) != found and incomplete_reason(ckpt) is not None:
            shutil.rmtree(ckpt, ignore_errors=True)
    return found


def rotate(checkpoints_dir: str | os.PathLike[str], limit: int | None, keep: str | None = None) -> None:
    """Keep the ``limit`` newest complete checkpoints (and ``keep``, the best one); delete older ones."""
    if not limit or limit <= 0:
        return
    complete = [p for p in list_checkpoints(checkpoints_dir) if read_marker(p) is not None]
    newest = complete[:limit]
    for p in complete[limit:]:
        if keep and os.path.abspath(p) == os.path.abspath(keep):
            continue
        if p not in newest:
            shutil.rmtree(p, ignore_errors=True)


SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"  # the chart sets it inside the pod's grace period
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0  # torchrun's own default


class StopFlag:
    """Set by SIGTERM. Before training starts it stops the command at once (nothing to save).

    A deadline too: a rank blocked in a collective whose peer is gone never gets back to the step's
    end, so from the first SIGTERM it has the shutdown timeout (what torchrun waits before SIGKILL)
    to stop; and a SIGTERM after its launcher died (the kernel's parent-death signal: nobody is left
    to kill it) stops it at once. Both exit 143 with the last complete checkpoint kept for the resume."""

    def __init__(self) -> None:
        self.requested = False
        self.in_training = False
        self.stopped_at: int | None = None
        self._deadline: threading.Timer | None = None

    def install(self) -> None:
        from ..core.proc import watch_signal

        signal.signal(signal.SIGTERM, self._handler)
        watch_signal(signal.SIGTERM, self._on_sigterm)

    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.requested:
            return
        self.requested = True
        if not self.in_training:
            raise Terminated("received SIGTERM before training started; nothing to save",
                             hint="the pod is retried and starts again")
        log.warning("received SIGTERM: saving a checkpoint at the end of this step, then stopping")

    def _on_sigterm(self) -> None:
        """In the signal-watch thread, at every SIGTERM."""
        from ..core.proc import LAUNCHER_PID_ENV

        launcher = os.environ.get(LAUNCHER_PID_ENV, "")
        if launcher.isdigit() and os.getppid() != int(launcher):
            self._expire("its launcher is gone")
        if self._deadline is None:
            seconds = float(os.environ.get(SHUTDOWN_TIMEOUT_ENV) or DEFAULT_SHUTDOWN_TIMEOUT_S)
            self._deadline = threading.Timer(seconds, self._expire, (f"no checkpoint within {seconds:.0f}s",))
            self._deadline.daemon = True
            self._deadline.start()

    @staticmethod
    def _expire(why: str) -> None:
        from ..core.errors import EXIT_TERMINATED, write_termination_message
        from ..core.proc import exit_now

        message = (f"trainer: stopped by SIGTERM ({why}, e.g. a peer process ended); "
                   "the next attempt resumes from the last complete checkpoint")
        log.error("%s", message)
        write_termination_message(message)
        exit_now(EXIT_TERMINATED)


def make_callback(stop: StopFlag, save_total_limit: int | None):
    """The TrainerCallback that marks checkpoints complete, rotates them and handles SIGTERM."""
    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            requested = stop.requested
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                import torch

                flag = torch.tensor([1 if requested else 0], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                requested = bool(flag.item())
            if requested:
                stop.requested = True
                stop.stopped_at = state.global_step
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            # Every rank's state (rank > 0: RNG) into rank 0's checkpoint before it is marked complete.
            gather_rank_files(Ranks.from_env(), path, path if state.is_world_process_zero else None)
            if state.is_world_process_zero:
                if os.path.isdir(path):
                    mark_complete(path, state.global_step)
                    rotate(args.output_dir, save_total_limit, state.best_model_checkpoint)
                    log.info("checkpoint %s saved", path)
            return control

    return CheckpointCallback()
