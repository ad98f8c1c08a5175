"""The embedded default of ``make run``: demo assets served by a local S3 server.

The tiny model and the instruction dataset come from :mod:`llm_finetune.local.demo_assets`
(deterministic, no network). They are uploaded to a SeaweedFS server started in the
workdir, with authentication on; the credentials reach the chart's containers the way
a Kubernetes Secret would (``secrets.s3.existingSecret`` → env), and the values'
S3 endpoints are pointed at the server with ``--set``.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from pathlib import Path

from .demo_assets import build_tiny_model, write_dataset

log = logging.getLogger(__name__)
BUCKET = "llm-finetune-demo"


def build_assets(directory: Path) -> Path:
    """Build the demo model and dataset once (reused across runs; same bytes every time)."""
    done = directory / ".complete"
    if not done.exists():
        build_tiny_model(directory / "model", pretrain_steps=600)
        write_dataset(directory / "dataset", n_train=600, n_eval=60)
        done.write_text("ok\n")
    return directory


def serve_demo(workdir: Path):
    """Start SeaweedFS, upload the demo assets; return (server, --set values, env for the pods)."""
    from .s3server import start_s3_server

    assets = build_assets(workdir / "demo-assets")
    access_key, secret_key = "demo-" + secrets.token_hex(4), secrets.token_hex(16)
    shutil.rmtree(workdir / "s3", ignore_errors=True)  # the server's data is scratch: uploaded afresh each run
    server = start_s3_server(workdir / "s3", access_key=access_key, secret_key=secret_key)
    try:
        server.create_bucket(BUCKET)
        client = server.client()
        for path in sorted(p for p in assets.rglob("*") if p.is_file() and p.name != ".complete"):
            client.upload_file(str(path), BUCKET, path.relative_to(assets).as_posix())
    except BaseException:
        server.stop()
        raise
    log.info("demo: serving the tiny model and dataset from s3://%s on %s", BUCKET, server.endpoint)
    return server, demo_sets(server.endpoint), server.env()


def demo_sets(endpoint: str) -> list[str]:
    """The --set values that point the demo values file at the local server."""
    return [f"model.s3.endpointUrl={endpoint}", f"dataset.s3.endpointUrl={endpoint}"]
