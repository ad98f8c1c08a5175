"""Downloading files by byte ranges, verified, renamed into place — for any source that serves ranges.

* **Ranged resume**: a file is written in place into ``<name>.part`` by spans of up to
  ``download.multipartThresholdMiB`` (whole hashed parts when they are not much larger), in
  parallel; every 256 KiB written is recorded in the journal (:mod:`.journal`). A killed run
  leaves ``.part`` and the journal: the next one keeps the recorded ranges, hashes the
  complete parts again (a changed byte is fetched again) and asks only for what is missing.
  A broken stream is retried from where it broke.
* **Verification**: parts are hashed as they stream in (parts a span starts inside, from
  disk at the end); the combined value must equal what the source publishes
  (:class:`~..core.digest.Checksum`) before ``os.replace`` puts the file into place. A
  mismatch is fetched again from zero (twice), then it is a ``UserError`` naming the file,
  the expected and the actual value. A multipart value whose parts were assumed to be of one
  size asks the source for each part's size and hashes again before it counts as a mismatch.
* **Stopping**: :meth:`Engine.abort` (SIGTERM, a failure elsewhere) closes the connections
  in flight, so the threads stop within a chunk; what they wrote is recorded.
* **What a rerun keeps** (:func:`triage`): a complete file that hashes again to its checksum
  (from the journal, the manifest of an older request, or known up front), and the recorded
  ranges of a partial one.

A :class:`Source` (S3: :mod:`.s3fetch`; the Hub: :mod:`.hf`) opens a byte range of a file
and says what to verify it against.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from ..core.digest import Checksum, Hasher, hash_range, mismatch, new_hash
from ..core.errors import FinetuneError, UserError
from ..core.log import format_bytes
from ..core.retry import RetryPolicy
from .base import JOURNAL_NAME, PART_SUFFIX, Progress, is_file_of_size
from .journal import Entry, Journal, Ranges, covered, merge, missing, subtract

log = logging.getLogger(__name__)

CHUNK = 256 << 10  # read size, and what a killed process may lose per connection
SYNC_BYTES = 64 << 20  # fdatasync + journal fsync every this many bytes written into a file
MIN_SPAN = 1 << 20
VERIFY_ATTEMPTS = 3  # a file that does not match its checksum is fetched again twice, then it is an error
_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class IncompleteDownload(ConnectionError):
    """The body ended before (or went past) the bytes asked for (retried)."""


class TransferError(ConnectionError):
    """A GET failed on the wire (retried)."""


@dataclass
class RemoteFile:
    key: str  # the source's name for it (S3 key, repo path)
    rel: str  # path in the target
    size: int
    etag: str  # the version: S3 ETag, or the Hub's digest
    path: Path = field(default=Path())
    expect: Checksum | None = None
    learned: bool = False  # expect is known (None then means: the source publishes nothing usable)
    have: Ranges = field(default_factory=list)  # bytes of .part written (journaled)
    digests: dict[int, bytes] = field(default_factory=dict)  # hashed part index -> digest
    spans_left: int = 0
    unsynced: int = 0  # bytes written since the last fdatasync + journal fsync
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def part(self) -> Path:
        return Path(str(self.path) + PART_SUFFIX)

    def bounds(self) -> list[tuple[int, int]]:
        return self.expect.bounds(self.size) if self.expect is not None else [(0, self.size)]


class ChecksumMismatch(Exception):
    def __init__(self, obj: RemoteFile, got: str):
        self.obj, self.got = obj, got
        assert obj.expect is not None
        super().__init__(f"{obj.key}: {obj.expect.source} says {obj.expect.value}, the downloaded bytes hash to {got}")


class Source(Protocol):
    """Where files come from (see the module doc). Calls may raise what ``classify`` sorts."""

    uri: str
    field: str
    damaged_hint: str  # the fix when a file never matches its checksum

    def classify(self, exc: BaseException) -> BaseException | None: ...

    def describe(self, f: RemoteFile) -> str: ...

    def open(self, f: RemoteFile, start: int, end: int, *, learn: bool) -> Any:
        """A response streaming bytes ``[start, end)`` of ``f`` (``learn``: with its checksum headers)."""

    def chunks(self, body: Any) -> Iterator[bytes]:
        """The body in chunks of up to :data:`CHUNK`; a broken stream raises TransferError."""

    def checksum(self, f: RemoteFile, headers: Any) -> Checksum | None:
        """What to verify ``f`` against, from the headers of a response for the whole file."""

    def learn(self, f: RemoteFile) -> Checksum | None:
        """What to verify ``f`` against (a request of its own), with the part layout."""

    def part_sizes(self, f: RemoteFile, n: int) -> tuple[int, ...]: ...

    def abort(self) -> None:
        """Close every response in flight."""


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


class Engine:
    """Downloads ``todo`` objects (see the module doc); ``run`` returns when all are verified in place."""

    def __init__(self, source: "Source", journal: Journal, policy: RetryPolicy, progress: Progress, *,
                 concurrency: int, span: int) -> None:
        self.src, self.journal, self.policy, self.progress = source, journal, policy, progress
        self.concurrency, self.span = max(1, concurrency), max(MIN_SPAN, span)
        assert policy.cancelled is not None, "the engine cancels through the policy"

    def run(self, todo: list[RemoteFile]) -> None:
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
        raise UserError(f"{self.src.describe(exc.obj)} does not match its {exc.obj.expect.source} after "
                        f"{VERIFY_ATTEMPTS} downloads: the source says {exc.obj.expect.value}, the downloaded bytes "
                        f"hash to {exc.got}",
                        field=f"{self.src.field}.uri", hint=self.src.damaged_hint)

    def abort(self) -> None:
        self.policy.cancelled.set()
        self.src.abort()

    # -- one pass ----------------------------------------------------------------------
    def _round(self, todo: list[RemoteFile]) -> list[ChecksumMismatch]:
        """Fetch and verify ``todo``; returns the objects whose bytes did not match."""
        bad: list[ChecksumMismatch] = []
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="get")
        try:
            for obj in todo:
                if obj.size == 0 and not obj.learned:  # nothing to GET: what the listing says is all there is
                    self._set_expect(obj, self.src.checksum(obj, {}))
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
    def _must_learn(self, obj: RemoteFile) -> bool:
        """A HEAD is needed unless one GET of the whole object brings the headers."""
        return "-" in obj.etag or obj.size > self.span or bool(obj.have)

    def _learn(self, obj: RemoteFile) -> None:
        self._set_expect(obj, self.policy.call(lambda: self.src.learn(obj), what=f"HEAD {self.src.describe(obj)}",
                                               classify=self.src.classify))

    def _part_sizes(self, obj: RemoteFile, n: int) -> tuple[int, ...]:
        return self.policy.call(lambda: self.src.part_sizes(obj, n), what=f"HEAD {self.src.describe(obj)}",
                                classify=self.src.classify)

    def _set_expect(self, obj: RemoteFile, expect: Checksum | None, *, record: bool = True) -> None:
        """``record``: also in the journal (a resume then needs no request to learn it again)."""
        obj.expect, obj.learned = expect, True
        if expect is None:
            log.warning("%s: the source publishes no checksum this initializer can check (no MD5 ETag, no "
                        "x-amz-checksum-sha256/sha1/crc32): only its size is verified", obj.key)
        elif record:
            self.journal.record(obj.rel, obj.size, obj.etag, expect=expect.as_json())

    def _reset(self, obj: RemoteFile) -> None:
        obj.have, obj.digests = [], {}
        self.journal.record(obj.rel, obj.size, obj.etag, reset=True)
        if obj.expect is not None:
            self.journal.record(obj.rel, obj.size, obj.etag, expect=obj.expect.as_json())

    # -- planning ------------------------------------------------------------------------
    def _open_part(self, obj: RemoteFile) -> None:
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

    def _plan(self, obj: RemoteFile) -> list[tuple[int, int]]:
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
    def _task(self, obj: RemoteFile, a: int, b: int, bad: list[ChecksumMismatch]) -> None:
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

    def _fetch_span(self, obj: RemoteFile, a: int, b: int) -> None:
        state = {"pos": a}
        hasher = PartHasher(obj, a, self.journal)
        fd = os.open(obj.part, _OPEN_FLAGS)
        what = f"GET {self.src.describe(obj)}" + ("" if (a, b) == (0, obj.size) else f" bytes {a}-{b - 1}")
        try:
            self.policy.call(lambda: self._stream(obj, fd, a, b, state, hasher), what=what,
                             classify=self.src.classify)
        finally:
            os.close(fd)
        with obj.lock:
            obj.have = merge(obj.have + [(a, b)])

    def _stream(self, obj: RemoteFile, fd: int, a: int, b: int, state: dict[str, int], hasher: "PartHasher") -> None:
        """One attempt: GET bytes ``[state["pos"], b)`` into ``fd``; a retry continues where this one broke."""
        pos = state["pos"]
        body = self.src.open(obj, pos, b, learn=not obj.learned)
        if not obj.learned:  # one GET of the whole file: what a resume would learn again with a HEAD
            self._set_expect(obj, self.src.checksum(obj, body.headers), record=False)
            hasher.restart()
        for chunk in self.src.chunks(body):
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
            with obj.lock:
                obj.unsynced += len(chunk)
                due = obj.unsynced >= SYNC_BYTES
                if due:
                    obj.unsynced = 0
            if due:  # what the journal says is on disk, if the node crashes (every 64 MiB of a file)
                self.journal.sync(fd)
        if pos != b:
            raise IncompleteDownload(f"got {pos - a} of {b - a} bytes")

    # -- verification --------------------------------------------------------------------
    def _finish(self, obj: RemoteFile) -> None:
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
    def _combined(obj: RemoteFile, fd: int) -> str:
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

    def __init__(self, obj: RemoteFile, start: int, journal: Journal) -> None:
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
            if len(self.bounds) > 1:  # (a whole-file digest is checked at once, at the end of this span)
                self.journal.record(obj.rel, obj.size, obj.etag, part=self.k, digest=digest.hex())
        self.k = self.k + 1 if self.k + 1 < len(self.bounds) else None
        self.h = self._new() if self.k is not None else None


def fetch_missing(source: "Source", files: list[RemoteFile], target: Path, previous: dict[str, Any] | None, *,
                  uri: str, kind: str, download: Any, policy: RetryPolicy) -> int:
    """Fetch what of ``files`` is not verified in ``target`` yet (:func:`triage`, then an :class:`Engine`).

    ``download`` is the job's ``download`` section; returns the bytes transferred.
    """
    journal = Journal(target / JOURNAL_NAME)
    todo = triage(files, journal, previous)
    left = sum(f.size - covered(f.have) for f in todo)
    log.info("%s: %d files, %s; %d verified on the volume, fetching %d (%s) with %d parallel downloads", uri,
             len(files), format_bytes(sum(f.size for f in files)), len(files) - len(todo), len(todo),
             format_bytes(left), max(1, download.concurrency))
    if not todo:
        journal.close()
        return 0
    progress = Progress(f"{kind} {uri}", left, len(todo))
    engine = Engine(source, journal, policy, progress, concurrency=download.concurrency,
                    span=download.multipart_threshold_mib << 20)
    try:
        engine.run(todo)
    finally:
        journal.close()
    progress.finish()
    return progress.bytes


def triage(files: list[RemoteFile], journal: Journal, previous: dict[str, Any] | None) -> list[RemoteFile]:
    """Keep complete files that verify again, resume partial ones; return what is left to fetch.

    A complete file is known from the journal, from ``previous`` (the manifest of an older
    request: same size and ETag), or — when its checksum is known up front (``learned``) —
    from its content alone. The journal is rewritten with what is kept.
    """
    entries = journal.load()
    old = {f.get("path"): f for f in (previous or {}).get("files", [])}
    todo, kept = [], {}
    for f in files:
        entry = entries.get(f.rel)
        if entry is None or (entry.size, entry.etag) != (f.size, f.etag):
            entry = _from_manifest(old.get(f.rel), f)
        if entry is None and f.learned and is_file_of_size(f.path, f.size):
            entry = Entry(f.size, f.etag, done=True, checksum=f.expect)
        if entry is not None and entry.done and _keep_complete(f, entry):
            kept[f.rel] = entry
            continue
        if entry is not None and not entry.done and is_file_of_size(f.part, f.size):
            kept[f.rel] = _resume_partial(f, entry)
        todo.append(f)
    journal.compact(kept)
    return todo


def _from_manifest(f: dict[str, Any] | None, obj: RemoteFile) -> Entry | None:
    """An Entry for a file an older request's complete manifest lists with the same size and ETag."""
    if not f or (f.get("size"), f.get("etag")) != (obj.size, obj.etag):
        return None
    return Entry(obj.size, obj.etag, done=True, checksum=Checksum.from_json(f.get("checksum")))


