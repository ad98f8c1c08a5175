"""Fetching S3 objects: parallel ranged GETs of the missing bytes, verified, renamed into place.

* **What to verify against** (:func:`expected_checksum`): an ``x-amz-checksum-sha256``,
  ``-sha1`` or ``-crc32`` value (the uploading client computed it), else the ETag when it is
  an MD5 (not for SSE-KMS / SSE-C objects, whose ETag is not a digest of the content), else
  nothing (only the size is checked; a warning says so). A multipart ETag or composite
  checksum (``-N``) is recomputed from the parts: the part size comes from ``HEAD
  ?partNumber=1`` (every part but the last has it, as every upload tool does); if the result
  differs, each part's size is asked for and the file hashed again before it counts as a
  mismatch. An object fetched in one GET takes its checksum headers from that GET
  (``x-amz-checksum-mode: ENABLED``); others cost one HEAD (two when multipart).
* **Ranged resume**: an object is written in place into ``<name>.part`` by spans of up to
  ``download.multipartThresholdMiB`` (whole hashed parts when they are not much larger), in
  parallel; every 256 KiB written is recorded in the journal (:mod:`.journal`). A killed run
  leaves ``.part`` and the journal: the next one keeps the recorded ranges, hashes the
  complete parts again (a changed byte is fetched again) and GETs only what is missing,
  with ``If-Match`` on the listed ETag (412: the object changed). A broken stream is retried
  from where it broke.
* **Verification**: parts are hashed as they stream in (parts a span starts inside, from
  disk at the end); the combined value must equal the source's before ``os.replace`` puts
  the file into place. A mismatch is fetched again from zero (twice), then it is a
  ``UserError`` naming the key, the expected and the actual value.
* **Stopping**: :meth:`Engine.abort` (SIGTERM, a failure elsewhere) closes the connections
  in flight, so the threads stop within a chunk; what they wrote is recorded.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.digest import Checksum, Hasher, from_base64, hash_range, new_hash
from ..core.errors import FinetuneError, UserError
from ..core.retry import RetryPolicy
from .base import PART_SUFFIX, Progress, is_file_of_size
from .journal import Journal, Ranges, merge, missing

log = logging.getLogger("llm_finetune.initializer")

CHUNK = 256 << 10  # read size, and what a killed process may lose per connection
SYNC_BYTES = 64 << 20  # fdatasync + journal fsync at least this often per span
MIN_SPAN = 1 << 20
VERIFY_ATTEMPTS = 3  # a file that does not match its checksum is fetched again twice, then it is an error
_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")
_KMS = ("aws:kms", "aws:kms:dsse")


def expected_checksum(etag: str, headers: Any) -> Checksum | None:
    """What to verify an object against, from its ETag and the headers of a HEAD/GET (see the module doc)."""
    h = {str(k).lower(): str(v) for k, v in dict(headers).items()}
    for alg in ("sha256", "sha1", "crc32"):
        value = h.get(f"x-amz-checksum-{alg}")
        if value:
            return Checksum(alg, from_base64(value), f"x-amz-checksum-{alg}")
    encrypted = h.get("x-amz-server-side-encryption") in _KMS or "x-amz-server-side-encryption-customer-algorithm" in h
    if not encrypted and _MD5_ETAG.match(etag):
        return Checksum("md5", etag, "ETag")
    return None


class IncompleteDownload(ConnectionError):
    """The body ended before (or went past) the bytes asked for (retried)."""


class TransferError(ConnectionError):
    """A GET failed on the wire (retried); the message has no signed URL."""


@dataclass
class S3Object:
    key: str
    rel: str
    size: int
    etag: str
    path: Path = field(default=Path())
    expect: Checksum | None = None
    learned: bool = False  # expect is known (None then means: the source publishes nothing usable)
    have: Ranges = field(default_factory=list)  # bytes of .part written (journaled)
    digests: dict[int, bytes] = field(default_factory=dict)  # hashed part index -> digest
    spans_left: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def part(self) -> Path:
        return Path(str(self.path) + PART_SUFFIX)

    def bounds(self) -> list[tuple[int, int]]:
        return self.expect.bounds(self.size) if self.expect is not None else [(0, self.size)]


class ChecksumMismatch(Exception):
    def __init__(self, obj: S3Object, got: str):
        self.obj, self.got = obj, got
        assert obj.expect is not None
        super().__init__(f"{obj.key}: {obj.expect.source} says {obj.expect.value}, the downloaded bytes hash to {got}")


class ObjectReader:
    """GETs object bodies by presigned URL, sent through the client's own HTTP session.

    For a small object botocore spends most of its CPU in its request/response pipeline
    (events, serialization, parsing): a presigned URL (public API: addressing style, region,
    credentials with IRSA refresh) sent through ``client._endpoint.http_session`` (the same
    connection pool, CA bundle, proxies and timeouts) costs about half. Listing and errors
    still go through botocore. The URL carries a signature (and a session token), so it
    never appears in a message: errors are re-raised with the query string cut off.
    Responses in flight are tracked so that :meth:`abort` can close them from another thread.
    """

    def __init__(self, client) -> None:
        self.client = client
        self.http = client._endpoint.http_session
        self._open: set[Any] = set()
        self._lock = threading.Lock()
        self.aborted = False

    def open(self, bucket: str, key: str, headers: dict[str, str], *, checksum_mode: bool = False):
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import ClientError

        params = {"Bucket": bucket, "Key": key}
        if checksum_mode:  # the header is signed: it must be part of the presigned request
            params["ChecksumMode"] = "ENABLED"
            headers = {**headers, "x-amz-checksum-mode": "ENABLED"}
        url = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=3600)
        request = AWSRequest(method="GET", url=url, headers=headers).prepare()
        request.stream_output = True
        if self.aborted:
            raise TransferError("cancelled")
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
        with self._lock:
            self._open.add(response.raw)
        return response.raw

    def chunks(self, body):
        """The body in chunks of up to :data:`CHUNK`; a broken stream raises TransferError (retried)."""
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
        finally:
            with self._lock:
                self._open.discard(body)
        body.release_conn()

    def abort(self) -> None:
        """Close every response in flight: blocked reads end at once (TransferError)."""
        with self._lock:
            self.aborted = True
            bodies = list(self._open)
        for body in bodies:
            try:
                body.shutdown()  # urllib3 >= 2.3: shuts the socket down under a blocked read
            except Exception:  # noqa: BLE001 - already closed
                pass


def _without_query(exc: BaseException) -> str:
    return re.sub(r"\?[^\s\"'<>]*", "?...", f"{type(exc).__name__}: {exc}")


def _xml_field(text: str, name: str) -> str:
    m = re.search(rf"<{name}>([^<]*)</{name}>", text)
    return m.group(1) if m else ""


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _allocate(fd: int, size: int) -> None:
    """Give the file its final size up front: a volume too small fails now (ENOSPC), not midway."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate
            raise
        os.ftruncate(fd, size)


