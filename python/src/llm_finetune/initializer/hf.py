"""``hf://org/name``: models and datasets from the Hugging Face Hub (or a mirror via ``HF_ENDPOINT``).

* The revision (branch, tag or sha) is resolved to a commit first and everything is
  fetched at that commit, which the manifest records.
* Models: the files matching ``model.allowPatterns`` / ``ignorePatterns``; by default
  safetensors weights plus config/tokenizer files (``*.py`` only with
  ``model.trustRemoteCode``), and ``*.bin`` only when the repo has no safetensors.
* Datasets without ``dataset.split``: the repo's data files (``layout: files``).
  With ``dataset.split`` (the v1 reference's behaviour): ``datasets.load_dataset(repo,
  name, split=..., revision=...)`` materialized with ``save_to_disk`` into a staging
  folder, then moved into place (``layout: save_to_disk``, one Dataset = ``train``).
* Verified: each file is fetched with ``hf_hub_download`` into a staging folder on the same
  volume (``download.concurrency`` at once; huggingface_hub resumes a partial file from its
  ``.incomplete`` copy with a Range request), checked against the digest the Hub lists for it
  (LFS sha256, or the git blob id of a small file) and only then moved into the target. A
  file already in the target is kept only when it hashes to that digest (a rerun after a kill,
  or another revision sharing files). A mismatch is fetched again twice, then it is an error
  naming the file.
* The token comes from ``HF_TOKEN`` only.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from ..core.digest import Checksum, mismatch
from ..core.errors import FinetuneError, UserError
from ..core.hub import classify_error, hf_token, parse_hf_uri
from ..core.layout import DEFAULT_DATA_PATTERNS, layout_of_names
from ..core.log import RateReporter, quiet_library_loggers
from ..core.retry import RetryPolicy, describe
from ..core.volume import sha256_file, walk_files
from .base import Provider, check_model_files, ensure_parent, is_file_of_size, safe_relpath

log = logging.getLogger("llm_finetune.initializer")

DEFAULT_MODEL_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.tiktoken", "*.txt")
VERIFY_ATTEMPTS = 3  # a file that does not match its digest is fetched again twice, then it is an error


def hub_checksum(f) -> Checksum:
    """What the Hub lists for a file of the tree: its LFS sha256, or its git blob id."""
    if f.lfs is not None:
        return Checksum("sha256", f.lfs.sha256, "LFS sha256")
    return Checksum("git-sha1", f.blob_id, "git blob id")


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
        self._download(sha, target, selected)
        files = []
        for f in sorted(selected, key=lambda f: f.path):
            entry = {"path": f.path, "size": f.size, "checksum": hub_checksum(f).as_json()}
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

    def _download(self, sha: str, target: Path, selected) -> None:
        """Fetch the selected files that are not verified in ``target`` yet (see the module doc)."""
        staging = self.ctx.tmp_dir / f"hub-{self.request.kind}"
        todo = [f for f in selected if not self._verified(target, f)]
        log.info("%s: %d files verified on the volume, fetching %d", self.request.uri, len(selected) - len(todo),
                 len(todo))
        if not todo:
            return
        cancelled = threading.Event()
        pool = ThreadPoolExecutor(max(1, self.ctx.download.concurrency), thread_name_prefix="hf-get")
        progress = DirectoryProgress(f"{self.request.kind} {self.request.uri}", [staging, target],
                                     sum(f.size for f in todo), len(todo))
        try:
            with progress:
                futures = [pool.submit(self._fetch_file, sha, f, staging, target, cancelled) for f in todo]
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f.exception() for f in done if f.exception() is not None]
                if failed:
                    raise failed[0]
        finally:  # a failure or a signal: the other downloads stop at their next file
            cancelled.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _verified(self, target: Path, f) -> bool:
        """Whether ``target/f.path`` is this file (its digest is the Hub's); a damaged or other file is removed."""
        path = target / f.path
        if not is_file_of_size(path, f.size):
            if path.exists() or path.is_symlink():
                path.unlink()
            return False
        expect = hub_checksum(f)
        bad = mismatch(path, expect, f.size)
        if bad is not None:
            log.warning("%s on the volume does not match its %s (%s, the file has %s): fetching it again", f.path,
                        expect.source, expect.value, bad)
            path.unlink()
        return bad is None

    def _fetch_file(self, sha: str, f, staging: Path, target: Path, cancelled: threading.Event) -> None:
        from huggingface_hub import hf_hub_download

        expect = hub_checksum(f)
        for attempt in range(1, VERIFY_ATTEMPTS + 1):
            if cancelled.is_set():
                return
            path = Path(self._call(lambda: hf_hub_download(self.repo_id, f.path, repo_type=self.repo_type,
                                                           revision=sha, local_dir=staging, token=hf_token()),
                                   f"download {f.path} of"))
            bad = mismatch(path, expect, f.size)
            if bad is None:
                os.replace(path, target / f.path)
                return
            path.unlink()
            if attempt < VERIFY_ATTEMPTS:
                log.warning("%s: %s says %s, the downloaded bytes hash to %s; fetching it again (%d/%d)", f.path,
                            expect.source, expect.value, bad, attempt, VERIFY_ATTEMPTS - 1)
        raise UserError(f"{f.path} of {self.request.uri}@{sha[:12]} does not match its {expect.source} after "
                        f"{VERIFY_ATTEMPTS} downloads: the Hub lists {expect.value}, the downloaded bytes hash to {bad}",
                        field=f"{self.request.field}.uri",
                        hint="the file on the Hub (or on the mirror HF_ENDPOINT points at) is damaged")

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
    """Log progress of a download that a library runs into ``roots``, by watching bytes on disk."""

    def __init__(self, what: str, roots: list[Path], total: int, files: int, *, interval: float = 10.0) -> None:
        self.roots, self.files, self.interval = roots, files, interval
        self.start_bytes = self._bytes()  # a resumed download counts only what it adds
        self.reporter = RateReporter(log, what, max(total - self.start_bytes, 0) or None, interval=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def _bytes(self) -> int:
        n = 0
        for root in self.roots:
            for dirpath, _, names in os.walk(root):
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
