"""The run's output folder (rank 0), written to a temporary folder next to it, then renamed.

``<paths.run>/output/``::

    adapter_config.json, adapter_model.safetensors   (kind adapter: lora, dora, qlora)
    config.json, model*.safetensors                  (kind model: full fine-tuning)
    tokenizer files, training_args.bin
    merged/        base + adapter merged (output.mergeAdapter; lora/dora)
    logs/          TensorBoard event files (copy of <paths.run>/logs)
    metrics.json   {"train": {...}, "eval": {...}|null, "log_history": [...], "global_step", "world_size"}
    manifest.json  written last (see the keys below)

``manifest.json`` keys (stable; ``llm-finetune verify`` and users read them):

* ``kind``: ``adapter`` | ``model``; ``task``: ``causal-lm`` | ``sequence-classification``;
  ``method``: ``lora`` | ``dora`` | ``qlora`` | ``full``; ``numLabels`` and ``labelNames``
  (classification: class count, and the names of string labels in id order; else null);
* ``baseModel``: ``{uri, revision, transformerType}`` (revision from the model folder's
  completion manifest: the resolved commit / ETag digest); ``dataset``: ``{uri, revision, name, split, format}``;
* ``merged``: ``"merged"`` (relative folder) or null;
* ``metrics``: ``{train, eval}`` as in metrics.json; ``globalStep``; ``worldSize``;
* ``config``: the job config (``config.to_dict()``; it never holds secrets);
* ``packageVersion`` (``llm_finetune.__version__``), ``createdAt`` (UTC, ISO 8601);
* ``files``: ``[{path, size, sha256}]`` of every other file, relative to the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..core.config import JobConfig
from ..core.volume import OUTPUT_MANIFEST, atomic_write_json, read_manifest, sha256_file, walk_files

log = logging.getLogger(__name__)

METRICS = "metrics.json"


def staging_dir(cfg: JobConfig) -> Path:
    out = Path(cfg.output_dir)
    return out.parent / f".{out.name}-tmp-{os.getpid()}"


def fresh_staging_dir(cfg: JobConfig) -> Path:
    """An empty staging folder (rank 0); what killed attempts left next to the output goes first:
    their staging folders (``.output-tmp-PID``) and outputs set aside while replaced (``.output-old-PID``)."""
    out = Path(cfg.output_dir)
    for left in out.parent.glob(f".{out.name}-*-*"):
        if left.is_dir() and not left.is_symlink():
            log.info("removing %s, left by an earlier attempt", left)
            shutil.rmtree(left, ignore_errors=True)
    return staging_dir(cfg)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def build_manifest(cfg: JobConfig, folder: Path, *, kind: str, fmt: str, num_labels: int | None, merged: bool,
                   metrics: dict[str, Any], label_names: list[str] | None = None) -> dict[str, Any]:
    from ..core.version import __version__

    model_m = read_manifest(cfg.model_dir) or {}
    data_m = read_manifest(cfg.dataset_dir) if os.path.isdir(cfg.dataset_dir) else None
    files = [{"path": p, "size": (folder / p).stat().st_size, "sha256": sha256_file(folder / p)}
             for p in walk_files(folder) if p != OUTPUT_MANIFEST]
    return {
        "kind": kind,
        "task": cfg.task,
        "method": cfg.training.method,
        "numLabels": num_labels,
        "labelNames": label_names,
        "baseModel": {"uri": cfg.model.uri, "revision": model_m.get("revision", ""),
                      "transformerType": cfg.model.transformer_type},
        "dataset": {"uri": cfg.dataset.uri, "revision": (data_m or {}).get("revision", ""), "name": cfg.dataset.name,
                    "split": cfg.dataset.split, "format": fmt},
        "merged": "merged" if merged else None,
        "metrics": {"train": metrics.get("train"), "eval": metrics.get("eval")},
        "globalStep": metrics.get("global_step"),
        "worldSize": metrics.get("world_size"),
        "config": cfg.to_dict(),
        "packageVersion": __version__,
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }


def finish_output(cfg: JobConfig, staging: Path, *, trainer, tokenizer, kind: str, fmt: str, num_labels: int | None,
                  metrics: dict[str, Any], label_names: list[str] | None = None, sharded: bool = False) -> Path:
    """Complete the staging folder (the model is already saved in it) and move it into place.

    ``sharded`` (FSDP): the trained weights are shards on every rank, so the adapter is merged
    from its saved files into a freshly loaded base model instead of in memory.
    """
    merged = False
    if cfg.output.merge_adapter:
        log.info("merging the adapter into the base model")
        if sharded:
            from .fsdp import merge_saved_adapter

            merge_saved_adapter(cfg, staging, staging / "merged", tokenizer, num_labels=num_labels, label_names=label_names)
        else:
            model = trainer.model.merge_and_unload()
            model.save_pretrained(str(staging / "merged"), safe_serialization=True)
            tokenizer.save_pretrained(str(staging / "merged"))
        merged = True
    if os.path.isdir(cfg.logs_dir):
        shutil.copytree(cfg.logs_dir, staging / "logs", dirs_exist_ok=True)
    metrics = {k: _jsonable(v) for k, v in metrics.items()}
    atomic_write_json(staging / METRICS, metrics)
    manifest = build_manifest(cfg, staging, kind=kind, fmt=fmt, num_labels=num_labels, merged=merged, metrics=metrics,
                              label_names=label_names)
    atomic_write_json(staging / OUTPUT_MANIFEST, manifest)
    return replace_dir(staging, Path(cfg.output_dir))


def replace_dir(staging: Path, target: Path) -> Path:
    """Rename ``staging`` to ``target``, replacing an earlier output (moved aside first, then deleted)."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}-old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
