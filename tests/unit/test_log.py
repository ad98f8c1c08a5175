"""core/log: the log level follows the *process* rank (issue 14, item 10).

The Training Operator sets ``RANK`` (the pod's node rank) on every container of a PyTorchJob pod
with a Master (kubeflow/training-operator@v1.9.0:pkg/controller.v1/pytorch/envvar.go); torchrun
sets ``RANK`` together with ``LOCAL_RANK`` on the processes it starts. Only the latter is a
process rank: a launcher on node 2 logs at INFO, a torchrun child with rank 3 at WARNING.
"""

from __future__ import annotations

import logging

import pytest

from llm_finetune.core import log


@pytest.fixture
def rank_env(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LLM_FINETUNE_LOG_ALL_RANKS", "LLM_FINETUNE_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    yield monkeypatch
    for h in list(root.handlers):
        if h not in saved[1]:
            root.removeHandler(h)
    root.setLevel(saved[0])


@pytest.mark.parametrize("env, rank, level, prefix", [
    ({"RANK": "2", "WORLD_SIZE": "3"}, 0, logging.INFO, ""),  # a Worker pod's launcher: the operator's node rank
    ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}, 3, logging.WARNING, "[rank 3] "),  # a torchrun child
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}, 0, logging.INFO, "[rank 0] "),
    ({}, 0, logging.INFO, ""),
])
def test_the_level_follows_the_process_rank_not_the_pods_rank(rank_env, capsys, env, rank, level, prefix):
    for k, v in env.items():
        rank_env.setenv(k, v)
    assert log.process_rank() == rank
    log.setup_logging()
    assert logging.getLogger().level == level
    logging.getLogger("llm_finetune.test").warning("hello")
    assert f"WARNING {prefix}llm_finetune.test: hello" in capsys.readouterr().err
