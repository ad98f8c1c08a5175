"""``llm-finetune launch``: torchrun for the trainer, with the failed worker's exit code.

The trainer container runs ``llm-finetune launch --config /etc/llm-finetune/config.yaml``:
torchrun's own launcher (``torch.distributed.run``) in this process, starting
``python -m llm_finetune train --config ...`` on ``nprocPerNode`` local processes. Its
options come from the ``PET_*`` variables the Training Operator sets (``PET_NNODES``,
``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``), as
plain ``torchrun`` reads them.

Why not plain ``torchrun``: it exits 1 whenever a worker fails, so under
``restartPolicy: ExitCode`` the trainer's retryable codes (143: stopped by SIGTERM after a
checkpoint, 202: a remote service kept failing) would become permanent failures. Here the
pod exits with the first failed worker's own code (128+N when a signal N killed it), and
with 128+N when the pod itself gets signal N. The worker's termination message is kept:
the launcher writes none of its own for a worker failure.

In the chart it is also where every failure of the pod reaches the Training Operator, which
reads the exit code of this (``pytorch``) container only
(kubeflow/training-operator@v1.9.0:pkg/controller.v1/common/pod.go:339-373):

* ``--initializer-outcome FILE``: the init container's outcome (``initialize --outcome``); a
  failure there ends the pod here with the initializer's code and message, before torch loads.
* the attempt ledger (:mod:`llm_finetune.core.attempts`): a retryable failure (>= 128) of the
  last attempt ``job.runPolicy.backoffLimit`` allows becomes permanent (exit 1, "gave up ...").
* every failure is also posted as an Event on the PyTorchJob (:mod:`llm_finetune.core.events`),
  so ``kubectl describe pytorchjob`` shows the one line.
* the pods could not meet (rendezvous timeout, the first pod's address never resolved): 202.

``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` (set by the chart from
``job.terminationGracePeriodSeconds``) is how long workers get to save a checkpoint after
SIGTERM before torchrun kills them.
"""

from __future__ import annotations

import argparse
import logging
import os

from typing import Any

from ..core import attempts, events
from ..core.config import DEFAULT_CONFIG_PATH, load_config
from ..core.errors import (EXIT_EXTERNAL_ERROR, EXIT_INTERNAL_ERROR, EXIT_TERMINATED, EXIT_USER_ERROR, read_outcome,
                           termination_log_path, write_termination_message)
from ..core.pod import pod_name
from ..core.proc import LAUNCHER_PID_ENV, exit_on_sigterm

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH,
                        help=f"job config written by the chart (default: {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--initializer-outcome", default=None, metavar="FILE",
                        help="the init container's outcome (initialize --outcome FILE): its failure is this pod's")


def worker_argv(config: str) -> list[str]:
    """torchrun's arguments: every launcher option from PET_* env, then the trainer module."""
    return ["-m", "llm_finetune", "train", "--config", config]


def exit_code_of_failure(exitcode: int) -> int:
    """A worker's exit code as a shell reports it: negative (killed by signal N) -> 128+N."""
    if exitcode < 0:
        return 128 + (-exitcode)
    return exitcode if 0 < exitcode < 256 else EXIT_INTERNAL_ERROR


def run(args: argparse.Namespace) -> int:
    before = _termination_log()  # a worker's own message wins over ours
    cfg = _config(args.config)
    attempt = attempts.current(cfg.paths.run, pod_name(), cfg.run.backoff_limit) if cfg and args.initializer_outcome else None
    outcome = read_outcome(args.initializer_outcome) if args.initializer_outcome else None
    if outcome is not None and outcome[0] != 0:
        code, message = outcome
        write_termination_message(message)
        log.error("the storage-initializer failed (exit %d); this pod ends with it: %s", code, message)
        return _finish(cfg, attempt, code, message, "InitializerFailed")

    def stopped() -> int:  # until torchrun handles SIGTERM itself (once its workers run)
        msg = "launch: stopped by SIGTERM before the workers started"
        log.warning(msg)
        write_termination_message(msg)
        return _finish(cfg, attempt, EXIT_TERMINATED, msg, "TrainerFailed")

    exit_on_sigterm(stopped)  # torchrun may be blocked in its rendezvous store (C++)
    code = _launch(args, before)
    return _finish(cfg, attempt, code, _failure_message(code), "TrainerFailed")


def _config(path: str) -> Any:
    try:
        return load_config(path)
    except Exception:  # noqa: BLE001 - the trainer reports a bad config with its own message
        return None


def _finish(cfg: Any, attempt: attempts.Attempt | None, code: int, message: str, reason: str) -> int:
    """Close the pod's attempt (a retryable failure of the last one allowed becomes exit 1) and post the Event."""
    if attempt is not None:
        gave_up = attempt.finish(code, message)
        if gave_up:
            code, message, reason = EXIT_USER_ERROR, f"launch: {gave_up}", "GaveUp"
            log.error(message)
            write_termination_message(message)
    if code != 0 and cfg is not None:
        kind = "permanent: the job fails" if code < 128 else "retried: the pod is recreated"
        events.report(cfg.run.name, reason, f"{pod_name()}: {message} (exit {code}, {kind})")
    return code


def _failure_message(code: int) -> str:
    """The one line a failed worker (or this launcher) wrote to the termination log."""
    if code == 0:
        return ""
    text = (_termination_log() or b"").decode("utf-8", "replace").strip()
    return text.splitlines()[-1] if text else f"a trainer process exited with code {code}"


def _launch(args: argparse.Namespace, before: bytes | None) -> int:
    from torch.distributed import DistNetworkError, DistStoreError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    targs = parse_args(worker_argv(args.config))
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # the workers die with this process (core.proc)
    try:
        torchrun(targs)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = exit_code_of_failure(failure.exitcode)
        log.error("launch: worker rank %s failed with exit code %s; the pod exits %s", rank, failure.exitcode, code)
        return code
    except SignalException as exc:
        code = 128 + int(exc.sigval)
        log.warning("launch: got signal %s; workers were asked to checkpoint and stop; exiting %s", exc.sigval, code)
        if _termination_log() == before:
            write_termination_message(f"launch: stopped by signal {exc.sigval}; the workers were asked to checkpoint "
                                      "and stop")
        return code
    except (RendezvousError, DistNetworkError, DistStoreError) as exc:  # the pods did not meet in time: retryable
        msg = f"launch: the pods of the job could not meet (rendezvous): {type(exc).__name__}: {str(exc).splitlines()[0]}"
        log.error(msg)
        write_termination_message(msg)
        return EXIT_EXTERNAL_ERROR
    except Exception as exc:  # noqa: BLE001 - rendezvous/launcher failures: no worker wrote a message
        log.exception("launch: torchrun failed")
        write_termination_message(f"launch: torchrun failed: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL_ERROR
    return 0


def _termination_log() -> bytes | None:
    try:
        with open(termination_log_path(), "rb") as fh:
            return fh.read()
    except OSError:
        return None
