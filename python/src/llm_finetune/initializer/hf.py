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
* Verified and resumed by byte range (:mod:`.ranged`, as S3 objects): each file is fetched
  from ``resolve/<commit>/<path>`` by ranged GETs through huggingface_hub's HTTP session
  (``download.concurrency`` at once) into ``<path>.part``, recorded in the journal as the bytes
  land, checked against the digest the Hub lists for it (LFS sha256, or the git blob id of a
  small file) and only then renamed into place. A killed download continues from the ranges
  it recorded (huggingface_hub itself starts a killed file over). A file already in the
  target is kept only when it hashes to that digest (a rerun after a kill, or another
  revision sharing files). A mismatch is fetched again twice, then it is an error naming the
  file. Files the Hub serves only through Xet (over 50 GB) cannot be fetched this way.
* The token comes from ``HF_TOKEN`` only.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

from ..core.digest import Checksum
from ..core.errors import FinetuneError, UserError
from ..core.hub import classify_error, hf_token, parse_hf_uri
from ..core.layout import DEFAULT_DATA_PATTERNS, layout_of_names
from ..core.log import quiet_library_loggers
from ..core.retry import RetryPolicy, describe
from ..core.volume import sha256_file, walk_files
from .base import Provider, check_model_files, ensure_parent, safe_relpath
from .ranged import CHUNK, IncompleteDownload, RemoteFile, fetch_missing

log = logging.getLogger(__name__)

DEFAULT_MODEL_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.tiktoken", "*.txt")


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
        dl = self.ctx.download
        files = [RemoteFile(f.path, f.path, f.size, hub_checksum(f).value, target / f.path, expect=hub_checksum(f),
                            learned=True) for f in selected]
        policy = RetryPolicy(dl.retries, dl.retry_backoff_seconds, f"{self.request.field}.uri",
                             cancelled=threading.Event())
        fetch_missing(HubSource(self, sha), files, target, None, uri=self.request.uri, kind=self.request.kind,
                      download=dl, policy=policy)

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


class HubSource:
    """Files of one commit of a Hub repo, as a :class:`~.ranged.Source` (their digests are known up front)."""

    damaged_hint = "the file on the Hub (or on the mirror HF_ENDPOINT points at) is damaged"

    def __init__(self, provider: HubProvider, sha: str) -> None:
        from huggingface_hub import get_session
        from huggingface_hub.utils import build_hf_headers

        self.provider, self.sha = provider, sha
        self.uri, self.field = provider.request.uri, provider.request.field
        self.classify = provider._classify
        self.session = get_session()
        # identity: a CDN that compresses answers a Range request with the whole (gzipped) body
        self.headers = {**build_hf_headers(token=hf_token()), "Accept-Encoding": "identity"}
        self._open: set[Any] = set()
        self._lock = threading.Lock()

    def describe(self, f: RemoteFile) -> str:
        return f"{self.uri}@{self.sha[:12]}/{f.key}"

    def open(self, f: RemoteFile, start: int, end: int, *, learn: bool):
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import hf_raise_for_status

        headers = dict(self.headers)
        ranged = (start, end) != (0, f.size)
        if ranged:
            headers["Range"] = f"bytes={start}-{end - 1}"
        url = hf_hub_url(self.provider.repo_id, f.key, repo_type=self.provider.repo_type, revision=self.sha)
        response = self.session.send(self.session.build_request("GET", url, headers=headers), stream=True,
                                     follow_redirects=True)
        if response.status_code >= 400:
            response.read()
            response.close()
            hf_raise_for_status(response)
        if ranged and response.status_code != 206:
            response.close()
            raise IncompleteDownload(f"the server answered {response.status_code} to a Range request")
        with self._lock:
            self._open.add(response)
        return response

    def chunks(self, body) -> Iterator[bytes]:
        try:
            yield from body.iter_raw(CHUNK)
        finally:
            body.close()
            with self._lock:
                self._open.discard(body)

    def abort(self) -> None:
        with self._lock:
            bodies = list(self._open)
        for body in bodies:
            try:
                body.close()
            except Exception:  # noqa: BLE001 - closed already, or closing from another thread failed
                pass

    def checksum(self, f: RemoteFile, headers: Any) -> Checksum | None:
        return f.expect

    def learn(self, f: RemoteFile) -> Checksum | None:
        return f.expect

    def part_sizes(self, f: RemoteFile, n: int) -> tuple[int, ...]:
        raise AssertionError("Hub digests are whole-file digests")
