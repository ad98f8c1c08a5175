"""A dataset on the volume as the trainer (and run-local's report) reads it.

:func:`load_volume_dataset` loads ``cfg.dataset_dir`` the way its layout says
(:mod:`.layout`) and applies ``data.columnMapping``; :func:`render_prompt` fills
``data.promptTemplate`` from a row. ``datasets`` is imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import JobConfig
from .errors import ConfigError, FinetuneError, UserError
from .layout import load_dataset_dict
from .retry import describe


def load_volume_dataset(cfg: JobConfig, cache_dir: Path):
    """The dataset on the volume as a DatasetDict, with ``data.columnMapping`` applied."""
    where = cfg.dataset_dir
    try:
        dd = load_dataset_dict(where, file_type=cfg.dataset.file_type, cache_dir=str(cache_dir))
    except FinetuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for unreadable files
        raise UserError(f"cannot load the dataset in {where}: {describe(exc)}", field="dataset.uri",
                        hint="check the files are valid json/jsonl/csv/parquet (dataset.fileType)") from None
    mapping = cfg.data.column_mapping
    if mapping:
        columns = columns_of(dd)
        for old in mapping:
            if old not in columns:
                raise ConfigError(f"column {old!r} is not in the dataset (columns: {', '.join(columns)})",
                                  field=f"data.columnMapping.{old}", hint="map existing columns only")
        dd = dd.rename_columns(dict(mapping))
    return dd


def columns_of(dd) -> list[str]:
    """The column names of a DatasetDict (its first split)."""
    first = next(iter(dd.values()))
    return list(first.column_names)


def render_prompt(template: str, row: dict[str, Any], columns: list[str] | None = None) -> str:
    values = {k: ("" if v is None else v) for k, v in row.items()}
    try:
        return template.format(**values)
    except KeyError as exc:
        cols = columns if columns is not None else list(row)
        raise ConfigError(f"refers to column {exc.args[0]!r}, which the dataset does not have (columns: {', '.join(cols)})",
                          field="data.promptTemplate", hint="use {column} names of the dataset; write {{ and }} for braces") from None
    except (IndexError, ValueError) as exc:
        raise ConfigError(f"is not a valid template: {exc}", field="data.promptTemplate",
                          hint="use named fields like {instruction}; write {{ and }} for literal braces") from None


def instruction_prompt(row: dict[str, Any], template: str, prompt_column: str) -> str:
    """The prompt of an instruction row: ``data.promptTemplate`` filled from the row, else ``data.promptColumn``."""
    prompt = render_prompt(template, row) if template else row.get(prompt_column)
    return "" if prompt is None else str(prompt)


