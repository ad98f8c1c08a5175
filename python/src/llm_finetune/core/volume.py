"""The volume layout shared by the initializer (writer) and the trainer/hooks (readers).

Each directory the initializer fills (``paths.model``, ``paths.dataset``) gets a
completion manifest, ``.llm-finetune-manifest.json``, written last and atomically::

    {
      "kind": "model" | "dataset",
      "source": "hf://org/name",           # the URI from the config
      "revision": "a1b2c3...",             # resolved commit sha / S3 ETag digest / "" for local
      "sourceKey": "...",                  # identity of the request (uri, revision, name, split, patterns)
      "layout": "files" | "save_to_disk" | "snapshot",  # datasets only: how to load it
      "fileType": "jsonl",                 # datasets with layout=files: json|jsonl|csv|parquet|arrow
      "splits": {"train": ["train.jsonl"], "test": ["test.jsonl"]},  # datasets, layout=files
      "select": {"split": "train[:10%]", "name": ""},  # layout=snapshot: what the trainer loads
      "files": [{"path": "...", "size": 123,
                 "etag": "..." | "sha256": "..." | "gitOid": "...",   # S3 ETag / Hub LFS oid / git blob id
                 "checksum": {"algorithm": "md5", "value": "...", "source": "ETag"}}],
      "createdAt": "2026-11-28T21:00:00Z",
      "tool": "llm-finetune 0.1.0"
    }

``checksum`` is what the file was verified against before it was put in place
(:class:`llm_finetune.core.digest.Checksum`: ``algorithm`` md5 | sha256 | sha1 | crc32 |
git-sha1, ``value`` in hex, ``-N`` for a multipart/composite value with ``partSize`` or
``partSizes``, and its ``source``); it is absent when the source published none (the size
was checked).

A directory whose manifest is present and whose ``sourceKey`` matches the request is
complete: reruns download nothing. A directory without a manifest is partial and is
finished (resumed) by the next initializer run.

The trainer's output folder (``<paths.run>/output``) ends with its own manifest,
``OUTPUT_MANIFEST`` (keys documented in :mod:`llm_finetune.trainer.output`), written last:
``llm-finetune verify`` and exports read it.

Checkpoints: ``<paths.run>/checkpoints/checkpoint-N``, complete once the trainer wrote its
marker ``CHECKPOINT_MARKER`` in it (format and checks: :mod:`llm_finetune.trainer.checkpoints`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

MANIFEST_NAME = ".llm-finetune-manifest.json"
OUTPUT_MANIFEST = "manifest.json"
CHECKPOINT_MARKER = ".llm-finetune-complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def unwritable_reason(directory: str | os.PathLike[str]) -> str | None:
    """Why files cannot be created in ``directory`` (created if missing) by this process, or None.

    Probed (create + delete a file), never assumed from modes: root squash, read-only mounts and
    ACLs all show. The reason names this process's uid/gids and the directory's owner and mode.
    """
    import errno

    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".llm-finetune-probe-", dir=d)
        os.close(fd)
        os.unlink(probe)
        return None
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return "the volume is mounted read-only"
        owner = ""
        for p in (d, *d.parents):
            try:
                st = p.stat()
            except OSError:
                continue
            owner = f"; {p} is owned by {st.st_uid}:{st.st_gid} with mode {oct(st.st_mode & 0o7777)}"
            break
        ids = f"uid {os.getuid()}, gid {os.getgid()}, groups {sorted(set(os.getgroups()))}"
        return f"{exc.strerror or exc} (this process: {ids}{owner})"


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """N of a ``checkpoint-N`` folder, else None."""
    m = _CHECKPOINT.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(checkpoints_dir: str | os.PathLike[str]) -> list[Path]:
    """``checkpoint-N`` folders, newest (highest N) first."""
    d = Path(checkpoints_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0, reverse=True)


def manifest_path(directory: str | os.PathLike[str]) -> Path:
    return Path(directory) / MANIFEST_NAME


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is absent, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The completion manifest of ``directory``, or None when it is absent or unreadable."""
    return read_json(manifest_path(directory))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask is process-wide, not safe to flip while threads write


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; readers with the pod's fsGroup need more
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_manifest(directory: str | os.PathLike[str], data: dict[str, Any]) -> None:
    atomic_write_json(manifest_path(directory), data)


def walk_files(root: str | os.PathLike[str]) -> list[str]:
    """Relative paths of regular files under ``root``, skipping hidden entries (``.cache``, manifest...)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
    return out


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            h.update(data)
    return h.hexdigest()
