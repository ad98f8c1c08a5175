"""Helpers for the storage initializer tests: config files, the real CLI, file digests."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

CLI = str(Path(sys.executable).parent / "llm-finetune")


def write_config(directory: Path, *, model: dict, dataset: dict, download: dict | None = None,
                 workspace: Path | None = None) -> Path:
    """A job config as the chart renders it, with its workspace under ``directory``."""
    ws = workspace or directory / "ws"
    cfg = {
        "apiVersion": "llm-finetune/v1",
        "run": {"name": "test", "id": ""},
        "paths": {"workspace": str(ws), "model": str(ws / "model"), "dataset": str(ws / "dataset"),
                  "cache": str(ws / "cache"), "run": str(ws / "runs" / "test")},
        "storage": {"mode": "shared"},
        "model": model,
        "dataset": dataset,
        "download": {"retries": 3, "retryBackoffSeconds": 0.05, **(download or {})},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(config: Path, env: dict[str, str] | None = None, *args: str, timeout: float = 180):
    """``llm-finetune initialize --config CONFIG`` as the init container runs it."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([CLI, "initialize", "--config", str(config), *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (hidden entries and the manifest excluded)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out




def kill_midway(config: Path, env: dict[str, str], ready, *, timeout: float = 90) -> None:
    """Start ``llm-finetune initialize`` and SIGKILL it as soon as ``ready()`` is true (it must not end first)."""
    import signal
    import time

    proc = subprocess.Popen([CLI, "initialize", "--config", str(config)], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the download did not get there in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
