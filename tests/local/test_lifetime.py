"""Processes die with their parent, however it dies (core/proc.py), with real processes and SIGKILL.

The chain is run-local's: a thread of the parent starts a "launcher" in a session of its own
(``parent_death_signal``), which starts a "worker" in another session, as torchrun does; the
worker ties itself to the launcher (``die_with_parent``), as ``llm-finetune train`` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from llm_finetune.core.proc import LAUNCHER_PID_ENV

PARENT = textwrap.dedent("""
    import subprocess, sys, threading, time
    from llm_finetune.core.proc import parent_death_signal

    def pod():
        subprocess.Popen([sys.executable, sys.argv[1], "launcher", sys.argv[2]], start_new_session=True,
                         preexec_fn=parent_death_signal()).wait()

    threading.Thread(target=pod).start()
    time.sleep(600)
""")
CHILD = textwrap.dedent("""
    import os, subprocess, sys, time
    from pathlib import Path
    role, out = sys.argv[1], Path(sys.argv[2])
    if role == "launcher":
        os.environ["%s"] = str(os.getpid())
        subprocess.Popen([sys.executable, __file__, "worker", str(out)], start_new_session=True)
    else:
        from llm_finetune.core.proc import die_with_parent
        assert die_with_parent(int(os.environ["%s"]))
    (out / role).write_text(str(os.getpid()))
    time.sleep(600)
""") % (LAUNCHER_PID_ENV, LAUNCHER_PID_ENV)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_killed_parent_takes_its_children_and_their_sessions_with_it(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(child), str(tmp_path)])
    try:
        _wait_until(lambda: (tmp_path / "worker").exists() and (tmp_path / "launcher").exists(), 60, "no worker")
        launcher, worker = (int((tmp_path / name).read_text()) for name in ("launcher", "worker"))
        os.kill(parent.pid, signal.SIGKILL)
        _wait_until(lambda: _gone(launcher) and _gone(worker), 20, "the launcher or the worker outlived the parent")
    finally:
        parent.kill()
        parent.wait()


def test_a_worker_whose_launcher_is_already_gone_stops_at_once(tmp_path, demo_dataset_dir):
    """``train`` started after its launcher died (the parent it was told about is not its parent): exit 143."""
    from trainer.helpers import make_config, trainer_env

    config = make_config(tmp_path, "orphan", demo_dataset_dir, demo_dataset_dir)
    env = {**trainer_env(tmp_path), LAUNCHER_PID_ENV: "1"}
    proc = subprocess.run([sys.executable, "-m", "llm_finetune", "train", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert (tmp_path / "termination-log").read_text() == \
        "trainer: the launcher (PID 1) is gone: nothing to train for"
