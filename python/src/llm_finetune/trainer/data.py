"""Dataset: load from the volume, map columns, pick the format, split, and cache the result.

Formats (``data.format``; ``auto`` picks the first that fits the columns, in this order):

* ``chat`` — ``data.messagesColumn`` holds ``[{role, content}, ...]``, rendered with the
  tokenizer's chat template; with ``data.completionOnlyLoss`` the loss is on assistant turns
  (template ``{% generation %}`` markers, or TRL's training version of a known template).
* ``instruction`` — ``data.promptTemplate`` (``str.format`` over the row's columns) or
  ``data.promptColumn``, plus ``data.responseColumn``: TRL prompt/completion rows; with
  ``data.completionOnlyLoss`` the loss is on the completion only.
* ``text`` — ``data.textColumn``; the loss is on every token.

Sequence classification reads ``data.textColumn`` and ``data.labelColumn`` (integers, or
strings mapped to ids in sorted order).

Rows are converted into TRL's standard columns (``text`` | ``prompt``/``completion`` |
``messages``); tokenization, truncation and packing are TRL's. The prepared (tokenized,
packed) datasets are cached under ``paths.cache/<task>-<fingerprint>/`` by each node's local
rank 0 (written to a temporary folder, then renamed); the fingerprint covers the dataset
manifest (or file sizes and times), the tokenizer files, the ``data`` section, the task and
the library versions. A node whose cache folder is not writable keeps its data in node-local scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import CAUSAL_LM, JobConfig, to_dict
from ..core.contract import task_problems
from ..core.dataset import columns_of, instruction_prompt, load_volume_dataset, render_prompt
from ..core.errors import ConfigError, FinetuneError, UserError
from ..core.problems import raise_first_error
from ..core.retry import describe
from ..core.volume import read_manifest, sha256_file, walk_files

log = logging.getLogger("llm_finetune.trainer")

TEXT, INSTRUCTION, CHAT = "text", "instruction", "chat"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
                   "added_tokens.json")


@dataclass
class Splits:
    train: Any
    eval: Any | None
    format: str
    label_names: list[str] | None = None  # sequence classification with string labels


# ---------------------------------------------------------------------------
# Format
# ---------------------------------------------------------------------------
def _missing(column: str, columns: list[str], field: str, what: str) -> ConfigError:
    return ConfigError(f"{what} column {column!r} is not in the dataset (columns: {', '.join(columns)})",
                       field=field, hint=f"set {field} to one of the columns, or rename with data.columnMapping")


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m
                                                           for m in value)


def resolve_format(cfg: JobConfig, columns: list[str], first: dict[str, Any], tokenizer) -> str:
    """The data format for these columns; a ConfigError naming the field when they do not fit."""
    d = cfg.data
    fmt = d.format
    if cfg.model.transformer_type != CAUSAL_LM:
        raise_first_error(task_problems(cfg.model.transformer_type, data_format=fmt))
        for col, field, what in ((d.text_column, "data.textColumn", "text"), (d.label_column, "data.labelColumn", "label")):
            if col not in columns:
                raise _missing(col, columns, field, what)
        return TEXT
    if fmt == "auto":
        if d.messages_column in columns and _is_messages(first.get(d.messages_column)):
            fmt = CHAT
        elif d.response_column in columns and (d.prompt_template or d.prompt_column in columns):
            fmt = INSTRUCTION
        elif d.text_column in columns:
            fmt = TEXT
        else:
            raise ConfigError(
                f"cannot tell the format of a dataset with columns {', '.join(columns)}", field="data.format",
                hint=f"set data.format (text, instruction, chat) and its columns: textColumn ({d.text_column!r}), "
                     f"promptColumn/responseColumn ({d.prompt_column!r}/{d.response_column!r}) or promptTemplate, "
                     f"messagesColumn ({d.messages_column!r})")
        log.info("data.format auto: %s", fmt)
    if fmt == TEXT:
        if d.text_column not in columns:
            raise _missing(d.text_column, columns, "data.textColumn", "text")
        if not isinstance(first.get(d.text_column), str):
            raise ConfigError(f"column {d.text_column!r} does not hold text", field="data.textColumn")
    elif fmt == INSTRUCTION:
        if d.response_column not in columns:
            raise _missing(d.response_column, columns, "data.responseColumn", "response")
        if d.prompt_template:
            render_prompt(d.prompt_template, first, columns)
        elif d.prompt_column not in columns:
            raise _missing(d.prompt_column, columns, "data.promptColumn", "prompt")
    elif fmt == CHAT:
        if d.messages_column not in columns:
            raise ConfigError(f"format chat needs a messages column; {d.messages_column!r} is not in the dataset "
                              f"(columns: {', '.join(columns)})", field="data.messagesColumn",
                              hint="set data.messagesColumn (or data.columnMapping), or data.format to the format of your data")
        if not _is_messages(first.get(d.messages_column)):
            raise ConfigError(f"column {d.messages_column!r} does not hold chat messages ([{{role, content}}, ...])",
                              field="data.messagesColumn", hint="or set data.format to the format of your data")
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("the model's tokenizer has no chat template, which format chat needs", field="data.format",
                              hint="use a chat/instruct model, or format instruction with data.promptTemplate")
    return fmt


def _to_text(row, column):
    return {"text": row[column]}


def _to_prompt_completion(row, template, prompt_column, response_column):
    response = row[response_column]
    return {"prompt": instruction_prompt(row, template, prompt_column), "completion": "" if response is None else str(response)}


def _to_messages(row, column):
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in row[column]]}


def format_split(ds, cfg: JobConfig, fmt: str, scratch: Path, name: str):
    """Rows -> TRL's standard columns (causal LM), cached as an arrow file in node-local scratch."""
    d = cfg.data
    if fmt == TEXT:
        fn, kwargs = _to_text, {"column": d.text_column}
    elif fmt == INSTRUCTION:
        fn, kwargs = _to_prompt_completion, {"template": d.prompt_template, "prompt_column": d.prompt_column,
                                             "response_column": d.response_column}
    else:
        fn, kwargs = _to_messages, {"column": d.messages_column}
    return _map(ds, fn, kwargs, scratch, f"format-{name}")


