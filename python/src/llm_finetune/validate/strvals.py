"""Helm's ``--set`` / ``--set-string`` / ``--set-json`` syntax (Helm's ``pkg/strvals``), parsed the way Helm does.

``a.b=c,d[0]=x,e={1,2}``: dots nest maps, ``[i]`` indexes lists (padding with null),
``{x,y}`` is a list, ``\\`` escapes the next character, a comma separates assignments.
Type inference as Helm's ``typedVal``: ``true``/``false``/``null`` (any case), integers
that do not start with ``0`` (and ``0`` itself) become int; everything else, decimals
included (``0.0002``), stays a string. ``--set-string`` keeps every value a string;
``--set-json`` reads each value as JSON (an empty value is null).

Assignments are parsed INTO the values merged from ``-f`` files, as Helm does: ``--set
list[1]=x`` changes one item of a list that a values file set, but replaces a list that
only the chart's defaults have (defaults are coalesced later).
"""

from __future__ import annotations

import json
from typing import Any

MAX_INDEX = 65536
MAX_NESTED_NAME_LEVEL = 30


class StrvalsError(ValueError):
    """A --set expression Helm would reject."""


class _EOF(Exception):
    pass


class _NotList(Exception):
    pass


class _Parser:
    def __init__(self, text: str, data: dict[str, Any], mode: str) -> None:
        self.text, self.pos, self.data, self.mode = text, 0, data, mode

    # -- scanning ----------------------------------------------------------
    def _read(self) -> str | None:
        if self.pos >= len(self.text):
            return None
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def _until(self, stop: str) -> tuple[str, str | None]:
        """Characters up to one in ``stop`` (consumed, returned as the 2nd item; None at the end)."""
        out: list[str] = []
        while True:
            ch = self._read()
            if ch is None:
                return "".join(out), None
            if ch in stop:
                return "".join(out), ch
            if ch == "\\":
                nxt = self._read()
                if nxt is None:
                    return "".join(out), None
                out.append(nxt)
            else:
                out.append(ch)

    def _typed(self, raw: str) -> Any:
        if self.mode == "string":
            return raw
        low = raw.lower()
        if low == "true":
            return True
        if low == "false":
            return False
        if low == "null":
            return None
        if raw == "0":
            return 0
        if raw and raw[0] != "0":
            try:
                # Go's strconv.ParseInt: optional sign and decimal digits only.
                body = raw[1:] if raw[0] in "+-" else raw
                if body.isdigit() and body.isascii():
                    value = int(raw)
                    if -(2**63) <= value < 2**63:
                        return value
            except ValueError:  # pragma: no cover
                pass
        return raw

    # -- grammar (mirrors parser.go) ----------------------------------------
    def parse(self) -> None:
        while True:
            try:
                self._key(self.data, 0)
            except _EOF:
                return

    def _key(self, data: dict[str, Any], level: int) -> None:
        key, last = self._until("=[,.")
        if last is None:
            if not key:
                raise _EOF
            raise StrvalsError(f"key {key!r} has no value")
        if last == "[":
            index = self._index()
            current = data.get(key, [])
            if not isinstance(current, list):
                raise StrvalsError(f"{key!r} is not a list (it is {type(current).__name__} in the values)")
            try:
                _set(data, key, self._list_item(current, index, level))
            except _EOF:
                _set(data, key, current)
                raise
            return
        if last == "=":
            if self.mode == "json":
                _set(data, key, self._json_value())
                return
            try:
                value: Any = self._val_list()
            except _EOF:
                _set(data, key, "")
                raise
            except _NotList:
                value = self._typed(self._until(",")[0])
            _set(data, key, value)
            return
        if last == ",":
            raise StrvalsError(f"key {key!r} has no value (cannot end with ,)")
        # last == "."
        level += 1
        if level > MAX_NESTED_NAME_LEVEL:
            raise StrvalsError(f"value name nested level is greater than {MAX_NESTED_NAME_LEVEL}")
        inner = data.get(key, {})
        if not isinstance(inner, dict):
            raise StrvalsError(f"{key!r} is not a map (it is {type(inner).__name__} in the values)")
        try:
            self._key(inner, level)
        except _EOF:
            if inner:
                _set(data, key, inner)
            raise
        if not inner:
            raise StrvalsError(f"key map {key!r} has no value")
        _set(data, key, inner)

    def _index(self) -> int:
        raw, last = self._until("]")
        if last is None:
            raise StrvalsError("error parsing index: missing ]")
        try:
            return int(raw)
        except ValueError:
            raise StrvalsError(f"error parsing index: {raw!r} is not a number") from None

    def _list_item(self, items: list[Any], index: int, level: int) -> list[Any]:
        if index < 0:
            raise StrvalsError(f"negative {index} index not allowed")
        rest, last = self._until("[.=")
        if rest:
            raise StrvalsError(f"unexpected data at end of array index: {rest!r}")
        if last is None:
            raise _EOF
        if last == "=":
            if self.mode == "json":
                return _set_index(items, index, self._json_value())
            try:
                value: Any = self._val_list()
            except _EOF:
                return _set_index(items, index, "")
            except _NotList:
                value = self._typed(self._until(",")[0])
            return _set_index(items, index, value)
        if last == "[":
            nxt = self._index()
            current = items[index] if index < len(items) and items[index] is not None else []
            if not isinstance(current, list):
                raise StrvalsError(f"index {index} is not a list")
            return _set_index(items, index, self._list_item(current, nxt, level))
        # last == "."
        inner: Any = items[index] if index < len(items) else {}
        if not isinstance(inner, dict):
            inner = {}
            if index < len(items):
                items[index] = inner
        self._key(inner, level)
        return _set_index(items, index, inner)

    def _empty_value(self) -> bool:
        """Skip blanks; True at a comma (consumed) or the end, False before anything else."""
        while True:
            ch = self._read()
            if ch is None or ch == ",":
                return True
            if not ch.isspace():
                self.pos -= 1
                return False

    def _json_value(self) -> Any:
        if self._empty_value():
            return None
        try:
            value, end = json.JSONDecoder().raw_decode(self.text, self.pos)
        except json.JSONDecodeError as exc:
            raise StrvalsError(f"invalid JSON value: {exc.msg} at character {exc.pos}") from None
        self.pos = end
        self._empty_value()
        return value

    def _val_list(self) -> list[Any]:
        ch = self._read()
        if ch is None:
            raise _EOF
        if ch != "{":
            self.pos -= 1
            raise _NotList
        out: list[Any] = []
        while True:
            raw, last = self._until(",}")
            if last is None:
                raise StrvalsError("list must terminate with '}'")
            out.append(self._typed(raw))
            if last == "}":
                if self.pos < len(self.text) and self.text[self.pos] == ",":
                    self.pos += 1
                return out


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    if key:
        data[key] = value


def _set_index(items: list[Any], index: int, value: Any) -> list[Any]:
    if index > MAX_INDEX:
        raise StrvalsError(f"index of {index} is greater than maximum supported index of {MAX_INDEX}")
    if len(items) <= index:
        items = items + [None] * (index + 1 - len(items))
    items[index] = value
    return items


MODES = ("typed", "string", "json")  # --set, --set-string, --set-json


def parse_into(expression: str, dest: dict[str, Any], *, mode: str = "typed") -> dict[str, Any]:
    """Apply one ``--set`` expression to ``dest`` in place, as Helm's ParseInto (``mode``: see MODES)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    _Parser(expression, dest, mode).parse()
    return dest


def parse(expression: str, *, mode: str = "typed") -> dict[str, Any]:
    return parse_into(expression, {}, mode=mode)
