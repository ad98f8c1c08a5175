"""The training and eval splits, checked against the config and formatted."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.config import CAUSAL_LM, JobConfig
from ...core.dataset import columns_of, load_volume_dataset
from ...core.errors import ConfigError, UserError
from .classification import labels_of, prepare_classification
from .formats import format_split, resolve_format


@dataclass
class Splits:
    train: Any
    eval: Any | None
    format: str
    label_names: list[str] | None = None  # sequence classification with string labels


def load_splits(cfg: JobConfig, tokenizer, scratch: Path, seed: int) -> Splits:
    """Load, check, split and format the dataset (not yet tokenized for causal LM)."""
    dd = load_volume_dataset(cfg, scratch / "hf-datasets")
    train = _train_split(cfg, dd)
    fmt = resolve_format(cfg, columns_of(dd), train[0], tokenizer)
    train, evalds = _eval_split(cfg, dd, train, scratch, seed)
    train, evalds = _capped(train, cfg.data.max_train_samples), _capped(evalds, cfg.data.max_eval_samples)
    if cfg.model.transformer_type == CAUSAL_LM:
        train = format_split(train, cfg, fmt, scratch, "train")
        evalds = format_split(evalds, cfg, fmt, scratch, "eval") if evalds is not None else None
        return Splits(train, evalds, fmt)
    label_names, seen = labels_of(train, cfg.data.label_column)
    if cfg.model.num_labels is not None and seen > cfg.model.num_labels:
        raise ConfigError(f"the labels need {seen} classes but model.numLabels is {cfg.model.num_labels}",
                          field="model.numLabels", hint=f"set it to {seen} or more")
    train = prepare_classification(train, cfg, tokenizer, label_names, scratch, "train")
    if evalds is not None:
        evalds = prepare_classification(evalds, cfg, tokenizer, label_names, scratch, "eval")
    return Splits(train, evalds, fmt, label_names)


def _train_split(cfg: JobConfig, dd):
    name = cfg.data.train_split
    if name not in dd:
        raise ConfigError(f"split {name!r} is not in the dataset (splits: {', '.join(dd)})", field="data.trainSplit",
                          hint="set data.trainSplit to one of them")
    if len(dd[name]) == 0:
        raise UserError(f"split {name!r} of the dataset is empty", field="data.trainSplit")
    return dd[name]


def _eval_split(cfg: JobConfig, dd, train, scratch: Path, seed: int):
    """(train, eval): ``data.evalSplit``, else ``data.evalRatio`` of the training split held out, else no eval."""
    d = cfg.data
    if d.eval_split:
        if d.eval_split not in dd:
            raise ConfigError(f"split {d.eval_split!r} is not in the dataset (splits: {', '.join(dd)})", field="data.evalSplit",
                              hint="set it to one of them, or leave it empty (data.evalRatio holds out part of the training split)")
        return train, dd[d.eval_split]
    if not d.eval_ratio:  # the schema keeps it in [0, 1) (check_config)
        return train, None
    # Index files in scratch: a dataset on a read-only volume cannot take them next to its files.
    key = hashlib.sha256(f"{train._fingerprint}-{d.eval_ratio}-{seed}".encode()).hexdigest()[:20]
    scratch.mkdir(parents=True, exist_ok=True)
    parts = train.train_test_split(test_size=d.eval_ratio, seed=seed,
                                   train_indices_cache_file_name=str(scratch / f"split-train-{key}.arrow"),
                                   test_indices_cache_file_name=str(scratch / f"split-eval-{key}.arrow"))
    return parts["train"], parts["test"]


def _capped(ds, limit: int | None):
    """The first ``limit`` rows of ``ds`` (all when ``limit`` is None; None stays None)."""
    if ds is None or limit is None:
        return ds
    return ds.select(range(min(limit, len(ds))))
