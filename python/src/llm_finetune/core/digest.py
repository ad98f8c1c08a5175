"""Checksums of downloaded files: what a source publishes, and recomputing it from the bytes.

A :class:`Checksum` is what the source says a file's content hashes to:

* S3: the ETag (the MD5 of the object for a single-part upload; for a multipart upload the
  MD5 of the parts' MD5s, ``"<hex>-<N>"``), or an ``x-amz-checksum-*`` value (SHA-256,
  SHA-1, CRC32; ``-N`` for the *composite* checksum of a multipart upload, made like the
  ETag: the hash of the parts' binary digests). A composite value needs the part
  boundaries: ``part_size`` (every part but the last) or ``part_sizes``.
* Hugging Face Hub: the LFS ``sha256`` of large files, the git blob SHA-1 of the others
  (``sha1(b"blob <size>\\0" + content)``).

Values are lowercase hex (S3 sends base64 checksums: :func:`from_base64`). The completion
manifest stores :meth:`Checksum.as_json` per file (``core/volume.py``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

CHUNK = 1 << 20
ALGORITHMS = ("md5", "sha256", "sha1", "crc32", "git-sha1")


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def new_hash(algorithm: str, size: int = 0) -> Hasher:
    """A hasher of ``algorithm`` for content of ``size`` bytes (a git blob id hashes a header with the size)."""
    if algorithm == "crc32":
        return _Crc32()
    if algorithm == "git-sha1":
        h = hashlib.sha1()
        h.update(b"blob %d\0" % size)
        return h
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def from_base64(value: str) -> str:
    """An S3 ``x-amz-checksum-*`` value (base64, maybe ending in ``-N``) as hex (``-N`` kept)."""
    b64, sep, count = value.strip().partition("-")
    return base64.b64decode(b64).hex() + (f"-{count}" if sep else "")


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # one of ALGORITHMS
    value: str  # hex; "<hex>-<N>" for a composite (multipart) value
    source: str = ""  # what published it, for messages: "ETag", "x-amz-checksum-sha256", "LFS sha256", ...
    part_size: int = 0  # composite: the size of every part but the last
    part_sizes: tuple[int, ...] = field(default=())  # composite with parts of differing sizes

    @property
    def parts_count(self) -> int:
        """N of a composite ``-N`` value; 0 for a digest of the whole content."""
        _, sep, count = self.value.partition("-")
        return int(count) if sep and count.isdigit() else 0

    def with_parts(self, part_size: int = 0, part_sizes: tuple[int, ...] = ()) -> "Checksum":
        return Checksum(self.algorithm, self.value, self.source, part_size, tuple(part_sizes))

    def bounds(self, size: int) -> list[tuple[int, int]]:
        """``[start, end)`` of each hashed part of ``size`` bytes of content (one for a whole-content digest)."""
        n = self.parts_count
        if not n:
            return [(0, size)]
        if self.part_sizes:
            sizes = list(self.part_sizes)
        elif self.part_size > 0:
            sizes = [min(self.part_size, size - i * self.part_size) for i in range(n)]
        else:
            sizes = []
        if len(sizes) != n or sum(sizes) != size or any(s <= 0 for s in sizes):
            raise ValueError(f"the {n} parts of {self.source} {self.value} do not add up to {size} bytes")
        out, start = [], 0
        for s in sizes:
            out.append((start, start + s))
            start += s
        return out

    def combine(self, part_digests: list[bytes]) -> str:
        """The value these part digests make: the digest itself, or the digest of the digests ``-N``."""
        if not self.parts_count:
            return part_digests[0].hex()
        h = new_hash(self.algorithm)
        for d in part_digests:
            h.update(d)
        return f"{h.digest().hex()}-{len(part_digests)}"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"algorithm": self.algorithm, "value": self.value, "source": self.source}
        if self.part_sizes:
            out["partSizes"] = list(self.part_sizes)
        elif self.part_size:
            out["partSize"] = self.part_size
        return out

    @classmethod
    def from_json(cls, data: Any) -> "Checksum | None":
        """The inverse of :meth:`as_json`; None for anything else (an older or damaged record)."""
        try:
            checksum = cls(str(data["algorithm"]), str(data["value"]), str(data.get("source", "")),
                           int(data.get("partSize", 0)), tuple(int(s) for s in data.get("partSizes", ())))
        except (TypeError, KeyError, ValueError, AttributeError):
            return None
        return checksum if checksum.algorithm in ALGORITHMS else None


def hash_range(fd: int, start: int, end: int, algorithm: str, size: int = 0) -> bytes:
    """The digest of bytes ``[start, end)`` of the open file ``fd`` (``size``: the whole file's, for git blobs)."""
    h = new_hash(algorithm, size)
    offset = start
    while offset < end:
        data = os.pread(fd, min(CHUNK, end - offset), offset)
        if not data:
            raise EOFError(f"the file ends at byte {offset}, before {end}")
        h.update(data)
        offset += len(data)
    return h.digest()


def file_checksum(path: str | os.PathLike[str], expected: Checksum, size: int) -> str:
    """The value ``expected``'s recipe (algorithm, parts) gives for the file at ``path``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        actual = os.fstat(fd).st_size
        if actual != size:
            return f"{actual} bytes instead of {size}"
        return expected.combine([hash_range(fd, a, b, expected.algorithm, size) for a, b in expected.bounds(size)])
    finally:
        os.close(fd)


def mismatch(path: str | os.PathLike[str], expected: Checksum, size: int) -> str | None:
    """None when the file at ``path`` matches ``expected``; else what it has instead (for a message)."""
    try:
        got = file_checksum(path, expected, size)
    except (OSError, EOFError, ValueError) as exc:
        return f"unreadable ({exc})"
    return None if got == expected.value else got