@dataclass
class Source:
    """Where the objects come from, and how the provider names things in messages."""

    client: Any
    bucket: str
    uri: str
    field: str
    classify: Callable[[BaseException], BaseException | None]


class Engine:
    """Downloads ``todo`` objects (see the module doc); ``run`` returns when all are verified in place."""

    def __init__(self, source: Source, journal: Journal, policy: RetryPolicy, progress: Progress, *,
                 concurrency: int, span: int) -> None:
        self.src, self.journal, self.policy, self.progress = source, journal, policy, progress
        self.concurrency, self.span = max(1, concurrency), max(MIN_SPAN, span)
        self.reader = ObjectReader(source.client)
        assert policy.cancelled is not None, "the engine cancels through the policy"

    def run(self, todo: list[S3Object]) -> None:
        for attempt in range(1, VERIFY_ATTEMPTS + 1):
            bad = self._round(todo)
            if not bad:
                return
            if attempt == VERIFY_ATTEMPTS:
                break
            for exc in bad:
                log.warning("%s; fetching it again (%d/%d)", exc, attempt, VERIFY_ATTEMPTS - 1)
                self._reset(exc.obj)
                self.progress.grow(exc.obj.size)
            todo = [exc.obj for exc in bad]
        exc = bad[0]
        assert exc.obj.expect is not None
        raise UserError(f"{exc.obj.key} does not match its {exc.obj.expect.source} after {VERIFY_ATTEMPTS} downloads: "
                        f"the source says {exc.obj.expect.value}, the downloaded bytes hash to {exc.got}",
                        field=f"{self.src.field}.uri",
                        hint="the object in the bucket is damaged, or its checksum is wrong: upload it again")

    def abort(self) -> None:
        self.policy.cancelled.set()
        self.reader.abort()

    # -- one pass ----------------------------------------------------------------------
    def _round(self, todo: list[S3Object]) -> list[ChecksumMismatch]:
        """Fetch and verify ``todo``; returns the objects whose bytes did not match."""
        bad: list[ChecksumMismatch] = []
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="s3-get")
        try:
            for obj in todo:
                if obj.size == 0 and not obj.learned:  # nothing to GET: the ETag is the MD5 of nothing
                    self._set_expect(obj, expected_checksum(obj.etag, {}))
            self._wait(pool, [pool.submit(self._learn, o) for o in todo if not o.learned and self._must_learn(o)])
            tasks = []
            for obj in todo:
                self._open_part(obj)
                spans = self._plan(obj) or [(obj.size, obj.size)]  # complete: only the verification is left
                obj.spans_left = len(spans)
                tasks += [(obj, a, b) for a, b in spans]
            self._wait(pool, [pool.submit(self._task, obj, a, b, bad) for obj, a, b in tasks])
        finally:
            pool.shutdown(wait=not self.policy.cancelled.is_set(), cancel_futures=True)
        return bad

    def _wait(self, pool: ThreadPoolExecutor, futures: list[Future]) -> None:
        """Wait for ``futures``; at the first error (or a signal in this thread) stop the others and raise it."""
        try:
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # SIGTERM/SIGINT: stop the transfers, keep what is written and recorded
            self._stop(futures)
            raise
        if any(f.exception() is not None for f in finished):
            self._stop(futures)
            errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            # Report the root cause: a permanent error beats "cancelled" follow-ups.
            errors.sort(key=lambda e: ("cancelled" in str(e), not isinstance(e, FinetuneError)))
            raise errors[0]

    def _stop(self, futures: list[Future]) -> None:
        self.abort()
        for f in futures:
            f.cancel()
        wait(futures, timeout=10)

    # -- what to verify against ----------------------------------------------------------
    def _must_learn(self, obj: S3Object) -> bool:
        """A HEAD is needed unless one GET of the whole object brings the headers."""
        return "-" in obj.etag or obj.size > self.span or bool(obj.have)

    def _head(self, obj: S3Object, **kw) -> dict[str, Any]:
        def head() -> dict[str, Any]:
            return self.src.client.head_object(Bucket=self.src.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"', **kw)

        return self.policy.call(head, what=f"HEAD s3://{self.src.bucket}/{obj.key}", classify=self.src.classify)

    def _learn(self, obj: S3Object) -> None:
        expect = expected_checksum(obj.etag, self._head(obj, ChecksumMode="ENABLED")["ResponseMetadata"]["HTTPHeaders"])
        if expect is not None and expect.parts_count:
            first = int(self._head(obj, PartNumber=1)["ContentLength"])
            n = expect.parts_count
            if first > 0 and (n - 1) * first < obj.size <= n * first:
                expect = expect.with_parts(part_size=first)  # checked when the file is verified
            else:
                expect = expect.with_parts(part_sizes=self._part_sizes(obj, n))
        self._set_expect(obj, expect)

    def _part_sizes(self, obj: S3Object, n: int) -> tuple[int, ...]:
        return tuple(int(self._head(obj, PartNumber=k)["ContentLength"]) for k in range(1, n + 1))

    def _set_expect(self, obj: S3Object, expect: Checksum | None) -> None:
        obj.expect, obj.learned = expect, True
        if expect is None:
            log.warning("%s: the source publishes no checksum this initializer can check (no MD5 ETag, no "
                        "x-amz-checksum-sha256/sha1/crc32): only its size is verified", obj.key)
        else:
            self.journal.record(obj.rel, obj.size, obj.etag, expect=expect.as_json())

    def _reset(self, obj: S3Object) -> None:
        obj.have, obj.digests = [], {}
        self.journal.record(obj.rel, obj.size, obj.etag, reset=True)
        if obj.expect is not None:
            self.journal.record(obj.rel, obj.size, obj.etag, expect=obj.expect.as_json())

    # -- planning ------------------------------------------------------------------------
    def _open_part(self, obj: S3Object) -> None:
        """``<name>.part`` at the object's size: kept when it holds recorded ranges, else new (preallocated)."""
        if obj.have and is_file_of_size(obj.part, obj.size):
            return
        obj.have, obj.digests = [], {}
        obj.part.unlink(missing_ok=True)  # a stale partial file, or a planted symlink (never followed)

        def create() -> None:
            fd = os.open(obj.part, _OPEN_FLAGS | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if obj.size:
                    _allocate(fd, obj.size)
            finally:
                os.close(fd)

        self.policy.call(create, what=str(obj.part), classify=lambda exc: exc)

    def _plan(self, obj: S3Object) -> list[tuple[int, int]]:
        """Spans over the missing bytes, cut at hashed-part boundaries: whole parts (hashed as they stream
        in) when parts are at most 4 spans long, else spans of the span size (those parts are hashed from disk)."""
        size = max(MIN_SPAN, min(self.span, -(-obj.size // self.concurrency)))
        bounds = obj.bounds()
        largest = max(b - a for a, b in bounds)
        if len(bounds) > 1 and largest <= 4 * size:
            size = max(size, largest)
        cuts = sorted({b for _, b in bounds})
        spans = []
        for a, b in missing(obj.have, obj.size):
            pos = a
            while pos < b:
                limit = min(b, pos + size)
                ends = [c for c in cuts if pos < c <= limit]
                end = ends[-1] if ends else limit
                spans.append((pos, end))
                pos = end
        return spans

    # -- one span ------------------------------------------------------------------------
    def _task(self, obj: S3Object, a: int, b: int, bad: list[ChecksumMismatch]) -> None:
        if self.policy.cancelled.is_set():
            return
        if a < b:
            self._fetch_span(obj, a, b)
        with obj.lock:
            obj.spans_left -= 1
            last = obj.spans_left == 0
        if last:
            try:
                self._finish(obj)
                self.progress.add(files=1)
            except ChecksumMismatch as exc:
                bad.append(exc)

    def _fetch_span(self, obj: S3Object, a: int, b: int) -> None:
        state = {"pos": a}
        hasher = PartHasher(obj, a, self.journal)
        fd = os.open(obj.part, _OPEN_FLAGS)
        what = f"GET s3://{self.src.bucket}/{obj.key}" + ("" if (a, b) == (0, obj.size) else f" bytes {a}-{b - 1}")
        try:
            self.policy.call(lambda: self._stream(obj, fd, a, b, state, hasher), what=what,
                             classify=self.src.classify)
            self.journal.sync(fd)
        finally:
            os.close(fd)
        with obj.lock:
            obj.have = merge(obj.have + [(a, b)])

    def _stream(self, obj: S3Object, fd: int, a: int, b: int, state: dict[str, int], hasher: "PartHasher") -> None:
        """One attempt: GET bytes ``[state["pos"], b)`` into ``fd``; a retry continues where this one broke."""
        pos = state["pos"]
        headers = {"If-Match": f'"{obj.etag}"'}  # the listed version, or 412
        if (pos, b) != (0, obj.size):
            headers["Range"] = f"bytes={pos}-{b - 1}"
        body = self.reader.open(self.src.bucket, obj.key, headers, checksum_mode=not obj.learned)
        if not obj.learned:
            self._set_expect(obj, expected_checksum(obj.etag, body.headers))
            hasher.restart()
        synced = pos
        for chunk in self.reader.chunks(body):
            if self.policy.cancelled.is_set():
                body.close()
                raise TransferError("cancelled")
            if pos + len(chunk) > b:
                raise IncompleteDownload(f"got more than the {b - a} bytes asked for")
            _write_all(fd, chunk, pos)
            hasher.update(chunk)
            pos += len(chunk)
            state["pos"] = pos
            self.journal.record(obj.rel, obj.size, obj.etag, have=[a, pos])
            self.progress.add(len(chunk))
            if pos - synced >= SYNC_BYTES:
                self.journal.sync(fd)
                synced = pos
        if pos != b:
            raise IncompleteDownload(f"got {pos - a} of {b - a} bytes")

    # -- verification --------------------------------------------------------------------
    def _finish(self, obj: S3Object) -> None:
        """Verify the whole file against the source's checksum, then rename it into place."""
        fd = os.open(obj.part, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            if obj.expect is not None:
                got = self._combined(obj, fd)
                if got != obj.expect.value and obj.expect.parts_count and not obj.expect.part_sizes:
                    # Parts of one size were assumed from part 1: ask each part's size and hash again.
                    sizes = self._part_sizes(obj, obj.expect.parts_count)
                    if tuple(b - a for a, b in obj.bounds()) != sizes:
                        obj.digests = {}
                        self._set_expect(obj, obj.expect.with_parts(part_sizes=sizes))
                        got = self._combined(obj, fd)
                if got != obj.expect.value:
                    raise ChecksumMismatch(obj, got)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(obj.part, obj.path)
        self.journal.record(obj.rel, obj.size, obj.etag, done=obj.expect.as_json() if obj.expect else None)

    @staticmethod
    def _combined(obj: S3Object, fd: int) -> str:
        assert obj.expect is not None
        digests = []
        for k, (a, b) in enumerate(obj.bounds()):
            if k not in obj.digests:
                obj.digests[k] = hash_range(fd, a, b, obj.expect.algorithm, obj.size)
            digests.append(obj.digests[k])
        return obj.expect.combine(digests)


class PartHasher:
    """Hashes the parts a span streams from their first byte (and journals each digest).

    Parts the span starts inside are left to :meth:`Engine._combined`, which hashes them from disk.
    """

    def __init__(self, obj: S3Object, start: int, journal: Journal) -> None:
        self.obj, self.pos, self.journal = obj, start, journal
        self.restart()

    def restart(self) -> None:
        """(Re)read the part layout: the checksum may have been learned from this span's own GET."""
        self.bounds = self.obj.bounds() if self.obj.expect is not None else []
        self.k = next((k for k, (a, b) in enumerate(self.bounds) if a <= self.pos < b), None)
        self.h = self._new() if self.k is not None and self.bounds[self.k][0] == self.pos else None

    def _new(self) -> Hasher:
        assert self.obj.expect is not None
        return new_hash(self.obj.expect.algorithm, self.obj.size)

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view and self.k is not None:
            end = self.bounds[self.k][1]
            n = min(len(view), end - self.pos)
            if self.h is not None:
                self.h.update(view[:n])
            view, self.pos = view[n:], self.pos + n
            if self.pos == end:
                self._part_done()
        self.pos += len(view)

    def _part_done(self) -> None:
        obj = self.obj
        if self.h is not None:
            digest = self.h.digest()
            obj.digests[self.k] = digest
            self.journal.record(obj.rel, obj.size, obj.etag, part=self.k, digest=digest.hex())
        self.k = self.k + 1 if self.k + 1 < len(self.bounds) else None
        self.h = self._new() if self.k is not None else None
