"""The embedded default of ``make run``: demo assets served by a local S3 server.

The pretrained tiny model and the instruction dataset come from :mod:`llm_finetune.local.demo_task`
(deterministic, no network), built once per machine into ``$XDG_CACHE_HOME/llm-finetune/demo-<key>``
(``~/.cache``; the key changes with the code that builds them and the library versions) and
copied into the workdir. They are uploaded to a SeaweedFS server started in the
workdir, with authentication on; the credentials reach the chart's containers the way
a Kubernetes Secret would (``secrets.s3.existingSecret`` → env), and the values'
S3 endpoints are pointed at the server with ``--set``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
from pathlib import Path

from . import demo_task

log = logging.getLogger(__name__)
BUCKET = "llm-finetune-demo"


def build_assets(directory: Path) -> Path:
    """The demo model and dataset in ``directory``: copied from this machine's cache of them, built
    there first when missing (pretraining the base model; see :func:`assets_key`)."""
    if (directory / ".complete").exists():
        return directory
    cached = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-finetune" / f"demo-{assets_key()}"
    try:
        if not (cached / ".complete").exists():
            _build(cached.parent / f".{cached.name}-{os.getpid()}", rename_to=cached)
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(cached, directory)
    except OSError as exc:  # no writable cache: build in place
        log.warning("demo: cannot use the cache %s (%s): building in %s", cached, exc, directory)
        _build(directory)
    return directory


def assets_key() -> str:
    """What the demo assets depend on: the code that builds them and the library versions that run it."""
    from importlib.metadata import version

    from . import demo_assets

    digest = hashlib.sha256()
    for module in (demo_task, demo_assets):
        digest.update(Path(module.__file__).read_bytes())
    for dist in ("torch", "transformers", "tokenizers"):
        digest.update(f"{dist}=={version(dist)}".encode())
    return digest.hexdigest()[:16]


def _build(where: Path, rename_to: Path | None = None) -> None:
    log.info("demo: building the tiny base model (pretrained here, once per machine) and the dataset in %s",
             rename_to or where)
    shutil.rmtree(where, ignore_errors=True)
    demo_task.build_assets(where)
    (where / ".complete").write_text("ok\n")
    if rename_to is not None:
        try:
            os.rename(where, rename_to)
        except OSError:  # another run built it at the same time
            if not (rename_to / ".complete").exists():
                raise
            shutil.rmtree(where, ignore_errors=True)


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
