"""Provider interface, registry and the helpers every provider shares.

A :class:`Provider` turns one :class:`Request` (the model or the dataset section of the job
config) into files in a target directory and returns the fields of its completion manifest.
The built-in providers are listed by URI scheme (``hf``, ``s3``, ``file``) in
:mod:`.registry`, whose :func:`~.registry.provider_for` picks one; this module imports no
provider. See "Adding a provider" in ARCHITECTURE.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from ..core.config import DownloadConfig, JobConfig, S3Settings, local_source_path
from ..core.errors import UserError
from ..core.log import RateReporter, format_bytes
from ..core.volume import MANIFEST_NAME

log = logging.getLogger(__name__)

# Names the initializer keeps for itself inside a target directory.
RESERVED_PREFIX = ".llm-finetune"
JOURNAL_NAME = ".llm-finetune-journal.jsonl"
PART_SUFFIX = ".part"
TMP_DIR_NAME = ".llm-finetune-tmp"  # under paths.workspace: staging dirs and library caches


@dataclass(frozen=True)
class Request:
    """What to put on the volume: one section (model or dataset) of the job config."""

    kind: str  # "model" | "dataset"
    uri: str
    revision: str = ""
    name: str = ""  # dataset config (subset)
    split: str = ""
    file_type: str = ""
    allow_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    trust_remote_code: bool = False
    s3: S3Settings = field(default_factory=S3Settings)

    @classmethod
    def from_config(cls, cfg: JobConfig, kind: str) -> "Request":
        if kind == "model":
            m = cfg.model
            return cls("model", m.uri, m.revision, allow_patterns=tuple(m.allow_patterns),
                       ignore_patterns=tuple(m.ignore_patterns), trust_remote_code=m.trust_remote_code, s3=m.s3)
        d = cfg.dataset
        return cls("dataset", d.uri, d.revision, d.name, d.split, d.file_type,
                   allow_patterns=tuple(d.allow_patterns), s3=d.s3)

    @property
    def field(self) -> str:
        """Config field prefix for messages: ``model`` or ``dataset``."""
        return self.kind

    @property
    def scheme(self) -> str:
        if local_source_path(self.uri) is not None:
            return "file"
        return urlparse(self.uri).scheme

    def identity(self) -> dict[str, Any]:
        """The fields that decide what lands on the volume (a change means a new download)."""
        ident = {"kind": self.kind, "uri": self.uri, "revision": self.revision, "name": self.name,
                 "split": self.split, "fileType": self.file_type, "allowPatterns": list(self.allow_patterns),
                 "ignorePatterns": list(self.ignore_patterns), "trustRemoteCode": self.trust_remote_code}
        if self.scheme == "s3":
            ident["endpointUrl"] = self.s3.endpoint_url
        return ident

    def source_key(self) -> str:
        """A stable digest of :meth:`identity`, stored as the manifest's ``sourceKey``."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return "v1:" + hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class Context:
    """Settings every provider gets: download tuning and where temporary files may go."""

    download: DownloadConfig
    workspace: Path  # same filesystem as the targets: renames are atomic

    @property
    def tmp_dir(self) -> Path:
        return self.workspace / TMP_DIR_NAME


class Provider(ABC):
    """A source of models/datasets, chosen by URI scheme.

    Subclasses set ``schemes`` and implement :meth:`fetch`. A provider whose data is
    already on the volume (a local path) overrides :meth:`in_place` instead and is never
    asked to fetch.
    """

    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, request: Request, ctx: Context) -> None:
        self.request = request
        self.ctx = ctx
        # The manifest an older, different request left in the target (files worth keeping), or None.
        self.previous: dict[str, Any] | None = None

    def in_place(self) -> Path | None:
        """The verified local path to use as is, or None when :meth:`fetch` must run."""
        return None

    @abstractmethod
    def fetch(self, target: Path) -> dict[str, Any]:
        """Download into ``target`` (resuming what a previous run left) and return manifest fields.

        Must return at least ``files`` (``[{"path", "size", and "sha256"|"etag"|"gitOid"}]``,
        paths relative to ``target``) and ``revision`` (resolved commit / content digest).
        Datasets also return ``layout``, ``fileType`` and ``splits``. Files are written under
        temporary names and renamed when complete; the caller writes the manifest last.
        Raise ``UserError`` for bad input and let transient errors go through
        :class:`~llm_finetune.core.retry.RetryPolicy` (``ExternalError`` at the end).
        """

    def describe(self) -> str:
        return self.request.uri


