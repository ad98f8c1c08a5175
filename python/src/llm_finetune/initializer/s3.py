"""``s3://bucket/prefix``: S3 and compatible servers (MinIO, Ceph, SeaweedFS).

* Lists the prefix (paginated). ``s3://b/models/tiny`` means the "folder" ``models/tiny/``;
  when no key lies under it and the key ``models/tiny`` itself exists, that single object is
  fetched (the v1 reference's ``file_key``). Keys keep their path relative to the prefix.
* Parallel: up to ``download.concurrency`` GETs at once; objects above
  ``download.multipartThresholdMiB`` are fetched as parallel ranged GETs into one file.
  Bodies are streamed to disk in 256 KiB chunks, never held whole in memory.
* Verified, atomic and resumable (:mod:`.ranged`, :mod:`.s3fetch`): each object is written to
  ``<name>.part`` by ranged GETs recorded in a journal (``.llm-finetune-journal.jsonl``,
  :mod:`.journal`), checked against the checksum the source publishes (``x-amz-checksum-*``
  or the MD5 ETag) and renamed into place. A rerun after a kill hashes the files and parts it
  keeps again and fetches only the missing bytes. The manifest records each file's checksum.
* Safe: keys that would escape the target (``..``, absolute, backslashes) are refused, and
  writes never follow symlinks.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.layout import layout_of_names
from ..core.retry import RetryPolicy
from ..core.s3client import classify_error, make_client, parse_s3_uri
from .base import Provider, check_model_files, ensure_parent, matches, safe_relpath
from .ranged import RemoteFile, fetch_missing
from .s3fetch import S3Source

log = logging.getLogger(__name__)


class S3Provider(Provider):
    schemes = ("s3",)
    page_size = 1000  # keys per listing request (the S3 maximum)

    # -- listing -----------------------------------------------------------------
    def _classify(self, exc: BaseException) -> BaseException | None:
        return classify_error(exc, uri=self.request.uri, field=self.request.field)

    def list_objects(self, client, bucket: str, prefix: str, policy: RetryPolicy) -> list[RemoteFile]:
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
            objects.append(RemoteFile(obj["Key"], rel, int(obj["Size"]), str(obj.get("ETag", "")).strip('"')))
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
        policy = RetryPolicy(dl.retries, dl.retry_backoff_seconds, f"{req.field}.uri", cancelled=threading.Event())
        objects = self.list_objects(client, bucket, prefix, policy)
        rels = [o.rel for o in objects]
        if req.kind == "model":
            check_model_files(rels, where=req.uri)
            layout = {}
        else:
            layout = layout_of_names(rels, file_type=req.file_type, where=req.uri)
        made: set[str] = set()
        for obj in objects:
            parent = obj.rel.rpartition("/")[0]
            obj.path = target / obj.rel if parent in made else ensure_parent(target, obj.rel)
            made.add(parent)
        source = S3Source(client, bucket, req.uri, req.field, self._classify)
        transferred = fetch_missing(source, objects, target, self.previous, uri=req.uri, kind=req.kind, download=dl,
                                    policy=policy)
        ordered = sorted(objects, key=lambda o: o.rel)
        digest = hashlib.sha256("\n".join(f"{o.rel} {o.etag}" for o in ordered).encode())
        files = [{"path": o.rel, "size": o.size, "etag": o.etag,
                  **({"checksum": o.expect.as_json()} if o.expect is not None else {})} for o in ordered]
        return {"revision": "etags:" + digest.hexdigest()[:32], "files": files, "transferredBytes": transferred,
                **layout}
