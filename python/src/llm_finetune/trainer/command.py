"""``llm-finetune train``: one trainer process (``launch`` starts one per local rank).

The chart runs ``llm-finetune launch --config /etc/llm-finetune/config.yaml``, which is
torchrun starting this command on each local process (torchrun reads the ``PET_*``
variables the Training Operator sets; see :mod:`.launch`); ``python -m
llm_finetune train --config ...`` runs it as a single process. Exit codes: 0 done, 1 bad
input (config, data, model, credentials), 143 stopped by SIGTERM after a checkpoint (the
next attempt resumes), 202 a remote service kept failing (export), 203 a bug.
"""

from __future__ import annotations

import argparse

from ..core.config import DEFAULT_CONFIG_PATH
from ..core.errors import guarded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH,
                        help=f"job config written by the chart (default: {DEFAULT_CONFIG_PATH})")


@guarded("trainer")
def run(args: argparse.Namespace) -> int:
    from ..core.config import load_config
    from .checkpoints import StopFlag

    stop = StopFlag()
    stop.install()
    _die_with_launcher()
    cfg = load_config(args.config)
    from .run import train

    try:
        return train(cfg, stop)
    finally:
        _teardown()


def _die_with_launcher() -> None:
    """Under ``launch``: SIGTERM when the launcher dies, however it dies. torchrun starts each worker in a
    session of its own, so nothing else reaches a worker whose launcher was killed (run-local, a node agent)."""
    import os

    from ..core.errors import Terminated
    from ..core.proc import LAUNCHER_PID_ENV, die_with_parent

    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    if launcher.isdigit() and not die_with_parent(int(launcher)):
        raise Terminated("the launcher (PID %s) is gone: nothing to train for" % launcher)


def _teardown() -> None:
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
