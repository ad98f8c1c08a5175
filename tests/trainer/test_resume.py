"""Auto-resume after a hard kill: damaged and half-written checkpoints skipped, half-written outputs removed."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time

import pytest

from llm_finetune.trainer.checkpoints import MARKER, list_checkpoints, read_marker, step_of
from trainer.helpers import PYTHON, make_config, run_dir, run_trainer, trainer_env

pytestmark = pytest.mark.slow


def test_killed_run_resumes_from_the_last_complete_checkpoint(tmp_path, tiny_model, text_dir):
    config = make_config(tmp_path, "kill", tiny_model, text_dir, data={"maxSeqLength": 64},
                         training={"args": {"max_steps": 150, "per_device_train_batch_size": 2, "save_steps": 5,
                                            "save_total_limit": 3, "logging_steps": 10}})
    env = trainer_env(tmp_path)
    checkpoints = run_dir(config) / "checkpoints"
    proc = subprocess.Popen([PYTHON, "-m", "llm_finetune", "train", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while len([p for p in list_checkpoints(checkpoints) if read_marker(p)]) < 2:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to save anything
    proc.wait(30)

    complete = [p for p in list_checkpoints(checkpoints) if read_marker(p)]
    latest, previous = complete[0], complete[1]
    # The latest complete checkpoint gets damaged; a newer one is half-written (no marker).
    weights = latest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    partial = checkpoints / f"checkpoint-{step_of(latest) + 1}"
    shutil.copytree(previous, partial)
    (partial / MARKER).unlink()

    # What a kill while the output was being written, or replaced, leaves next to it.
    stale = [run_dir(config) / ".output-tmp-4242", run_dir(config) / ".output-old-4243"]
    for d in stale:
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"half")

    again = run_trainer(config, env)
    assert again.returncode == 0, again.output
    assert not [d for d in stale if d.exists()]
    assert re.search(rf"skipping checkpoint {partial}: no completeness marker", again.output)
    assert re.search(rf"skipping checkpoint {latest}: adapter_model.safetensors has 100 bytes", again.output)
    assert f"resuming from {previous}" in again.output
    assert f"resuming at step {step_of(previous)}" in again.output
    steps = [int(s) for s in re.findall(r"step (\d+)/150", again.output)]
    assert steps and min(steps) > step_of(previous) and max(steps) == 150
    m = json.loads((run_dir(config) / "output" / "manifest.json").read_text())
    assert m["globalStep"] == 150
    assert not partial.exists()  # the half-written folder was removed before it could be mixed with new files
    kept = [p.name for p in list_checkpoints(checkpoints)]
    assert kept[0] == "checkpoint-150" and len(kept) <= 3
