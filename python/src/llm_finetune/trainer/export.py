"""Export the output folder (``output.export.uri``), rank 0, after it is complete on the volume.

* ``s3://bucket/prefix``: every file under ``prefix/`` (multipart for large ones), then
  ``manifest.json`` last, so a reader that sees the manifest sees a complete export. Each
  object carries its sha256 (``x-amz-meta-sha256``, from the output manifest): a retried
  export (the pod's next attempt) skips the objects already there with that size and
  sha256, and removes a manifest already under the prefix before it uploads anything, so
  that no reader sees a manifest over files that are being replaced.
  Credentials from env / workload identity (``llm_finetune.core.s3client``).
* ``hf://org/name``: ``create_repo(private=output.export.private, exist_ok=True)`` then
  ``upload_folder`` (one commit); the token is ``HF_TOKEN``.

Transient errors are retried (``download.retries``, backoff ``download.retryBackoffSeconds``);
then exit 202. Denied access, a missing bucket or no token is a user error (exit 1). An
export failure always fails the command.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..core.config import JobConfig
from ..core.errors import ConfigError, UserError
from ..core.hub import classify_error as classify_hub_error
from ..core.hub import hf_token, parse_hf_uri
from ..core.retry import RetryPolicy
from ..core.volume import OUTPUT_MANIFEST, read_json, sha256_file, walk_files

log = logging.getLogger(__name__)
FIELD = "output.export"


def export(cfg: JobConfig, folder: Path) -> str | None:
    uri = cfg.output.export.uri
    if not uri:
        return None
    policy = RetryPolicy(retries=cfg.download.retries, backoff=cfg.download.retry_backoff_seconds, field=f"{FIELD}.uri")
    if uri.startswith("s3://"):
        _to_s3(cfg, folder, uri, policy)
    elif uri.startswith("hf://"):
        _to_hub(cfg, folder, uri, policy)
    else:
        raise ConfigError(f"{uri!r} is neither s3:// nor hf://", field=f"{FIELD}.uri",
                          hint="write s3://bucket/prefix or hf://org/name")
    log.info("exported %s to %s", folder, uri)
    return uri


SHA256_METADATA = "sha256"  # x-amz-meta-sha256 of every exported object


def _to_s3(cfg: JobConfig, folder: Path, uri: str, policy: RetryPolicy) -> None:
    from ..core.s3client import classify_error, make_client, parse_s3_uri

    bucket, prefix = parse_s3_uri(uri, f"{FIELD}.uri")
    prefix = prefix.strip("/")
    client = make_client(cfg.output.export.s3, retries=0)
    names = walk_files(folder)
    ordered = [n for n in names if n != OUTPUT_MANIFEST] + [n for n in names if n == OUTPUT_MANIFEST]  # the manifest last
    listed = {f["path"]: f["sha256"] for f in (read_json(folder / OUTPUT_MANIFEST) or {}).get("files", [])}
    want = {n: ((folder / n).stat().st_size, listed.get(n) or sha256_file(folder / n)) for n in ordered}

    def classify(exc: BaseException):
        # boto3's upload_file re-raises a ClientError as S3UploadFailedError (the original as context).
        if type(exc).__name__ == "S3UploadFailedError" and exc.__context__ is not None:
            exc = exc.__context__
        return classify_error(exc, uri=uri, field=FIELD)

    def key(name: str) -> str:
        return f"{prefix}/{name}" if prefix else name

    there = {n: policy.call(lambda: _exported(client, bucket, key(n)), what=f"HEAD s3://{bucket}/{key(n)}",
                            classify=classify) for n in ordered}
    todo = [n for n in ordered if there[n] != want[n]]
    if todo and there.get(OUTPUT_MANIFEST) is not None and OUTPUT_MANIFEST not in todo:
        todo.append(OUTPUT_MANIFEST)  # taken away first (below), put back last
    if todo and there.get(OUTPUT_MANIFEST) is not None:
        policy.call(lambda: client.delete_object(Bucket=bucket, Key=key(OUTPUT_MANIFEST)),
                    what=f"DELETE s3://{bucket}/{key(OUTPUT_MANIFEST)}", classify=classify)
    for name in todo:
        extra = {"Metadata": {SHA256_METADATA: want[name][1]}}
        policy.call(lambda: client.upload_file(str(folder / name), bucket, key(name), ExtraArgs=extra),
                    what=f"PUT s3://{bucket}/{key(name)}", classify=classify)
    log.info("uploaded %d files to %s%s", len(todo), uri,
             f" ({len(ordered) - len(todo)} already there from an earlier attempt)" if len(todo) < len(ordered) else "")


def _exported(client, bucket: str, key: str) -> tuple[int, str | None] | None:
    """(size, recorded sha256) of an object, or None when there is none."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise
    return int(head["ContentLength"]), (head.get("Metadata") or {}).get(SHA256_METADATA)


def _to_hub(cfg: JobConfig, folder: Path, uri: str, policy: RetryPolicy) -> None:
    from huggingface_hub import create_repo, upload_folder

    repo_id = parse_hf_uri(uri, f"{FIELD}.uri")
    token = hf_token()
    if not token:
        raise UserError(f"exporting to {uri} needs a Hub token and HF_TOKEN is not set", field=f"{FIELD}.uri",
                        hint="set secrets.hf.existingSecret to a Secret holding a token with write access")

    def classify(exc: BaseException):
        return classify_hub_error(exc, uri=uri, field=FIELD)

    policy.call(lambda: create_repo(repo_id, private=cfg.output.export.private, exist_ok=True, token=token),
                what=f"create repo {uri}", classify=classify)
    policy.call(lambda: upload_folder(repo_id=repo_id, folder_path=str(folder), token=token,
                                      commit_message=f"llm-finetune: {cfg.run.name}"),
                what=f"upload to {uri}", classify=classify)