# ---------------------------------------------------------------------------
# Paths: nothing may escape the target
# ---------------------------------------------------------------------------
def safe_relpath(name: str, *, source: str) -> str:
    """Check that ``name`` (an S3 key suffix / repo path) is a plain relative path inside the target.

    Refuses absolute paths, ``..``/``.`` components, backslashes, empty components, NUL and
    names the initializer reserves for itself.
    """
    bad = (not name or name.startswith("/") or "\\" in name or "\0" in name
           or any(part in ("", ".", "..") for part in name.split("/"))
           or name.split("/")[0].startswith(RESERVED_PREFIX) or name.endswith(PART_SUFFIX))
    if bad:
        raise UserError(f"refusing {name!r} from {source}: the path would escape the target directory "
                        "or clash with the initializer's own files",
                        hint="rename the object/file, or exclude it with allowPatterns/ignorePatterns")
    return name


def ensure_parent(target: Path, rel: str) -> Path:
    """Create ``target/rel``'s parent folders (``rel`` checked by :func:`safe_relpath`) without
    following symlinks: a symlinked folder inside ``target`` is refused."""
    current = target
    for part in rel.split("/")[:-1]:
        current = current / part
        if current.is_symlink():
            raise UserError(f"refusing to write {rel!r}: {current} is a symlink (it could lead outside {target})",
                            hint=f"remove the symlink from {target}")
        current.mkdir(exist_ok=True)
    return target / rel


def matches(path: str, allow: tuple[str, ...] | list[str], ignore: tuple[str, ...] | list[str]) -> bool:
    """Glob filtering with huggingface_hub's rules (fnmatch; a pattern ending in '/' means the folder)."""

    def norm(p: str) -> str:
        return p + "*" if p.endswith("/") else p

    if allow and not any(fnmatchcase(path, norm(p)) for p in allow):
        return False
    return not any(fnmatchcase(path, norm(p)) for p in ignore)


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.pth")


def is_file_of_size(path: Path, size: int) -> bool:
    """A regular file (not a symlink) of ``size`` bytes at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def check_model_files(paths: list[str], *, where: str, field: str = "model") -> None:
    """A transformers model needs ``config.json`` and weights; refuse early with the fix otherwise."""
    if "config.json" not in paths:
        raise UserError(f"{where} has no config.json: it is not a transformers model folder", field=f"{field}.uri",
                        hint="point it at a folder written by save_pretrained (or fix model.allowPatterns)")
    if not any(fnmatchcase(p, w) for p in paths for w in WEIGHT_PATTERNS):
        raise UserError(f"{where} has no weights (*.safetensors or *.bin)", field=f"{field}.uri",
                        hint="upload the weights, or fix model.allowPatterns/ignorePatterns")


def prune(target: Path, keep: set[str]) -> int:
    """Remove files under ``target`` that are not in ``keep`` (stale files of an older request, ``.part``)."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(target, topdown=False):
        rel_dir = os.path.relpath(dirpath, target)
        if rel_dir == ".cache" or rel_dir.startswith(".cache" + os.sep):
            continue  # huggingface_hub's resume metadata
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            if rel in keep or rel == MANIFEST_NAME:
                continue
            os.unlink(os.path.join(dirpath, name))
            removed += 1
        if rel_dir != "." and not os.listdir(dirpath):
            os.rmdir(dirpath)
    return removed


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------
class Progress:
    """Thread-safe byte/file counters feeding a :class:`~llm_finetune.core.log.RateReporter`."""

    def __init__(self, what: str, total_bytes: int, total_files: int, *, interval: float = 10.0) -> None:
        self.total_files = total_files
        self.files = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self.reporter = RateReporter(log, what, total_bytes or None, interval=interval)

    def _extra(self) -> str:
        return f"files {self.files}/{self.total_files}"

    def add(self, nbytes: int = 0, files: int = 0) -> None:
        with self._lock:
            self.bytes += nbytes
            self.files += files
            self.reporter.update(self.bytes, self._extra())

    def grow(self, nbytes: int) -> None:
        """``nbytes`` more to transfer than planned (a file fetched again)."""
        with self._lock:
            self.reporter.total = (self.reporter.total or 0) + nbytes

    def finish(self) -> None:
        with self._lock:
            self.reporter.done = self.bytes
            self.reporter.finish(self._extra())


def summarize(files: list[dict[str, Any]]) -> str:
    return f"{len(files)} files, {format_bytes(sum(int(f.get('size', 0)) for f in files))}"


