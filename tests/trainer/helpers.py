"""Helpers for the trainer tests: job configs on tmp folders, datasets with manifests, subprocess runs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from llm_finetune.local.demo_assets import ALPACA_TEMPLATE, write_dataset
from llm_finetune.core.volume import write_manifest

PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
LLM_FINETUNE = str(Path(sys.executable).parent / "llm-finetune")


def dataset_dir(base: Path, style: str, *, n_train: int = 120, n_eval: int = 12) -> Path:
    """Demo rows in ``style`` as train.jsonl/test.jsonl plus the initializer's completion manifest."""
    d = write_dataset(base / f"dataset-{style}", n_train=n_train, n_eval=n_eval, style=style)
    files = [{"path": p.name, "size": p.stat().st_size} for p in sorted(d.glob("*.jsonl"))]
    write_manifest(d, {"kind": "dataset", "source": f"s3://demo/{style}", "revision": f"etag-{style}", "sourceKey": style,
                       "layout": "files", "fileType": "jsonl",
                       "splits": {"train": ["train.jsonl"], "test": ["test.jsonl"]}, "files": files})
    return d


INSTRUCTION_DATA = {"format": "instruction", "promptTemplate": ALPACA_TEMPLATE, "responseColumn": "output"}


def make_config(root: Path, name: str, model_dir: Path, dataset_dir: Path, **sections: Any) -> Path:
    """A job config like the chart renders, with every path under ``root``; returns its file."""
    ws = root / "ws"
    cfg: dict[str, Any] = {
        "apiVersion": "llm-finetune/v1",
        "run": {"name": name, "id": ""},
        "paths": {"workspace": str(ws), "model": str(ws / "model"), "dataset": str(ws / "dataset"),
                  "cache": str(ws / "cache"), "run": str(ws / "runs" / name)},
        "storage": {"mode": "shared"},
        "model": {"uri": str(model_dir)},
        "dataset": {"uri": str(dataset_dir)},
        "data": {"maxSeqLength": 256},
        "training": {"method": "lora", "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"},
                     "args": {"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 0.003, "logging_steps": 1,
                              "save_strategy": "steps", "save_steps": 100, "seed": 0}},
    }
    for key, value in sections.items():
        merged = copy.deepcopy(cfg.get(key, {}))
        if isinstance(value, dict) and isinstance(merged, dict):
            for k, v in value.items():
                if isinstance(v, dict) and isinstance(merged.get(k), dict):
                    merged[k] = {**merged[k], **v}
                else:
                    merged[k] = v
            cfg[key] = merged
        else:
            cfg[key] = value
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def trainer_env(root: Path, **extra: str) -> dict[str, str]:
    """A pod-like environment: node-local /tmp under ``root``, no GPU, termination log in ``root``."""
    tmp = root / "node-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_TOKEN", "LLM_FINETUNE_"))}
    env.update({"TMPDIR": str(tmp), "HF_HOME": str(tmp / "hf-home"), "HF_HUB_OFFLINE": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
                "LLM_FINETUNE_TERMINATION_LOG": str(root / "termination-log")})
    env.update(extra)
    return env


def run_trainer(config: Path, env: dict[str, str], *, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m llm_finetune train --config`` as the pod runs it; stdout+stderr in ``.output``."""
    proc = subprocess.run([PYTHON, "-m", "llm_finetune", "train", "--config", str(config)], env=env, cwd=config.parent,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    proc.output = proc.stdout  # type: ignore[attr-defined]
    return proc


def read_config(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def run_dir(config: Path) -> Path:
    return Path(read_config(config)["paths"]["run"])


def output_manifest(config: Path) -> dict[str, Any]:
    return json.loads((run_dir(config) / "output" / "manifest.json").read_text())


def logged_losses(config: Path) -> list[float]:
    metrics = json.loads((run_dir(config) / "output" / "metrics.json").read_text())
    return [h["loss"] for h in metrics["log_history"] if "loss" in h]


def prepared_train(config: Path):
    """The prepared (tokenized/packed) training set the trainer cached for this config."""
    import datasets

    cache = Path(read_config(config)["paths"]["cache"])
    found = sorted(cache.glob("*/train"))
    assert len(found) == 1, found
    return datasets.load_from_disk(str(found[0]))
