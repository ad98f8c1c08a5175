"""Fixtures for the storage initializer tests: sources uploaded to the session's SeaweedFS server."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "init-src"


@dataclass
class S3Assets:
    endpoint: str
    env: dict[str, str]
    model_dir: Path  # s3://init-src/models/tiny/
    dataset_dir: Path  # s3://init-src/data/demo/
    many_dir: Path  # s3://init-src/many/ : 60 small jsonl objects in nested prefixes + a ~3 MiB one


@pytest.fixture(scope="session")
def s3_assets(s3_server, tiny_model_dir, demo_dataset_dir, tmp_path_factory) -> S3Assets:
    """Sources uploaded once per session to the SeaweedFS server (auth on)."""
    client = s3_server.client()
    s3_server.create_bucket(BUCKET)
    many = tmp_path_factory.mktemp("many")
    rng = random.Random(7)

    def rows(n: int) -> bytes:
        return b"".join(b'{"text": "%s"}\n' % rng.randbytes(40).hex().encode() for _ in range(n))

    for i in range(60):
        p = many / f"level{i % 3}" / f"sub{i % 5}" / f"train-{i:03d}.jsonl"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rows(rng.randint(10, 180)))
    (many / "blob").mkdir()
    (many / "blob" / "train-big.jsonl").write_bytes(rows(36_000))  # ~3.1 MiB: multipart above 1 MiB
    uploads = [(tiny_model_dir, "models/tiny/"), (demo_dataset_dir, "data/demo/"), (many, "many/")]
    for src, prefix in uploads:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                client.upload_file(str(p), BUCKET, prefix + p.relative_to(src).as_posix())
    # A sibling whose name extends the prefix: s3://init-src/models/tiny must not pick it up.
    client.put_object(Bucket=BUCKET, Key="models/tiny-v2/config.json", Body=b"{}")
    return S3Assets(s3_server.endpoint, s3_server.env(), tiny_model_dir, demo_dataset_dir, many)


@pytest.fixture
def s3_env(s3_assets, monkeypatch) -> dict[str, str]:
    """Credentials in this process's environment (in-process runs) and for subprocesses."""
    for k, v in s3_assets.env.items():
        monkeypatch.setenv(k, v)
    return s3_assets.env


@pytest.fixture(autouse=True)
def _restore_hub_env(monkeypatch):
    """In-process runs set HF_* variables (prepare_environment): undo them after each test."""
    for name in ("HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