def _map(ds, fn, kwargs, scratch: Path, tag: str, **extra):
    # An explicit cache file in scratch: a dataset loaded from a read-only volume cannot take
    # datasets' cache files next to it; later maps (TRL's) follow this file into scratch.
    scratch.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([ds._fingerprint, tag, fn.__name__, kwargs, sorted(extra)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:20]
    try:
        return ds.map(fn, fn_kwargs=kwargs, remove_columns=ds.column_names, cache_file_name=str(scratch / f"{tag}-{key}.arrow"),
                      desc=None, **extra)
    except FinetuneError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"cannot convert the dataset rows ({tag}): {describe(exc)}", field="data.format",
                        hint="check that every row has the configured columns with the right types") from None


def _labels_of(ds, column: str) -> tuple[list[str] | None, int]:
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
    return _map(ds, _tokenize_classification, {"tokenizer": tokenizer, "text_column": d.text_column,
                                               "label_column": d.label_column, "label_ids": label_ids,
                                               "max_length": d.max_seq_length}, scratch, f"tokenize-{name}", batched=True)


def load_splits(cfg: JobConfig, tokenizer, scratch: Path, seed: int) -> Splits:
    """Load, check, format and split the dataset (not yet tokenized for causal LM)."""
    d = cfg.data
    dd = load_volume_dataset(cfg, scratch / "hf-datasets")
    columns = columns_of(dd)
    if d.train_split not in dd:
        raise ConfigError(f"split {d.train_split!r} is not in the dataset (splits: {', '.join(dd)})", field="data.trainSplit",
                          hint="set data.trainSplit to one of them")
    train = dd[d.train_split]
    if len(train) == 0:
        raise UserError(f"split {d.train_split!r} of the dataset is empty", field="data.trainSplit")
    fmt = resolve_format(cfg, columns, train[0], tokenizer)
    evalds = None
    if d.eval_split:
        if d.eval_split not in dd:
            raise ConfigError(f"split {d.eval_split!r} is not in the dataset (splits: {', '.join(dd)})", field="data.evalSplit",
                              hint="set it to one of them, or leave it empty (data.evalRatio holds out part of the training split)")
        evalds = dd[d.eval_split]
    elif d.eval_ratio:
        if not 0 < d.eval_ratio < 1:
            raise ConfigError(f"{d.eval_ratio} is not between 0 and 1", field="data.evalRatio")
        # Index files in scratch: a dataset on a read-only volume cannot take them next to its files.
        key = hashlib.sha256(f"{train._fingerprint}-{d.eval_ratio}-{seed}".encode()).hexdigest()[:20]
        scratch.mkdir(parents=True, exist_ok=True)
        parts = train.train_test_split(test_size=d.eval_ratio, seed=seed,
                                       train_indices_cache_file_name=str(scratch / f"split-train-{key}.arrow"),
                                       test_indices_cache_file_name=str(scratch / f"split-eval-{key}.arrow"))
        train, evalds = parts["train"], parts["test"]
    if d.max_train_samples is not None:
        train = train.select(range(min(d.max_train_samples, len(train))))
    if evalds is not None and d.max_eval_samples is not None:
        evalds = evalds.select(range(min(d.max_eval_samples, len(evalds))))
    label_names = None
    if cfg.model.transformer_type == CAUSAL_LM:
        train = format_split(train, cfg, fmt, scratch, "train")
        evalds = format_split(evalds, cfg, fmt, scratch, "eval") if evalds is not None else None
    else:
        label_names, seen = _labels_of(train, d.label_column)
        if cfg.model.num_labels is not None and seen > cfg.model.num_labels:
            raise ConfigError(f"the labels need {seen} classes but model.numLabels is {cfg.model.num_labels}",
                              field="model.numLabels", hint=f"set it to {seen} or more")
        train = prepare_classification(train, cfg, tokenizer, label_names, scratch, "train")
        if evalds is not None:
            evalds = prepare_classification(evalds, cfg, tokenizer, label_names, scratch, "eval")
    return Splits(train, evalds, fmt, label_names)


