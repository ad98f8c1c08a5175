"""A tiny HTTP proxy between a client and a real server that injects faults and delays.

Each client request is forwarded to the upstream on its own connection (``Connection:
close``), so faults hit a share of *requests*, not of connections. Per request, by chance
(seeded): ``reset`` closes the client connection with a TCP RST before any answer,
``error503`` answers an S3 ``503 SlowDown``, ``cut`` forwards the headers and part of the
body and then resets (a broken stream). ``delay`` sleeps before forwarding (to slow a
download down so that a test can kill it midway). ``rewrite(body) -> body`` edits response
bodies (e.g. to list keys that SeaweedFS refuses to store but AWS S3 accepts, like
``../x``). ``corrupt`` flips one byte in the middle of the bodies of GETs whose request line
contains that string (``corrupt_times`` times, or always): data damaged on the way. ``refuse``
answers ``503 SlowDown`` to every request whose request line contains that string. ``rate``
limits the bandwidth to the clients (bytes/s, all connections together), like a network
slower than the client, so that ``sent`` (response bytes handed to the clients' sockets) is
what the clients received and not bytes parked in loopback socket buffers.
``outage=N`` answers the first N requests with ``503 SlowDown`` whatever the roll
(an S3 endpoint down for a while, then back). ``requests`` and ``faults`` count;
``lines`` lists the request lines (``PUT /bucket/key?... HTTP/1.1``).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from urllib.parse import urlsplit


def _slow_down() -> bytes:
    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")
    head = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    return head + body


def _closing(head: bytes) -> bytes:
    """A response head with ``Connection: close`` (and the blank line that ends it)."""
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
    return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n"


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    def __init__(self, upstream: str, *, reset: float = 0.0, error503: float = 0.0, cut: float = 0.0,
                 delay: float = 0.0, seed: int = 0, rewrite=None, rate: float = 0.0, corrupt: str | None = None,
                 corrupt_times: int | None = None, refuse: str | None = None, outage: int = 0) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.reset, self.error503, self.cut, self.delay = reset, error503, cut, delay
        self.rewrite = rewrite
        self.rate = rate  # bytes/s over all connections (0: unlimited): a network slower than the client
        self.corrupt = corrupt  # GET bodies of paths containing this get one byte flipped on the way
        self.corrupt_times = corrupt_times  # that many times (None: always)
        self.refuse = refuse  # requests whose request line contains this get 503 SlowDown, always
        self.sent = 0  # response bytes written to clients (headers included)
        self._next_send = time.monotonic()
        self.outage = outage
        self.rng = random.Random(seed)
        self.requests: Counter[str] = Counter()  # method -> count
        self.lines: list[str] = []
        self.faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._one(conn)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _one(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = 0
        kept = [lines[0]]
        for line in lines[1:]:
            name = line.split(b":", 1)[0].strip().lower()
            if name == b"content-length":
                length = int(line.split(b":", 1)[1])
            if name != b"connection":
                kept.append(line)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk
        method = lines[0].split(b" ")[0].decode()
        with self._lock:
            self.requests[method] += 1
            self.lines.append(lines[0].decode("latin-1"))
            roll = self.rng.random()
            down, self.outage = self.outage > 0, max(0, self.outage - 1)
        if down:
            self.faults["outage"] += 1
            conn.sendall(_slow_down())
            return
        if self.delay:
            time.sleep(self.delay)
        if roll < self.reset:
            self.faults["reset"] += 1
            return _reset(conn)
        if roll < self.reset + self.error503 or (self.refuse is not None and self.refuse in lines[0].decode("latin-1")):
            self.faults["503"] += 1
            conn.sendall(_slow_down())
            return
        cut = roll < self.reset + self.error503 + self.cut
        flip = method == "GET" and self._take_corrupt(lines[0].decode("latin-1"))
        request = b"\r\n".join(kept + [b"Connection: close"]) + b"\r\n\r\n" + body
        with socket.create_connection(self.upstream) as up:
            up.sendall(request)
            if self.rewrite is not None:
                return conn.sendall(self._rewritten(up))
            self._forward(conn, up, cut=cut, flip=flip)

    def _take_corrupt(self, request_line: str) -> bool:
        with self._lock:
            if self.corrupt is None or self.corrupt not in request_line or self.corrupt_times == 0:
                return False
            if self.corrupt_times is not None:
                self.corrupt_times -= 1
            return True

    def _forward(self, conn: socket.socket, up: socket.socket, *, cut: bool, flip: bool) -> None:
        """Upstream's answer to the client: whole, cut midway (then a reset), or with one body byte flipped.

        Its head gets ``Connection: close`` (this proxy closes after each request: a client must not reuse it).
        """
        buf, head = b"", None
        while chunk := up.recv(65536):
            buf += chunk
            if head is None:
                head, sep, buf = buf.partition(b"\r\n\r\n")
                if not sep:
                    buf, head = head, None
                    continue
                head = _closing(head)
                if not (cut or flip):
                    self._send(conn, head)
            if not (cut or flip):
                self._send(conn, buf)
                buf = b""
            elif cut and len(buf) >= 2:
                self.faults["cut"] += 1
                conn.sendall(head + buf[: len(buf) // 2])
                return _reset(conn)
            elif flip and buf and head.startswith(b"HTTP/1.1 20"):
                i = len(buf) // 2
                self.faults["corrupt"] += 1
                self._send(conn, head + buf[:i] + bytes([buf[i] ^ 0x01]) + buf[i + 1:])
                buf, cut, flip = b"", False, False
        if cut or flip:  # a body too short to cut or flip: forwarded whole
            self._send(conn, (head or b"") + buf)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        """Forward ``data`` (at ``rate`` when set) and count it."""
        step = 16384 if self.rate else max(1, len(data))
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            if self.rate:
                with self._lock:
                    now = time.monotonic()
                    start = max(now, self._next_send)
                    self._next_send = start + len(piece) / self.rate
                if start > now:
                    time.sleep(start - now)
            conn.sendall(piece)
            with self._lock:
                self.sent += len(piece)

    def _rewritten(self, up: socket.socket) -> bytes:
        data = b""
        while chunk := up.recv(65536):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower(), "rewrite needs a Content-Length response"
        body = self.rewrite(body)
        lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"content-length:")]
        return _closing(b"\r\n".join(lines + [b"Content-Length: %d" % len(body)])) + body
