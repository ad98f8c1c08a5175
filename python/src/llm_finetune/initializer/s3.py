"""``s3://bucket/prefix``: S3 and compatible servers (MinIO, Ceph, SeaweedFS).

* Lists the prefix (paginated). ``s3://b/models/tiny`` means the "folder" ``models/tiny/``;
  when no key lies under it and the key ``models/tiny`` itself exists, that single object is
  fetched (the v1 reference's ``file_key``). Keys keep their path relative to the prefix.
* Parallel: up to ``download.concurrency`` GETs at once; objects above
  ``download.multipartThresholdMiB`` are fetched as parallel ranged GETs into one file.
  Bodies are streamed to disk in 1 MiB chunks, never held whole in memory.
* Atomic and resumable: each object is written to ``<name>.part`` and renamed when its size
  checks out; a journal (``.llm-finetune-journal.jsonl``) records finished objects with
  their ETag, so a rerun after a kill keeps them and fetches the rest.
* Safe: keys that would escape the target (``..``, absolute, backslashes) are refused, and
  writes never follow symlinks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import FinetuneError, UserError
from ..core.layout import layout_of_names
from ..core.log import format_bytes
from ..core.retry import RetryPolicy
from ..core.s3client import classify_error, make_client, parse_s3_uri
from .base import (JOURNAL_NAME, PART_SUFFIX, Progress, Provider, check_model_files, ensure_parent, matches,
                   safe_relpath)

log = logging.getLogger("llm_finetune.initializer")

CHUNK = 1 << 20
MIN_PART = 1 << 20
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class IncompleteDownload(ConnectionError):
    """The body ended before the expected number of bytes (retried)."""


@dataclass
class S3Object:
    key: str
    rel: str
    size: int
    etag: str
    # download state
    path: Path = field(default=Path())
    parts_left: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Journal:
    """Append-only record of finished files (path, size, etag); a torn last line is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh = None

    def load(self) -> dict[str, tuple[int, str]]:
        done: dict[str, tuple[int, str]] = {}
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        done[rec["path"]] = (int(rec["size"]), str(rec["etag"]))
                    except (ValueError, KeyError, TypeError):
                        continue
        except FileNotFoundError:
            pass
        return done

    def add(self, rel: str, size: int, etag: str) -> None:
        line = json.dumps({"path": rel, "size": size, "etag": etag}) + "\n"
        with self._lock:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()  # in the page cache: survives a killed process

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class S3Provider(Provider):
    schemes = ("s3",)
    page_size = 1000  # keys per listing request (the S3 maximum)

    # -- listing -----------------------------------------------------------------
    def _classify(self, exc: BaseException) -> BaseException | None:
        return classify_error(exc, uri=self.request.uri, field=self.request.field)

    def list_objects(self, client, bucket: str, prefix: str, policy: RetryPolicy) -> list[S3Object]:
        folder = prefix if prefix == "" or prefix.endswith("/") else prefix + "/"

        def listing() -> list[dict[str, Any]]:
            out = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix,
                                                                        PaginationConfig={"PageSize": self.page_size}):
                out.extend(page.get("Contents", []))
            return out

        contents = policy.call(listing, what=f"LIST {self.request.uri}", classify=self._classify)
        under, exact = [], None
        for obj in contents:
            key = obj["Key"]
            if key == prefix and prefix and not prefix.endswith("/"):
                exact = obj
            elif key.startswith(folder) and not key.endswith("/"):
                under.append((obj, key[len(folder):]))
        if not under and exact is not None:
            under = [(exact, prefix.rsplit("/", 1)[-1])]
        if not under:
            raise UserError(f"no objects at {self.request.uri}", field=f"{self.request.field}.uri",
                            hint="check the bucket and prefix (case-sensitive) and that the upload finished")
        req = self.request
        objects = []
        for obj, rel in under:
            if not matches(rel, req.allow_patterns, req.ignore_patterns):
                continue
            safe_relpath(rel, source=f"s3://{bucket}/{obj['Key']}")
            objects.append(S3Object(obj["Key"], rel, int(obj["Size"]), str(obj.get("ETag", "")).strip('"')))
        if not objects:
            raise UserError(f"no object under {req.uri} matches the allow/ignore patterns",
                            field=f"{req.field}.allowPatterns", hint="fix the patterns or clear them")
        return objects

    # -- download ----------------------------------------------------------------
    def fetch(self, target: Path) -> dict[str, Any]:
        req, dl = self.request, self.ctx.download
        bucket, prefix = parse_s3_uri(req.uri, f"{req.field}.uri")
        target.mkdir(parents=True, exist_ok=True)
        concurrency = max(1, dl.concurrency)
        client = make_client(req.s3, max_pool_connections=concurrency + 2, retries=0)
        cancelled = threading.Event()
        policy = RetryPolicy(dl.retries, dl.retry_backoff_seconds, f"{req.field}.uri", cancelled=cancelled)
        objects = self.list_objects(client, bucket, prefix, policy)
        rels = [o.rel for o in objects]
        if req.kind == "model":
            check_model_files(rels, where=req.uri)
            layout = {}
        else:
            layout = layout_of_names(rels, file_type=req.file_type, where=req.uri)

        journal = Journal(target / JOURNAL_NAME)
        known = journal.load()
        for f in (self.previous or {}).get("files", []):  # a complete manifest of an older request
            if "etag" in f:
                known.setdefault(f["path"], (int(f["size"]), f["etag"]))
        todo = []
        made: set[str] = set()
        for obj in objects:
            parent = obj.rel.rpartition("/")[0]
            obj.path = target / obj.rel if parent in made else ensure_parent(target, obj.rel)
            made.add(parent)
            if known.get(obj.rel) == (obj.size, obj.etag) and _is_file_of_size(obj.path, obj.size):
                continue
            todo.append(obj)
        total = sum(o.size for o in objects)
        left = sum(o.size for o in todo)
        log.info("%s: %d objects, %s; %d already on the volume, fetching %d (%s) with %d parallel downloads",
                 req.uri, len(objects), format_bytes(total), len(objects) - len(todo), len(todo),
                 format_bytes(left), concurrency)
        transferred = 0
        if todo:
            progress = Progress(f"{req.kind} {req.uri}", left, len(todo))
            try:
                self._download_all(client, bucket, todo, journal, policy, progress, concurrency)
            finally:
                journal.close()
            progress.finish()
            transferred = progress.bytes
        digest = hashlib.sha256("\n".join(f"{o.rel} {o.etag}" for o in sorted(objects, key=lambda o: o.rel)).encode())
        return {
            "revision": "etags:" + digest.hexdigest()[:32],
            "files": [{"path": o.rel, "size": o.size, "etag": o.etag} for o in sorted(objects, key=lambda o: o.rel)],
            "transferredBytes": transferred,
            **layout,
        }

    def _download_all(self, client, bucket: str, todo: list[S3Object], journal: Journal, policy: RetryPolicy,
                      progress: Progress, concurrency: int) -> None:
        threshold = max(MIN_PART, self.ctx.download.multipart_threshold_mib << 20)
        tasks = []
        for obj in todo:
            part = Path(str(obj.path) + PART_SUFFIX)
            part.unlink(missing_ok=True)  # a stale partial file, or a planted symlink (never followed)
            if obj.size > threshold:
                part_size = max(MIN_PART, min(threshold, -(-obj.size // concurrency)))
                ranges = [(s, min(s + part_size, obj.size) - 1) for s in range(0, obj.size, part_size)]
                _preallocate(part, obj.size, policy)
                obj.parts_left = len(ranges)
                tasks += [(obj, part, r) for r in ranges]
            else:
                tasks.append((obj, part, None))
        reader = ObjectReader(client)

        def run(task):
            obj, part, rng = task
            if policy.cancelled.is_set():
                return
            done = self._get(reader, bucket, obj, part, rng, policy, progress)
            if done:
                _fsync_path(part)
                os.replace(part, obj.path)
                journal.add(obj.rel, obj.size, obj.etag)
                progress.add(files=1)

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3-get") as pool:
            futures = [pool.submit(run, t) for t in tasks]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in finished if f.exception() is not None]
            if errors:
                policy.cancelled.set()
                for f in futures:
                    f.cancel()
                wait(futures)
                # Report the root cause: a permanent error beats "cancelled" follow-ups.
                errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
                errors.sort(key=lambda e: ("cancelled" in str(e), not isinstance(e, FinetuneError)))
                raise errors[0]

    def _get(self, reader: "ObjectReader", bucket: str, obj: S3Object, part: Path, rng: tuple[int, int] | None,
             policy: RetryPolicy, progress: Progress) -> bool:
        """Stream one object (``rng`` None: whole, into a fresh ``part``) or one byte range of it
        (into its place in the preallocated ``part``). True when the object is complete."""
        start, length = (0, obj.size) if rng is None else (rng[0], rng[1] - rng[0] + 1)
        headers = {"If-Match": f'"{obj.etag}"'} if obj.etag else {}  # the listed version, or 412
        if rng is not None:
            headers["Range"] = f"bytes={rng[0]}-{rng[1]}"

        def attempt() -> None:
            got = 0
            try:
                body = reader.open(bucket, obj.key, headers)
                fd = os.open(part, _OPEN_FLAGS | (os.O_TRUNC if rng is None else 0), 0o644)
                try:
                    for chunk in reader.chunks(body):
                        _write_all(fd, chunk, start + got)
                        got += len(chunk)
                        progress.add(len(chunk))
                finally:
                    os.close(fd)
                if got != length:
                    raise IncompleteDownload(f"got {got} of {length} bytes")
            except BaseException:
                progress.add(-got)
                raise

        what = f"GET s3://{bucket}/{obj.key}" + ("" if rng is None else f" bytes {rng[0]}-{rng[1]}")
        policy.call(attempt, what=what, classify=self._classify)
        if rng is None:
            return True
        with obj.lock:
            obj.parts_left -= 1
            return obj.parts_left == 0


class ObjectReader:
    """GETs object bodies by presigned URL, sent through the client's own HTTP session.

    For a small object botocore spends most of its CPU in its request/response pipeline
    (events, serialization, parsing): a presigned URL (public API: addressing style, region,
    credentials with IRSA refresh) sent through ``client._endpoint.http_session`` (the same
    connection pool, CA bundle, proxies and timeouts) costs about half. Listing and errors
    still go through botocore. The URL carries a signature (and a session token), so it
    never appears in a message: errors are re-raised with the query string cut off.
    """

    def __init__(self, client) -> None:
        self.client = client
        self.http = client._endpoint.http_session

    def open(self, bucket: str, key: str, headers: dict[str, str]):
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import ClientError

        url = self.client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                 ExpiresIn=3600)
        request = AWSRequest(method="GET", url=url, headers=headers).prepare()
        request.stream_output = True
        try:
            response = self.http.send(request)
        except Exception as exc:  # noqa: BLE001 - re-raised without the signed URL
            raise TransferError(_without_query(exc)) from None
        if response.status_code >= 300:
            text = response.raw.read(65536).decode("utf-8", "replace")
            response.raw.release_conn()
            code = _xml_field(text, "Code") or str(response.status_code)
            raise ClientError({"Error": {"Code": code, "Message": _xml_field(text, "Message")},
                               "ResponseMetadata": {"HTTPStatusCode": response.status_code}}, "GetObject")
        return response.raw

    @staticmethod
    def chunks(body):
        """The body in chunks of up to 1 MiB; a broken stream raises TransferError (retried)."""
        stream = body.stream(CHUNK, decode_content=False)
        try:
            while True:
                try:
                    chunk = next(stream)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - urllib3 read errors
                    raise TransferError(_without_query(exc)) from None
                yield chunk
        except BaseException:
            body.close()  # a half-read connection is not reused
            raise
        body.release_conn()


class TransferError(ConnectionError):
    """A GET failed on the wire (retried); the message has no signed URL."""


def _without_query(exc: BaseException) -> str:
    return re.sub(r"\?[^\s\"'<>]*", "?...", f"{type(exc).__name__}: {exc}")


def _xml_field(text: str, name: str) -> str:
    m = re.search(rf"<{name}>([^<]*)</{name}>", text)
    return m.group(1) if m else ""


def _is_file_of_size(path: Path, size: int) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def _preallocate(part: Path, size: int, policy: RetryPolicy) -> None:
    """Create ``part`` at its final size (fails early with ENOSPC when the volume is too small)."""

    def create() -> None:
        fd = os.open(part, _OPEN_FLAGS | os.O_TRUNC, 0o644)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate
                    os.ftruncate(fd, size)
                else:
                    raise
        finally:
            os.close(fd)

    policy.call(create, what=f"{part}", classify=lambda exc: exc)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
