"""Sequence classification: label ids and tokenized rows (``data.textColumn``, ``data.labelColumn``)."""

from __future__ import annotations

from pathlib import Path

from ...core.config import JobConfig
from ...core.errors import ConfigError
from .rows import map_rows


def labels_of(ds, column: str) -> tuple[list[str] | None, int]:
    """(label names for string labels or None, number of labels seen)."""
    from datasets import ClassLabel

    feature = ds.features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names), feature.num_classes
    values = ds.unique(column)
    if all(isinstance(v, str) for v in values):
        names = sorted(values)
        return names, len(names)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None, (max(values) + 1 if values else 0)
    raise ConfigError(f"column {column!r} must hold integer class ids or class names", field="data.labelColumn")


def _tokenize_classification(batch, tokenizer, text_column, label_column, label_ids, max_length):
    enc = tokenizer(batch[text_column], truncation=True, max_length=max_length)
    labels = batch[label_column]
    enc["labels"] = [label_ids[v] for v in labels] if label_ids else labels
    return dict(enc)


def prepare_classification(ds, cfg: JobConfig, tokenizer, label_names: list[str] | None, scratch: Path, name: str):
    d = cfg.data
    label_ids = {n: i for i, n in enumerate(label_names)} if label_names else None
    return map_rows(ds, _tokenize_classification, {"tokenizer": tokenizer, "text_column": d.text_column,
                                                   "label_column": d.label_column, "label_ids": label_ids,
                                                   "max_length": d.max_seq_length}, scratch, f"tokenize-{name}", batched=True)