def _keep_complete(obj: RemoteFile, entry: Entry) -> bool:
    """A complete file is kept when it still has its size and (when there is one) its checksum."""
    if not is_file_of_size(obj.path, obj.size):
        return False
    if entry.checksum is not None:
        bad = mismatch(obj.path, entry.checksum, obj.size)
        if bad is not None:
            log.warning("%s on the volume does not match its %s any more (%s, the file has %s): fetching it again",
                        obj.rel, entry.checksum.source, entry.checksum.value, bad)
            obj.path.unlink()
            return False
    obj.expect, obj.learned = entry.checksum, True
    return True


def _resume_partial(obj: RemoteFile, entry: Entry) -> Entry:
    """Keep the recorded ranges of ``obj.part``, minus hashed parts whose bytes changed since."""
    if entry.expect is not None or not obj.learned:
        obj.expect, obj.learned = entry.expect, entry.expect is not None
    obj.have = list(entry.have)
    if obj.expect is not None and entry.digests:
        fd = os.open(obj.part, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            for k, (a, b) in enumerate(obj.bounds()):
                want = entry.digests.get(k)
                if want is None:
                    continue
                got = hash_range(fd, a, b, obj.expect.algorithm, obj.size)
                if got.hex() == want:
                    obj.digests[k] = got
                else:
                    log.warning("%s: bytes %d-%d on the volume changed since they were downloaded: fetching them "
                                "again", obj.rel, a, b - 1)
                    obj.have = subtract(obj.have, a, b)
        finally:
            os.close(fd)
    log.info("%s: resuming with %s of %s on the volume", obj.rel, format_bytes(covered(obj.have)),
             format_bytes(obj.size))
    return Entry(obj.size, obj.etag, have=obj.have, digests={k: d.hex() for k, d in obj.digests.items()},
                 expect=obj.expect)
