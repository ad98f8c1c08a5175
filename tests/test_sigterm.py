"""SIGTERM to each command as a real process (what kubelet sends when a pod is deleted, evicted
or preempted): one log line, the termination message, exit 143 (retried under
``restartPolicy: ExitCode``), and no traceback.

The commands are stopped while they wait on the network: a server that accepts connections
and never answers stands in for S3 and for the Kubernetes API. The trainer stopped mid-run is
tested in tests/trainer/test_distributed.py, the initializer mid-download in
tests/initializer/test_integrity.py.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llm_finetune.local.s3server import free_port
from trainer.helpers import make_config, trainer_env

LLM_FINETUNE = str(Path(sys.executable).parent / "llm-finetune")


class BlackHole:
    """Accepts TCP connections, reads what comes, never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted += 1

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def hole():
    h = BlackHole()
    yield h
    h.close()


def _kubeconfig(path: Path, port: int) -> Path:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u, namespace: ml}}}}]
current-context: x
""")
    return path


def _stop_when(proc: subprocess.Popen, ready, timeout: float = 120) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the command never got to its blocking call"
        time.sleep(0.05)
    time.sleep(0.2)  # inside the call, not on its way to it
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10, "the command took too long to stop"
    return proc.returncode, err


@pytest.mark.parametrize("command, step, hint", [
    ("initialize", "initializer", " — what was downloaded is kept; the next attempt resumes it"),
    ("preflight", "preflight", ""),
    ("verify", "verify", ""),
])
def test_sigterm_stops_a_command_with_one_line_its_message_and_143(command, step, hint, tmp_path, hole, demo_dataset_dir):
    config = make_config(tmp_path, "sig", demo_dataset_dir, demo_dataset_dir,
                         model={"uri": "s3://bucket/model", "s3": {"endpointUrl": f"http://127.0.0.1:{hole.port}"}})
    env = {**trainer_env(tmp_path), "KUBECONFIG": str(_kubeconfig(tmp_path / "kubeconfig", hole.port)),
           "POD_NAMESPACE": "ml", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-example",
           "AWS_EC2_METADATA_DISABLED": "true", "LLM_FINETUNE_KUBE_BACKOFF": "0"}
    proc = subprocess.Popen([LLM_FINETUNE, command, "--config", str(config)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    code, err = _stop_when(proc, lambda: hole.accepted > 0)
    assert code == 143, err
    assert [line.split(": ", 1)[1] for line in err.splitlines() if "SIGTERM" in line] == \
        [f"{step}: stopped by SIGTERM{hint}"], err
    assert "Traceback" not in err
    assert (tmp_path / "termination-log").read_text() == f"{step}: stopped by SIGTERM{hint}"


def test_sigterm_stops_launch_while_it_waits_for_the_other_pods(tmp_path, demo_dataset_dir):
    """The trainer pod's launcher, before its workers exist (rendezvous waits for a second pod)."""
    config = make_config(tmp_path, "sig", demo_dataset_dir, demo_dataset_dir)
    port = free_port()
    env = {**trainer_env(tmp_path), "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "0",
           "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
    proc = subprocess.Popen([LLM_FINETUNE, "launch", "--config", str(config)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def listening() -> bool:  # the rendezvous store of node 0 is up: it waits for node 1
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    code, err = _stop_when(proc, listening)
    assert code == 143, err
    message = "launch: stopped by SIGTERM before the workers started"
    assert (tmp_path / "termination-log").read_text() == message
    assert [line for line in err.splitlines() if "SIGTERM" in line][-1].endswith(message), err
    assert "Traceback" not in err


SWALLOWING = """
import sys, time, weakref
from pathlib import Path
from llm_finetune.core.errors import guarded
from llm_finetune.core.log import setup_logging

class Connection:
    pass

def close():  # a finalizer that takes a while (urllib3 closing a pool): SIGTERM lands in it
    time.sleep(0.3)

@guarded("demo", terminated="what was done is kept")
def main():
    Path(sys.argv[1]).touch()
    while True:
        if sys.argv[2] == "finalizer":
            c = Connection()
            weakref.finalize(c, close)
            del c  # the finalizer runs here; what it raises, Python prints as "Exception ignored" and goes on
        else:  # a library that takes every exception, BaseException included
            try:
                time.sleep(0.3)
            except BaseException:
                pass

setup_logging()
sys.exit(main())
"""


@pytest.mark.parametrize("where", ["finalizer", "except"])
def test_sigterm_swallowed_where_it_lands_still_stops_the_command(where, tmp_path):
    """The signal handler's exception raised inside a weakref finalizer (seen: the initializer kept downloading
    after SIGTERM, urllib3 closing a pool) or taken by a library's ``except BaseException``: the command stops
    all the same, with its one line, its message and 143."""
    ready = tmp_path / "ready"
    env = {"LLM_FINETUNE_TERMINATION_LOG": str(tmp_path / "termination-log"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-c", SWALLOWING, str(ready), where], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        code, err = _stop_when(proc, ready.exists)
    finally:
        if proc.poll() is None:  # it did not stop: end it, not to leave it looping
            proc.kill()
            proc.wait()
    assert code == 143, err
    message = "demo: stopped by SIGTERM — what was done is kept"
    assert (tmp_path / "termination-log").read_text() == message
    assert [line for line in err.splitlines() if "SIGTERM" in line][0].endswith(message), err
    assert "Traceback" not in err and "Exception ignored" not in err
