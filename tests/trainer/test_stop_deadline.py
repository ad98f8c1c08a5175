"""SIGTERM reaches a trainer whose main thread never gets back to a step's end (blocked in C code, e.g.
a gloo collective whose peer is gone): it still stops with 143 and its message, within the shutdown
timeout torchrun would wait, and at once when its launcher is gone (nothing else would ever kill it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

# The main thread blocks in a read no signal ends (PEP 475 retries it after the handler ran).
BLOCKED_TRAINER = """
import os, sys
from llm_finetune.trainer.checkpoints import StopFlag
stop = StopFlag()
stop.install()
stop.in_training = True
r, w = os.pipe()
print("ready", flush=True)
os.read(r, 1)
"""


def _start(tmp_path, **env):
    full = {**os.environ, "LLM_FINETUNE_TERMINATION_LOG": str(tmp_path / "termination-log"), **env}
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_TRAINER], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_blocked_rank_stops_with_143_at_the_shutdown_timeout(tmp_path):
    proc = _start(tmp_path, TORCH_ELASTIC_SHUTDOWN_TIMEOUT="3")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(60)
    finally:
        proc.kill()
    waited = time.monotonic() - sent
    assert code == 143, proc.stderr.read()
    assert 2.5 <= waited < 60
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith("trainer: stopped by SIGTERM (no checkpoint within 3s")
    assert "resumes from the last complete checkpoint" in message


def test_without_its_launcher_a_sigterm_stops_it_at_once(tmp_path):
    # Under launch, LAUNCHER_PID is the worker's parent; here it names another PID: the launcher is gone.
    proc = _start(tmp_path, TORCH_ELASTIC_SHUTDOWN_TIMEOUT="600", LLM_FINETUNE_LAUNCHER_PID=str(os.getpid() + 10**6))
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(60)  # far below the 600 s deadline
    finally:
        proc.kill()
    assert code == 143, proc.stderr.read()
    assert "(its launcher is gone" in (tmp_path / "termination-log").read_text()


def test_with_its_launcher_a_sigterm_leaves_the_step_time_to_finish(tmp_path):
    proc = _start(tmp_path, TORCH_ELASTIC_SHUTDOWN_TIMEOUT="600", LLM_FINETUNE_LAUNCHER_PID=str(os.getpid()))
    proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(3)
    proc.kill()
    proc.wait()
