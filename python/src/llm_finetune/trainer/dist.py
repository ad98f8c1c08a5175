"""Ranks, node-local scratch, writability, and moving a checkpoint to ranks that cannot see it.

* torchrun sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``LOCAL_WORLD_SIZE``/``GROUP_RANK`` (node
  rank); a plain ``python -m llm_finetune train`` is rank 0 of 1.
* Only global rank 0 writes to the shared volume. Everything another rank must write goes
  to node-local scratch: ``$TMPDIR/llm-finetune/<run name>/`` (the pod's ``/tmp`` emptyDir).
* Writability is probed at run time (create + delete a file), never assumed from env flags.
* :func:`sync_checkpoint`: in perPod mode Workers cannot see the Master's claim, so rank 0
  streams the checkpoint's files over a gloo group to one rank per node that lacks them,
  which writes them to node-local scratch.
* :func:`gather_rank_files`: the other way round, at every save: what a rank > 0 wrote into
  its own (scratch) checkpoint folder (its RNG state ``rng_state_<rank>.pth``; sharded
  states) is sent to rank 0, which writes it into the checkpoint on the claim, so that the
  checkpoint holds every rank's state and a resume is exact on every rank.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.volume import unwritable_reason

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 20  # broadcast files in 64 MiB pieces


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    node_rank: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        env = os.environ
        return cls(int(env.get("RANK", 0) or 0), int(env.get("LOCAL_RANK", 0) or 0),
                   int(env.get("WORLD_SIZE", 1) or 1), int(env.get("GROUP_RANK", env.get("PET_NODE_RANK", 0)) or 0))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def scratch_root(run_name: str) -> Path:
    """Node-local scratch of this run (the pod's /tmp)."""
    return Path(tempfile.gettempdir()) / "llm-finetune" / run_name


def writable_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` exists (or can be created) and a file can be written in it."""
    return unwritable_reason(path) is None


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (a collective when distributed)."""
    if not _initialized():
        return flag
    import torch.distributed as dist

    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not _initialized():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def _cpu_group():
    """A process group that carries CPU tensors: the default one under gloo, else a gloo group made once."""
    import torch.distributed as dist

    global _GLOO
    if dist.get_backend() == "gloo":
        return None
    if _GLOO is None:
        _GLOO = dist.new_group(backend="gloo")  # every rank calls this at the same point (a collective)
    return _GLOO


_GLOO = None


def gather_rank_files(ranks: Ranks, local_dir: str | os.PathLike[str], dest_dir: str | os.PathLike[str] | None) -> int:
    """Collective: every file under a rank > 0's ``local_dir`` is written under rank 0's ``dest_dir``.

    Rank r's copy is removed once sent (it is in the checkpoint now: node scratch keeps nothing).
    A name rank 0 already has is kept as rank 0 wrote it. Returns the number of files moved.
    """
    if not ranks.distributed:
        return 0
    import torch
    import torch.distributed as dist

    local = Path(local_dir)
    mine = []
    if not ranks.is_main and local.is_dir():
        mine = sorted((p.relative_to(local).as_posix(), p.stat().st_size) for p in local.rglob("*") if p.is_file())
    lists: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(lists, mine)
    group = _cpu_group()
    for src in range(1, ranks.world_size):
        for rel, size in lists[src]:
            if ranks.rank == src:
                with open(local / rel, "rb") as fh:
                    for n in _pieces(size):
                        dist.send(torch.frombuffer(bytearray(fh.read(n)), dtype=torch.uint8), dst=0, group=group)
            elif ranks.is_main:
                _receive(Path(dest_dir) / rel, size, src, group)
    if not ranks.is_main and mine:
        shutil.rmtree(local, ignore_errors=True)
    return sum(len(files) for files in lists)


def _pieces(size: int) -> list[int]:
    return [min(CHUNK_BYTES, size - done) for done in range(0, size, CHUNK_BYTES)]


def _receive(dst: Path, size: int, src: int, group) -> None:
    import torch
    import torch.distributed as dist

    keep = dst.exists()
    if keep:
        log.warning("rank %d wrote %s too; keeping rank 0's", src, dst)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.from-rank-{src}")
    with open(os.devnull if keep else tmp, "wb") as out:
        for n in _pieces(size):
            buf = torch.empty(n, dtype=torch.uint8)
            dist.recv(buf, src=src, group=group)
            out.write(buf.numpy().tobytes())
    if not keep:
        os.replace(tmp, dst)


def sync_checkpoint(ranks: Ranks, path: str | None, files: list[dict[str, Any]] | None,
                    locate: Callable[[str], str], visible: Callable[[str, list[dict[str, Any]]], bool],
                    scratch: Path) -> str | None:
    """Return, on every rank, a local path holding rank 0's checkpoint ``path``.

    Rank 0 passes the checkpoint it resumes from (``path``, None for a fresh start) and its
    file list (``[{path, size}]``). Each rank finds its own view of it (``locate(path)``: the
    same pod path through its own mounts) and checks it (``visible(local, files)``: shared
    mode). When a node does not see it, rank 0 streams the files over a gloo process group
    and that node's local rank 0 writes them into ``scratch``.
    """
    path, files = broadcast((path, files))
    if path is None or not ranks.distributed:
        return path
    local = locate(path)
    sees = visible(local, files)
    if all_true(sees):
        return local
    target = scratch / "resume" / Path(path).name
    # One writer per node that lacks the checkpoint: its lowest local rank.
    writer = not sees and ranks.is_local_main
    if writer:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
    total = _stream_checkpoint(ranks, Path(path), files, target if writer else None)
    if ranks.is_main:
        log.info("sent checkpoint %s (%d files, %d bytes) to the ranks that cannot see it", path, len(files), total)
    if sees:
        return local
    if writer:
        log.warning("received checkpoint %s from rank 0 (%d files, %d bytes) into node-local %s",
                    Path(path).name, len(files), total, target)
    return str(target)


def _stream_checkpoint(ranks: Ranks, source: Path, files: list[dict[str, Any]], target: Path | None) -> int:
    """Broadcast ``files`` of ``source`` from rank 0 over a gloo group (every rank takes part); a rank
    given a ``target`` writes them there. Returns the bytes sent."""
    import torch.distributed as dist

    group = dist.new_group(backend="gloo")
    total = 0
    for entry in files:
        dst = None
        if target is not None:
            dst = target / entry["path"]
            dst.parent.mkdir(parents=True, exist_ok=True)
        src = open(source / entry["path"], "rb") if ranks.is_main else None
        out = open(dst, "wb") if dst is not None else None
        try:
            _stream_file(int(entry["size"]), src, out, group)
        finally:
            for fh in (src, out):
                if fh is not None:
                    fh.close()
        total += int(entry["size"])
    dist.barrier(group=group)
    dist.destroy_process_group(group)
    return total


def _stream_file(size: int, src, out, group) -> None:
    """One file in CHUNK_BYTES pieces: rank 0 reads ``src``; every rank receives; ``out`` (if any) is written."""
    import torch
    import torch.distributed as dist

    done = 0
    while done < size:
        n = min(CHUNK_BYTES, size - done)
        if src is not None:
            buf = torch.frombuffer(bytearray(src.read(n)), dtype=torch.uint8)
        else:
            buf = torch.empty(n, dtype=torch.uint8)
        dist.broadcast(buf, src=0, group=group)
        if out is not None:
            out.write(buf.numpy().tobytes())
        done += n
