"""``hf://org/name``: models and datasets from the Hugging Face Hub (or a mirror via ``HF_ENDPOINT``).

* The revision (branch, tag or sha) is resolved to a commit first and everything is
  fetched at that commit, which the manifest records.
* Models: the files matching ``model.allowPatterns`` / ``ignorePatterns``; by default
  safetensors weights plus config/tokenizer files (``*.py`` only with
  ``model.trustRemoteCode``), and ``*.bin`` only when the repo has no safetensors.
* Datasets without ``dataset.split``: the repo's data files (``layout: files``).
  With ``dataset.split`` (the v1 reference's ``load_dataset(repo, name, split=...)``): the
  repo's data files and its ``README.md`` (where configs are declared) at that commit, with
  the split and config recorded (``layout: snapshot``); the trainer selects them with
  ``datasets.load_dataset(<folder>, name, split=...)`` (:func:`..core.layout.load_dataset_dict`),
  so the initializer image carries no ``datasets``/pyarrow/pandas and the files are verified
  like any other.
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
import threading
from pathlib import Path
from typing import Any, Iterator

from ..core.digest import Checksum
from ..core.errors import UserError
from ..core.hub import classify_error, hf_token, parse_hf_uri
from ..core.layout import DEFAULT_DATA_PATTERNS, layout_of_names, snapshot_layout
from ..core.log import quiet_library_loggers
from ..core.retry import RetryPolicy, describe
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
        if req.kind == "dataset" and req.split:
            layout = snapshot_layout(layout, split=req.split, name=req.name)
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
        if req.kind == "dataset":  # with a split also README.md: its YAML header declares the configs
            return list(DEFAULT_DATA_PATTERNS) + (["README.md"] if req.split else []), list(req.ignore_patterns) or None
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

    # -- errors ------------------------------------------------------------------
    def _classify(self, exc: BaseException) -> BaseException | None:
        req = self.request
        return classify_error(exc, uri=req.uri, field=req.field, revision=req.revision)


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
