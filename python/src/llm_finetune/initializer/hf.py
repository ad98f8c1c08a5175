"""``hf://org/name``: models and datasets from the Hugging Face Hub (or a mirror via ``HF_ENDPOINT``).

* The revision (branch, tag or sha) is resolved to a commit first and everything is
  fetched at that commit, which the manifest records.
* Models: ``snapshot_download`` into the target with ``model.allowPatterns`` /
  ``ignorePatterns``; by default safetensors weights plus config/tokenizer files (``*.py``
  only with ``model.trustRemoteCode``), and ``*.bin`` only when the repo has no safetensors.
* Datasets without ``dataset.split``: the repo's data files (``layout: files``).
  With ``dataset.split`` (the v1 reference's behaviour): ``datasets.load_dataset(repo,
  name, split=..., revision=...)`` materialized with ``save_to_disk`` into a staging
  folder, then moved into place (``layout: save_to_disk``, one Dataset = ``train``).
* The token comes from ``HF_TOKEN`` only; huggingface_hub's own parallel downloads
  (``download.concurrency`` workers) and resume (``.cache/huggingface`` in the target) are used.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from ..core.errors import FinetuneError, UserError
from ..core.hub import classify_error, hf_token, parse_hf_uri
from ..core.layout import DEFAULT_DATA_PATTERNS, layout_of_names
from ..core.log import RateReporter, quiet_library_loggers
from ..core.retry import RetryPolicy, describe
from ..core.volume import sha256_file, walk_files
from .base import Provider, check_model_files, ensure_parent, safe_relpath

log = logging.getLogger("llm_finetune.initializer")

DEFAULT_MODEL_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.tiktoken", "*.txt")


class IncompleteDownload(ConnectionError):
    """A file on disk does not have the size the Hub listed (retried)."""


class HubProvider(Provider):
    schemes = ("hf",)

    @property
    def repo_id(self) -> str:
        return parse_hf_uri(self.request.uri, f"{self.request.field}.uri")

    @property
    def repo_type(self) -> str:
        return "model" if self.request.kind == "model" else "dataset"

    def _policy(self) -> RetryPolicy:
        return RetryPolicy(self.ctx.download.retries, self.ctx.download.retry_backoff_seconds,
                           f"{self.request.field}.uri")

    def _call(self, fn, what: str):
        return self._policy().call(fn, what=f"{what} {self.request.uri}", classify=self._classify)

    # -- fetch -------------------------------------------------------------------
    def fetch(self, target: Path) -> dict[str, Any]:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile
        from huggingface_hub.utils import filter_repo_objects

        req, repo_id = self.request, self.repo_id
        quiet_library_loggers()
        api = HfApi(token=hf_token())
        sha = self._call(lambda: api.repo_info(repo_id, repo_type=self.repo_type, revision=req.revision or None).sha,
                         "resolve revision of")
        log.info("%s: revision %r is commit %s", req.uri, req.revision or "main", sha)
        if req.kind == "dataset" and req.split:
            return self._materialize_split(sha, target)
        tree = self._call(lambda: [f for f in api.list_repo_tree(repo_id, recursive=True, revision=sha,
                                                                 repo_type=self.repo_type)
                                   if isinstance(f, RepoFile)], "list files of")
        allow, ignore = self.patterns([f.path for f in tree])
        selected = list(filter_repo_objects(tree, allow_patterns=allow, ignore_patterns=ignore, key=lambda f: f.path))
        if not selected:
            raise UserError(f"no file of {req.uri}@{sha[:12]} matches the allow/ignore patterns",
                            field=f"{req.field}.allowPatterns", hint="fix the patterns or clear them")
        for f in selected:
            safe_relpath(f.path, source=f"{req.uri}@{sha[:12]}")
            ensure_parent(target, f.path)
        paths = [f.path for f in selected]
        if req.kind == "model":
            check_model_files(paths, where=f"{req.uri}@{sha[:12]}", field="model")
        layout = layout_of_names(paths, file_type=req.file_type, where=req.uri) if req.kind == "dataset" else {}
        self._snapshot(sha, target, selected, allow, ignore)
        files = []
        for f in sorted(selected, key=lambda f: f.path):
            entry = {"path": f.path, "size": f.size}
            if f.lfs is not None:
                entry["sha256"] = f.lfs.sha256
            else:
                entry["gitOid"] = f.blob_id
            files.append(entry)
        return {"revision": sha, "files": files, **layout}

    def patterns(self, repo_paths: list[str]) -> tuple[list[str], list[str] | None]:
        """allow/ignore patterns: the config's, or the defaults (see the module docstring)."""
        req = self.request
        if req.allow_patterns:
            return list(req.allow_patterns), list(req.ignore_patterns) or None
        if req.kind == "dataset":
            return list(DEFAULT_DATA_PATTERNS), list(req.ignore_patterns) or None
        from fnmatch import fnmatchcase

        allow = list(DEFAULT_MODEL_PATTERNS)
        if req.trust_remote_code:
            allow.append("*.py")
        ignore = list(req.ignore_patterns) or ["original/*"]
        if not any(fnmatchcase(p, "*.safetensors") for p in repo_paths):
            allow.append("*.bin")
            log.info("%s has no *.safetensors: fetching *.bin weights", req.uri)
        elif any(p in ("model.safetensors", "model.safetensors.index.json") for p in repo_paths):
            ignore.append("consolidated*.safetensors")  # the same weights in another layout
        return allow, ignore

    def _snapshot(self, sha: str, target: Path, selected, allow, ignore) -> None:
        from huggingface_hub import snapshot_download

        total = sum(f.size for f in selected)
        _drop_unverified(target, selected)

        def attempt() -> None:
            snapshot_download(self.repo_id, repo_type=self.repo_type, revision=sha, local_dir=target,
                              cache_dir=self.ctx.tmp_dir / "hub-cache", allow_patterns=allow,
                              ignore_patterns=ignore, max_workers=max(1, self.ctx.download.concurrency),
                              token=hf_token())
            bad = [f.path for f in selected if not _has_size(target / f.path, f.size)]
            if bad:
                for p in bad:
                    (target / p).unlink(missing_ok=True)
                raise IncompleteDownload(f"{len(bad)} file(s) with the wrong size, e.g. {bad[0]}")

        with DirectoryProgress(f"{self.request.kind} {self.request.uri}", target, total, len(selected)):
            self._call(attempt, "download")

    def _materialize_split(self, sha: str, target: Path) -> dict[str, Any]:
        """The v1 reference's behaviour: ``load_dataset(split=...)`` then ``save_to_disk``."""
        import datasets

        req = self.request
        staging = self.ctx.tmp_dir / f"dataset-split-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)

        def attempt():
            return datasets.load_dataset(self.repo_id, req.name or None, split=req.split, revision=sha,
                                         cache_dir=str(self.ctx.tmp_dir / "datasets-cache"), token=hf_token())

        log.info("%s: materializing split %r%s", req.uri, req.split, f" of config {req.name!r}" if req.name else "")
        ds = self._call(attempt, f"load split {req.split!r} of")
        ds.save_to_disk(str(staging))
        log.info("%s: split %r has %d rows", req.uri, req.split, len(ds))
        replace_contents(staging, target)
        files = [{"path": p, "size": (target / p).stat().st_size, "sha256": sha256_file(target / p)}
                 for p in walk_files(target)]
        return {"revision": sha, "files": files, "layout": "save_to_disk", "fileType": "arrow",
                "splits": {"train": ["."]}, "materializedSplit": req.split}

    # -- errors ------------------------------------------------------------------
    def _classify(self, exc: BaseException) -> BaseException | None:
        req = self.request
        verdict = classify_error(exc, uri=req.uri, field=req.field, revision=req.revision)
        unexpected = verdict is not None and not isinstance(verdict, FinetuneError)
        if unexpected and req.kind == "dataset" and (type(verdict).__module__.startswith("datasets")
                                                      or isinstance(verdict, ValueError)):
            return UserError(f"cannot load {req.uri}: {describe(verdict)}",
                             field=f"{req.field}.split" if "split" in str(verdict).lower() else f"{req.field}.name",
                             hint="check dataset.name (config) and dataset.split against the dataset card")
        return verdict


