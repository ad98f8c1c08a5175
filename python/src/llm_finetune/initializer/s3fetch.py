"""S3 as a :class:`~.ranged.Source`: presigned ranged GETs, and what an object is verified against.

* :func:`expected_checksum`: an ``x-amz-checksum-sha256``, ``-sha1`` or ``-crc32`` value (the
  uploading client computed it), else the ETag when it is an MD5 (not for SSE-KMS / SSE-C
  objects, whose ETag is not a digest of the content), else nothing (only the size is
  checked; a warning says so). A multipart ETag or composite checksum (``-N``) is recomputed
  from the parts: the part size comes from ``HEAD ?partNumber=1`` (every part but the last
  has it, as every upload tool does; checked when the file is verified). An object fetched
  in one GET takes its checksum headers from that GET (``x-amz-checksum-mode: ENABLED``);
  others cost one HEAD (two when multipart).
* Every GET carries ``If-Match`` with the listed ETag: bytes of another version are never
  mixed in (412).
"""

from __future__ import annotations

import re
import threading
from typing import Any

from ..core.digest import Checksum, from_base64
from .ranged import CHUNK, RemoteFile, TransferError

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


class S3Source:
    """The objects of one bucket (see the module doc)."""

    damaged_hint = "the object in the bucket is damaged, or its checksum is wrong: upload it again"

    def __init__(self, client, bucket: str, uri: str, field: str, classify) -> None:
        self.client, self.bucket, self.uri, self.field, self.classify = client, bucket, uri, field, classify
        self.reader = ObjectReader(client)

    def describe(self, f: RemoteFile) -> str:
        return f"s3://{self.bucket}/{f.key}"

    def open(self, f: RemoteFile, start: int, end: int, *, learn: bool):
        headers = {"If-Match": f'"{f.etag}"'}  # the listed version, or 412
        if (start, end) != (0, f.size):
            headers["Range"] = f"bytes={start}-{end - 1}"
        return self.reader.open(self.bucket, f.key, headers, checksum_mode=learn)

    def chunks(self, body):
        return self.reader.chunks(body)

    def abort(self) -> None:
        self.reader.abort()

    def checksum(self, f: RemoteFile, headers: Any) -> Checksum | None:
        return expected_checksum(f.etag, headers)

    def _head(self, f: RemoteFile, **kw) -> dict[str, Any]:
        return self.client.head_object(Bucket=self.bucket, Key=f.key, IfMatch=f'"{f.etag}"', **kw)

    def learn(self, f: RemoteFile) -> Checksum | None:
        expect = expected_checksum(f.etag, self._head(f, ChecksumMode="ENABLED")["ResponseMetadata"]["HTTPHeaders"])
        if expect is None or not expect.parts_count:
            return expect
        first, n = int(self._head(f, PartNumber=1)["ContentLength"]), expect.parts_count
        if first > 0 and (n - 1) * first < f.size <= n * first:
            return expect.with_parts(part_size=first)  # checked when the file is verified
        return expect.with_parts(part_sizes=self.part_sizes(f, n))

    def part_sizes(self, f: RemoteFile, n: int) -> tuple[int, ...]:
        return tuple(int(self._head(f, PartNumber=k)["ContentLength"]) for k in range(1, n + 1))
