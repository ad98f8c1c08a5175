"""The data format of the rows (``data.format``) and the rows in TRL's standard columns.

* ``chat`` — ``data.messagesColumn`` holds ``[{role, content}, ...]``, rendered with the
  tokenizer's chat template; with ``data.completionOnlyLoss`` the loss is on assistant turns
  (template ``{% generation %}`` markers, or TRL's training version of a known template).
* ``instruction`` — ``data.promptTemplate`` (``str.format`` over the row's columns) or
  ``data.promptColumn``, plus ``data.responseColumn``: TRL prompt/completion rows; with
  ``data.completionOnlyLoss`` the loss is on the completion only.
* ``text`` — ``data.textColumn``; the loss is on every token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ...core.config import CAUSAL_LM, JobConfig
from ...core.contract import task_problems
from ...core.dataset import instruction_prompt, render_prompt
from ...core.errors import ConfigError
from ...core.problems import raise_first_error
from .rows import map_rows

log = logging.getLogger(__name__)

TEXT, INSTRUCTION, CHAT = "text", "instruction", "chat"


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
    return map_rows(ds, fn, kwargs, scratch, f"format-{name}")


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