def _drop_unverified(target: Path, selected) -> None:
    """Delete files in ``target`` that huggingface_hub's download metadata does not tie to the listed version.

    When a request fails, ``hf_hub_download(local_dir=...)`` falls back to any file already at
    the path ("defaulting to existing file"): a file left by another model or revision, or
    planted there, must not pass for this one.
    """
    try:
        from huggingface_hub._local_folder import read_download_metadata
    except ImportError:  # pragma: no cover - another huggingface_hub layout: trust nothing
        read_download_metadata = None
    for f in selected:
        path = target / f.path
        if not (path.exists() or path.is_symlink()):
            continue
        expected = f.lfs.sha256 if f.lfs is not None else f.blob_id
        meta = read_download_metadata(target, f.path) if read_download_metadata else None
        if meta is None or meta.etag != expected or not _has_size(path, f.size):
            path.unlink()


def _has_size(path: Path, size: int | None) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and (size is None or path.stat().st_size == size)
    except OSError:
        return False


def replace_contents(staging: Path, target: Path) -> None:
    """Make ``target`` hold exactly ``staging``'s entries (moved; works when ``target`` is a mount point)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in list(target.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in sorted(staging.iterdir()):
        shutil.move(str(entry), str(target / entry.name))
    staging.rmdir()


class DirectoryProgress:
    """Log progress of a download into ``root`` that a library runs, by watching bytes on disk."""

    def __init__(self, what: str, root: Path, total: int, files: int, *, interval: float = 10.0) -> None:
        self.root, self.files, self.interval = root, files, interval
        self.start_bytes = self._bytes()  # a resumed download counts only what it adds
        self.reporter = RateReporter(log, what, max(total - self.start_bytes, 0) or None, interval=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def _bytes(self) -> int:
        n = 0
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                try:
                    n += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return n

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.reporter.update(max(0, self._bytes() - self.start_bytes))

    def __enter__(self) -> "DirectoryProgress":
        self._thread.start()
        return self

    def __exit__(self, exc_type, *rest) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self.reporter.done = self.reporter.total or self.reporter.done
            self.reporter.finish(f"files {self.files}/{self.files}")
