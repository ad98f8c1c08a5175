"""The S3 export is atomic for readers and resumes (issue 15), against the real SeaweedFS server.

An export that fails part-way (the fault proxy answers 503 to every PUT of one object)
leaves no manifest; the pod's next attempt uploads only what is not there yet; exporting
another output to the same prefix takes the old manifest away before it replaces files.
"""

from __future__ import annotations

import json
import random

import pytest

from initializer.faultproxy import FaultProxy
from llm_finetune.core.config import JobConfig
from llm_finetune.core.errors import ExternalError
from llm_finetune.core.volume import OUTPUT_MANIFEST, atomic_write_json, sha256_file, walk_files
from llm_finetune.trainer.export import export

BUCKET = "export-resume"
MiB = 1 << 20
REFUSE = f"PUT /{BUCKET}/runs/r1/tokenizer.json"  # every write of that object gets 503 SlowDown


def _output(folder, tokenizer: bytes):
    """An output folder as finish_output leaves it: files, then manifest.json listing their sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(random.Random(15).randbytes(MiB))
    (folder / "tokenizer.json").write_bytes(tokenizer)
    files = [{"path": p, "size": (folder / p).stat().st_size, "sha256": sha256_file(folder / p)}
             for p in walk_files(folder) if p != OUTPUT_MANIFEST]
    atomic_write_json(folder / OUTPUT_MANIFEST, {"kind": "adapter", "files": files})
    return folder


def _cfg(endpoint: str) -> JobConfig:
    cfg = JobConfig()
    cfg.output.export.uri = f"s3://{BUCKET}/runs/r1"
    cfg.output.export.s3.endpoint_url = endpoint
    cfg.download.retries, cfg.download.retry_backoff_seconds = 1, 0.01
    return cfg


def _uploads(proxy: FaultProxy) -> list[str]:
    """Keys written through the proxy (a multipart upload counts once, by its completion)."""
    return sorted({line.split()[1].split("?")[0].rsplit("/", 1)[1] for line in proxy.lines
                   if line.startswith("PUT ") and "partNumber=" not in line
                   or line.startswith("POST ") and "uploadId=" in line})


def _remote(client) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="runs/r1/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[1]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def test_a_failed_export_leaves_no_manifest_and_the_retry_uploads_only_the_rest(tmp_path, s3_server, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    s3_server.create_bucket(BUCKET)
    client = s3_server.client()
    out = _output(tmp_path / "output", b'{"v": 1}')

    with FaultProxy(s3_server.endpoint, refuse=REFUSE) as proxy:
        with pytest.raises(ExternalError) as err:
            export(_cfg(proxy.endpoint), out)
    assert "PUT s3://export-resume/runs/r1/tokenizer.json failed after 2 attempt(s)" in err.value.message
    assert sorted(_remote(client)) == ["adapter_config.json", "adapter_model.safetensors"]  # no manifest: incomplete

    with FaultProxy(s3_server.endpoint) as proxy:  # the pod's next attempt
        export(_cfg(proxy.endpoint), out)
    assert _uploads(proxy) == ["manifest.json", "tokenizer.json"]  # the MiB already there is not sent again
    assert _remote(client) == {p: (out / p).read_bytes() for p in walk_files(out)}

    with FaultProxy(s3_server.endpoint) as proxy:  # complete: an export once more changes nothing
        export(_cfg(proxy.endpoint), out)
    assert _uploads(proxy) == [] and proxy.requests["DELETE"] == 0

    # Another output to the same prefix, whose export fails: the old manifest went first, so no reader
    # sees a manifest that describes other files than those there.
    other = _output(tmp_path / "other", b'{"v": 2}')
    with FaultProxy(s3_server.endpoint, refuse=REFUSE) as failing, pytest.raises(ExternalError):
        export(_cfg(failing.endpoint), other)
    assert OUTPUT_MANIFEST not in _remote(client)
    with FaultProxy(s3_server.endpoint) as proxy:
        export(_cfg(proxy.endpoint), other)
    assert _uploads(proxy) == ["manifest.json", "tokenizer.json"]
    remote = _remote(client)
    assert remote == {p: (other / p).read_bytes() for p in walk_files(other)}
    assert json.loads(remote[OUTPUT_MANIFEST])["files"][-1]["sha256"] == sha256_file(other / "tokenizer.json")