# ---------------------------------------------------------------------------
# Cache of prepared datasets
# ---------------------------------------------------------------------------
def fingerprint(cfg: JobConfig, extra: dict[str, Any]) -> str:
    """Identity of the prepared data: dataset version, tokenizer files, data config, task, versions."""
    import datasets
    import transformers
    import trl

    from ..core.version import __version__

    manifest = read_manifest(cfg.dataset_dir) if os.path.isdir(cfg.dataset_dir) else None
    if manifest:
        source = {k: manifest.get(k) for k in ("source", "revision", "sourceKey", "files", "layout", "splits")}
    else:
        root = Path(cfg.dataset_dir)
        names = walk_files(root) if root.is_dir() else ["."]
        source = [(n, (root / n).stat().st_size, (root / n).stat().st_mtime_ns) for n in names if (root / n).exists()]
    model_dir = Path(cfg.model_dir)
    tokenizer = {n: sha256_file(model_dir / n) for n in TOKENIZER_FILES if (model_dir / n).is_file()}
    identity = {"source": source, "tokenizer": tokenizer, "data": to_dict(cfg.data), "task": cfg.task,
                "numLabels": cfg.model.num_labels, "versions": [__version__, trl.__version__, transformers.__version__,
                                                                 datasets.__version__], **extra}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(cfg: JobConfig, fp: str) -> Path:
    return Path(cfg.paths.cache) / f"{cfg.task}-{fp[:16]}"


def load_cached(path: Path):
    """(train, eval, info) from a complete cache folder, or None."""
    import datasets

    info_file = path / "info.json"
    if not info_file.is_file():
        return None
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
        train = datasets.load_from_disk(str(path / "train"))
        evalds = datasets.load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt
        log.warning("ignoring damaged data cache %s: %s", path, describe(exc))
        return None
    return train, evalds, info


def save_cache(path: Path, train, evalds, info: dict[str, Any]) -> None:
    """Write the prepared datasets to ``path`` atomically (temp folder + rename); never fatal."""
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        train.save_to_disk(str(tmp / "train"))
        if evalds is not None:
            evalds.save_to_disk(str(tmp / "eval"))
        (tmp / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "info.json").is_file():
                raise
            # another node on the same shared claim cached the same fingerprint first
            log.info("prepared data already cached in %s by another node", path)
            return
        log.info("prepared data cached in %s", path)
    except OSError as exc:
        log.warning("could not cache the prepared data in %s (%s): it is rebuilt next time", path, describe(exc))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def assistant_only_loss(tokenizer, fmt: str, wanted: bool) -> bool:
    """Loss on assistant turns only: chat format, data.completionOnlyLoss, and a template that marks them."""
    if fmt != CHAT or not wanted:
        return False
    from trl.chat_template_utils import get_training_chat_template

    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        log.warning("the chat template has no {%% generation %%} markers and TRL has no training version of it: "
                    "the loss covers the whole conversation (data.completionOnlyLoss has no effect)")
        return False
    return True


class PackedRowsCollator:
    """Packed rows kept as rows: ``position_ids`` restart at each sample and no attention mask, so
    transformers masks attention per sample within each row (sdpa/eager).

    TRL flattens a packed batch into one row (padding-free), which is ideal for FlashAttention's
    variable-length kernels; with sdpa/eager attention that costs (batch x length)^2 instead of
    batch x length^2, so without FlashAttention the trainer uses this collator.
    """

    def __init__(self, pad_token_id: int) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, return_position_ids=True)

    def __call__(self, examples):
        batch = self.inner(examples)
        batch.pop("attention_mask", None)
        # No target across a sample boundary: the first token of a sample is not predicted from the previous one.
        batch["labels"][batch["position_ids"] == 0] = -100
        # transformers only derives the per-sample mask from position_ids without a KV cache.
        batch["use_cache"] = False
        return batch
