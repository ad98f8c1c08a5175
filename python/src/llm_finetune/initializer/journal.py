"""The download journal of a target folder: what is done, recorded as it happens.

``<target>/.llm-finetune-journal.jsonl`` holds JSON lines, each about one version of a file
(``path``, ``size`` and ``etag``; records of another version of the path are dropped):

* ``{"have": [a, b]}`` — bytes ``[a, b)`` of ``<path>.part`` are written (after every chunk;
  a resume keeps the union of these ranges and fetches the rest);
* ``{"part": k, "digest": hex}`` — hashed part ``k`` of ``<path>.part`` is complete and hashed
  to ``digest`` as it streamed in (a resume hashes it again from disk and compares);
* ``{"expect": {...}}`` — the checksum the source publishes (:class:`~..core.digest.Checksum`);
  it clears the part digests before it (they may follow another part layout);
* ``{"done": {...} | null}`` — the file is complete, verified against that checksum (null:
  the source publishes none) and renamed into place; a resume hashes it again before keeping it;
* ``{"reset": true}`` — forget the records before (the file is fetched again from zero).

Every record is one ``write`` to the file (it is in the page cache: a killed process loses
nothing it recorded). :meth:`Journal.sync` fsyncs the data file and then the journal, so
what the journal claims after a crash of the node is on disk too; whatever is left (a range
recorded after the last sync) is caught when the file is verified. A torn last line is
ignored. :meth:`Journal.compact` rewrites the journal with one set of records per file.
The journal is removed once the completion manifest is written.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.digest import Checksum

Ranges = list[tuple[int, int]]


def merge(ranges: Ranges) -> Ranges:
    """Sorted, non-overlapping ranges covering the same bytes."""
    out: Ranges = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def missing(have: Ranges, size: int) -> Ranges:
    """``[0, size)`` minus ``have``."""
    out, pos = [], 0
    for a, b in merge(have):
        if a > pos:
            out.append((pos, min(a, size)))
        pos = max(pos, b)
    if pos < size:
        out.append((pos, size))
    return [(a, b) for a, b in out if b > a]


def subtract(have: Ranges, a: int, b: int) -> Ranges:
    """``have`` without ``[a, b)``."""
    out = []
    for x, y in merge(have):
        if x < a:
            out.append((x, min(y, a)))
        if y > b:
            out.append((max(x, b), y))
    return out


def covered(have: Ranges) -> int:
    return sum(b - a for a, b in merge(have))


@dataclass
class Entry:
    """What the journal says about one version (size, etag) of a file."""

    size: int
    etag: str
    have: Ranges = field(default_factory=list)
    digests: dict[int, str] = field(default_factory=dict)
    expect: Checksum | None = None
    done: bool = False
    checksum: Checksum | None = None  # what the complete file was verified against (None: nothing published)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh = None

    # -- reading -------------------------------------------------------------------
    def load(self) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        try:
            fh = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return entries
        with fh:
            for line in fh:
                try:
                    _apply(entries, json.loads(line))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a torn last line, or a record of an older format
        return entries

    # -- writing -------------------------------------------------------------------
    def record(self, rel: str, size: int, etag: str, **fields: Any) -> None:
        """Append one record about ``rel``: ``have=[a, b]``, ``part=k, digest=hex``, ``expect=``, ``done=``, ``reset=``."""
        line = json.dumps({"path": rel, "size": size, "etag": etag, **fields}, separators=(",", ":")) + "\n"
        with self._lock:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()

    def sync(self, data_fd: int | None = None) -> None:
        """The data file first, then the journal: a record never claims bytes a crash could lose.

        The lock is not held while the disk works: the other threads keep recording."""
        if data_fd is not None:
            os.fdatasync(data_fd)
        with self._lock:
            fd = os.dup(self._fh.fileno()) if self._fh is not None else None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def compact(self, entries: dict[str, Entry]) -> None:
        """Replace the journal (atomically) with the records that say what ``entries`` say."""
        self.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for rel, e in sorted(entries.items()):
                for rec in _records(e):
                    fh.write(json.dumps({"path": rel, "size": e.size, "etag": e.etag, **rec},
                                        separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _apply(entries: dict[str, Entry], rec: dict[str, Any]) -> None:
    rel, size, etag = str(rec["path"]), int(rec["size"]), str(rec["etag"])
    entry = entries.get(rel)
    if entry is None or (entry.size, entry.etag) != (size, etag) or rec.get("reset"):
        entry = entries[rel] = Entry(size, etag)
    if "have" in rec:
        a, b = rec["have"]
        entry.have = merge(entry.have + [(int(a), int(b))])
    if "part" in rec:
        entry.digests[int(rec["part"])] = str(rec["digest"])
    if "expect" in rec:
        entry.expect, entry.digests = Checksum.from_json(rec["expect"]), {}
    if "done" in rec:
        entry.done, entry.checksum = True, Checksum.from_json(rec["done"]) if rec["done"] else None


def _records(e: Entry) -> list[dict[str, Any]]:
    if e.done:
        return [{"done": e.checksum.as_json() if e.checksum else None}]
    out: list[dict[str, Any]] = []
    if e.expect is not None:
        out.append({"expect": e.expect.as_json()})
    out += [{"have": [a, b]} for a, b in e.have]
    out += [{"part": k, "digest": d} for k, d in sorted(e.digests.items())]
    return out
