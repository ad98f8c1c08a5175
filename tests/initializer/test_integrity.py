"""Verified downloads and ranged resume (issue 15) against the real SeaweedFS server.

Faults are real: bytes flipped on the way by the proxy, bytes flipped on the volume, an
initializer killed with SIGKILL mid-download.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from initializer.faultproxy import FaultProxy
from initializer.helpers import CLI, kill_midway, run_cli, tree_digest, write_config
from llm_finetune.core.config import load_config
from llm_finetune.core.digest import Checksum, file_checksum
from llm_finetune.core.volume import read_manifest
from llm_finetune.initializer.base import JOURNAL_NAME
from llm_finetune.initializer.command import initialize
from llm_finetune.initializer.journal import Journal
from llm_finetune.initializer.s3fetch import expected_checksum

BUCKET = "integrity"
MiB = 1 << 20


def _multipart(client, key: str, parts: list[bytes], **extra) -> None:
    mp = client.create_multipart_upload(Bucket=BUCKET, Key=key, **extra)
    done = []
    for i, data in enumerate(parts, 1):
        r = client.upload_part(Bucket=BUCKET, Key=key, UploadId=mp["UploadId"], PartNumber=i, Body=data)
        done.append({"PartNumber": i, "ETag": r["ETag"], **({"ChecksumCRC32": r["ChecksumCRC32"]}
                                                            if "ChecksumCRC32" in r else {})})
    client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=mp["UploadId"], MultipartUpload={"Parts": done})


@pytest.fixture(scope="module")
def kinds(s3_server, tmp_path_factory) -> Path:
    """s3://integrity/kinds/: one object per kind of published checksum; returns a local copy."""
    import boto3
    from botocore.config import Config

    s3_server.create_bucket(BUCKET)
    # boto3 >= 1.36 adds a CRC32 to every upload; "when_required" uploads like older tools: ETag only.
    plain = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                         aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key,
                         config=Config(request_checksum_calculation="when_required"))
    default = s3_server.client()
    local = tmp_path_factory.mktemp("kinds")
    rnd = __import__("random").Random(15)
    files = {"config.json": b'{"model_type": "llama"}\n' * 40,
             "model.safetensors": rnd.randbytes(12 * MiB),  # 5 + 5 + 2 MiB parts, CRC32 composite
             "odd.bin": rnd.randbytes(12 * MiB),  # 5 + 6 + 1 MiB parts, multipart MD5 ETag only
             "tokenizer.json": rnd.randbytes(300_000)}  # x-amz-checksum-sha256
    plain.put_object(Bucket=BUCKET, Key="kinds/config.json", Body=files["config.json"])
    m = files["model.safetensors"]
    _multipart(default, "kinds/model.safetensors", [m[:5 * MiB], m[5 * MiB:10 * MiB], m[10 * MiB:]],
               ChecksumAlgorithm="CRC32")
    o = files["odd.bin"]
    _multipart(plain, "kinds/odd.bin", [o[:5 * MiB], o[5 * MiB:11 * MiB], o[11 * MiB:]])
    default.put_object(Bucket=BUCKET, Key="kinds/tokenizer.json", Body=files["tokenizer.json"], ChecksumAlgorithm="SHA256")
    for name, data in files.items():
        (local / name).write_bytes(data)
    return local


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """Credentials in this process's environment and for subprocesses (without conftest's uploads)."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server.env()


def s3(endpoint: str, uri: str, **extra) -> dict:
    return {"uri": uri, "s3": {"endpointUrl": endpoint, "region": "us-east-1"}, **extra}


def config_for(tmp_path: Path, endpoint: str, kinds: Path, allow: tuple[str, ...] = (), **download) -> Path:
    model = s3(endpoint, f"s3://{BUCKET}/kinds/", **({"allowPatterns": list(allow)} if allow else {}))
    return write_config(tmp_path, model=model, dataset={"uri": str(kinds)},
                        download={"retryBackoffSeconds": 0.02, **download})


def test_every_kind_of_published_checksum_is_verified_and_recorded(tmp_path, s3_server, kinds, s3_env):
    config = config_for(tmp_path, s3_server.endpoint, kinds, multipartThresholdMiB=2)
    initialize(load_config(config))
    model = tmp_path / "ws" / "model"
    assert tree_digest(model) == tree_digest(kinds)
    recorded = {f["path"]: f["checksum"] for f in read_manifest(model)["files"]}
    assert {p: (c["algorithm"], c["source"]) for p, c in recorded.items()} == {
        "config.json": ("md5", "ETag"),
        "model.safetensors": ("crc32", "x-amz-checksum-crc32"),
        "odd.bin": ("md5", "ETag"),
        "tokenizer.json": ("sha256", "x-amz-checksum-sha256")}
    assert recorded["config.json"]["value"] == hashlib.md5((kinds / "config.json").read_bytes()).hexdigest()
    assert recorded["tokenizer.json"]["value"] == hashlib.sha256((kinds / "tokenizer.json").read_bytes()).hexdigest()
    assert recorded["model.safetensors"]["partSize"] == 5 * MiB and recorded["model.safetensors"]["value"].endswith("-3")
    # part 1 is 5 MiB but the parts are not all 5 MiB: their sizes were asked for, and recorded
    assert recorded["odd.bin"]["partSizes"] == [5 * MiB, 6 * MiB, 1 * MiB]
    for path, c in recorded.items():  # what was recorded is what the files on the volume hash to
        assert file_checksum(model / path, Checksum.from_json(c), (model / path).stat().st_size) == c["value"]


def test_bytes_damaged_on_the_way_are_fetched_again(tmp_path, s3_server, kinds, s3_env, caplog):
    with FaultProxy(s3_server.endpoint, corrupt="model.safetensors", corrupt_times=1) as proxy:
        config = config_for(tmp_path, proxy.endpoint, kinds, multipartThresholdMiB=2)
        caplog.set_level("INFO", logger="llm_finetune")
        result = initialize(load_config(config))
    assert proxy.faults["corrupt"] == 1
    assert tree_digest(tmp_path / "ws" / "model") == tree_digest(kinds)
    assert "kinds/model.safetensors: x-amz-checksum-crc32 says " in caplog.text and "fetching it again (1/2)" in caplog.text
    total = sum(p.stat().st_size for p in kinds.iterdir())
    assert result["model"]["transferredBytes"] == total + 12 * MiB  # the damaged object once more, nothing else


def test_damage_that_persists_is_a_permanent_error_naming_the_file(tmp_path, s3_server, kinds, s3_env, termination_log):
    with FaultProxy(s3_server.endpoint, corrupt="tokenizer.json") as proxy:
        proc = run_cli(config_for(tmp_path, proxy.endpoint, kinds), s3_env)
    assert proc.returncode == 1, proc.stderr
    message = termination_log.read_text()
    assert message.startswith(f"initializer: model.uri: s3://{BUCKET}/kinds/tokenizer.json does not match its "
                              "x-amz-checksum-sha256 after 3 downloads: the source says "), message
    assert proxy.faults["corrupt"] == 3
    assert not (tmp_path / "ws" / "model" / "tokenizer.json").exists() and read_manifest(tmp_path / "ws" / "model") is None


def _journal(target: Path) -> dict:
    path = target / JOURNAL_NAME
    return Journal(path).load() if path.exists() else {}


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x20]))


def test_kill_9_resumes_from_ranges_and_hashes_again_what_it_keeps(tmp_path, s3_server, kinds, s3_env, caplog):
    """A real initializer killed with SIGKILL mid-object; bytes then flipped in a complete file and in a
    complete part of the partial one: the rerun fetches those and the missing ranges only, and verifies."""
    model = tmp_path / "ws" / "model"
    with FaultProxy(s3_server.endpoint, rate=3 * MiB) as proxy:
        config = config_for(tmp_path, proxy.endpoint, kinds, ("config.json", "model.safetensors"),
                            multipartThresholdMiB=2, concurrency=2)
        def partway() -> bool:
            j = _journal(model)
            return j.get("config.json") is not None and j["config.json"].done and bool(
                j.get("model.safetensors") is not None and j["model.safetensors"].digests)

        kill_midway(config, s3_env, partway)
        big = _journal(model)["model.safetensors"]
        assert not big.done and 5 * MiB <= sum(b - a for a, b in big.have) < 12 * MiB
        part = min(big.digests)
        _flip(model / "config.json", 7)
        _flip(model / "model.safetensors.part", part * 5 * MiB + 12345)

        proxy.rate, sent = 0, proxy.sent
        caplog.set_level("INFO", logger="llm_finetune")
        result = initialize(load_config(config))
    assert tree_digest(model) == {k: v for k, v in tree_digest(kinds).items() if k in ("config.json", "model.safetensors")}
    assert "config.json on the volume does not match its ETag any more" in caplog.text
    assert f"model.safetensors: bytes {part * 5 * MiB}-{part * 5 * MiB + 5 * MiB - 1} on the volume changed" in caplog.text
    kept = sum(b - a for a, b in big.have) - 5 * MiB
    assert result["model"]["transferredBytes"] == 12 * MiB - kept + (model / "config.json").stat().st_size
    assert proxy.sent - sent < 12 * MiB - kept + 64 * 1024  # GET bodies + headers of the missing bytes only
    assert read_manifest(model) is not None and not (model / JOURNAL_NAME).exists()


def test_sigterm_mid_download_stops_at_once_and_the_rerun_resumes(tmp_path, s3_server, kinds, s3_env, termination_log):
    """SIGTERM (the pod deleted) while ranges stream in through a slow link: the transfers are cut, what was
    written is recorded, one line, exit 143 within seconds; the next attempt fetches only the rest."""
    model = tmp_path / "ws" / "model"
    with FaultProxy(s3_server.endpoint, rate=2 * MiB) as proxy:
        config = config_for(tmp_path, proxy.endpoint, kinds, ("config.json", "model.safetensors"),
                            multipartThresholdMiB=2, concurrency=2)
        proc = subprocess.Popen([CLI, "initialize", "--config", str(config)], env={**os.environ, **s3_env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while (big := _journal(model).get("model.safetensors")) is None or sum(b - a for a, b in big.have) < 2 * MiB:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143 and time.monotonic() - started < 5, err
        message = "initializer: stopped by SIGTERM — what was downloaded is kept; the next attempt resumes it"
        assert termination_log.read_text() == message
        assert [line for line in err.splitlines() if "SIGTERM" in line][0].endswith(message) and "Traceback" not in err
        kept = sum(b - a for a, b in _journal(model)["model.safetensors"].have)
        assert 2 * MiB <= kept < 12 * MiB

        proxy.rate = 0
        result = initialize(load_config(config))
    assert result["model"]["transferredBytes"] <= 12 * MiB - kept + (kinds / "config.json").stat().st_size
    assert (model / "model.safetensors").read_bytes() == (kinds / "model.safetensors").read_bytes()


@pytest.mark.parametrize("etag, headers, expected", [
    ("0" * 32, {}, ("md5", "0" * 32, "ETag")),
    ("0" * 32 + "-3", {}, ("md5", "0" * 32 + "-3", "ETag")),
    # SSE-KMS / SSE-C: the ETag is not a digest of the content
    ("0" * 32, {"x-amz-server-side-encryption": "aws:kms"}, None),
    ("0" * 32, {"X-Amz-Server-Side-Encryption-Customer-Algorithm": "AES256"}, None),
    ("0" * 32, {"x-amz-server-side-encryption": "AES256"}, ("md5", "0" * 32, "ETag")),
    # a checksum of the uploading client wins (SHA-256 first), base64 -> hex, "-N" kept
    ("0" * 32, {"x-amz-checksum-crc32": "AAAAAQ==", "x-amz-checksum-sha256": "AAEC"}, ("sha256", "000102", "x-amz-checksum-sha256")),
    ("0" * 32 + "-2", {"x-amz-checksum-crc32": "AAAAAQ==-2"}, ("crc32", "00000001-2", "x-amz-checksum-crc32")),
    ("x" * 32, {"x-amz-server-side-encryption": "aws:kms", "x-amz-checksum-crc32": "AAAAAQ=="}, ("crc32", "00000001", "x-amz-checksum-crc32")),
    ("not-an-md5", {}, None),
])
def test_what_an_object_is_verified_against(etag, headers, expected):
    got = expected_checksum(etag, headers)
    assert (got if got is None else (got.algorithm, got.value, got.source)) == expected


def test_journal_ignores_a_torn_line_and_other_versions(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.record("a", 10, "e1", have=[0, 4])
    j.record("a", 10, "e1", have=[4, 6])
    j.record("a", 10, "e1", part=0, digest="ab")
    j.record("b", 5, "x", have=[0, 5])
    j.record("b", 6, "y", have=[0, 2])  # another version of b: the older records are dropped
    j.close()
    with open(tmp_path / "j.jsonl", "a") as fh:
        fh.write('{"path": "a", "size": 10, "etag": "e1", "have": [6, ')  # killed mid-write
    entries = j.load()
    assert entries["a"].have == [(0, 6)] and entries["a"].digests == {0: "ab"}
    assert (entries["b"].size, entries["b"].have) == (6, [(0, 2)])
    j.compact(entries)
    assert j.load() == entries


# -- Hugging Face Hub -------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub_repo(hf_hub) -> tuple[object, dict[str, bytes]]:
    """org/integrity: a 2 MiB LFS file (sha256) and small git files (blob id)."""
    rnd = __import__("random").Random(16)
    files = {"config.json": b'{"model_type": "llama"}\n', "tokenizer.json": rnd.randbytes(40_000),
             "model.safetensors": rnd.randbytes(2 * MiB)}
    hf_hub.add_model_repo("org/integrity", files=files)
    return hf_hub, files


def hub_config(tmp_path: Path, kinds: Path, concurrency: int = 2) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_config(tmp_path, model={"uri": "hf://org/integrity"}, dataset={"uri": str(kinds)},
                        download={"retryBackoffSeconds": 0.02, "concurrency": concurrency})


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_hub_files_damaged_on_the_way_are_fetched_again_then_an_error(tmp_path, hub_repo, kinds, termination_log):
    hub, files = hub_repo
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": ""}
    hub.corrupt_next(1, "/model.safetensors")
    hub.corrupt_next(1, "/config.json")
    proc = run_cli(hub_config(tmp_path / "a", kinds), env)
    assert proc.returncode == 0, proc.stderr
    assert tree_digest(tmp_path / "a" / "ws" / "model") == _digests(files)
    assert "model.safetensors: LFS sha256 says " in proc.stderr and "config.json: git blob id says " in proc.stderr
    recorded = {f["path"]: f["checksum"]["algorithm"] for f in read_manifest(tmp_path / "a" / "ws" / "model")["files"]}
    assert recorded == {"config.json": "git-sha1", "tokenizer.json": "git-sha1", "model.safetensors": "sha256"}

    hub.corrupt_next(3, "/tokenizer.json")
    proc = run_cli(hub_config(tmp_path / "b", kinds), env)
    assert proc.returncode == 1, proc.stderr
    assert termination_log.read_text().startswith(
        "initializer: model.uri: hf://org/integrity@"), termination_log.read_text()
    assert "/tokenizer.json does not match its git blob id after 3 downloads: the source says " in \
        termination_log.read_text()


def test_hub_kill_9_resumes_by_range_and_keeps_only_what_hashes_to_the_listed_digest(tmp_path, hub_repo, kinds):
    hub, files = hub_repo
    model = tmp_path / "ws" / "model"
    with FaultProxy(hub.endpoint, rate=400 * 1024) as proxy:  # the Hub behind a slow link
        config = hub_config(tmp_path, kinds, concurrency=4)  # the 3 files (the big one as 2 ranges) at once

        def partway() -> bool:  # the small files are in place, and half a MiB of the 2 MiB one is recorded
            big = _journal(model).get("model.safetensors")
            return (model / "config.json").exists() and (model / "tokenizer.json").exists() and big is not None \
                and sum(b - a for a, b in big.have) >= MiB // 2

        kill_midway(config, {"HF_ENDPOINT": proxy.endpoint, "HF_TOKEN": ""}, partway)
    assert read_manifest(model) is None and not (model / "model.safetensors").exists()
    kept = sum(b - a for a, b in _journal(model)["model.safetensors"].have)
    _flip(model / "config.json", 3)
    seen = len(hub.requests)
    proc = run_cli(config, {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": ""})
    assert proc.returncode == 0, proc.stderr
    assert tree_digest(model) == _digests(files)
    assert "config.json on the volume does not match its git blob id any more" in proc.stderr
    gets = [r for r in hub.requests[seen:] if r.method == "GET" and "/resolve/" in r.path]
    big = [r for r in gets if r.path.endswith("/model.safetensors")]
    assert all(r.status == 206 for r in big) and sum(r.sent for r in big) == 2 * MiB - kept  # the rest only
    assert not [r for r in gets if r.path.endswith("/tokenizer.json")]  # complete and verified: kept
