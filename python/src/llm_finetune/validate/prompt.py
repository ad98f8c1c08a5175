"""``data.promptTemplate``: what can be told before the data is downloaded.

The schema refuses what ``str.format`` cannot render with the row's columns as keywords
(unbalanced braces, positional ``{}``/``{0}``, ``{a.b}``, ``{a[0]}``, conversions and format
specs) and a template under format text/chat (where it is ignored). Here: placeholders that
name a column ``data.columnMapping`` renames away (the mapping is applied first), the response
column inside the prompt (the model would be shown the answer), and names with surrounding
spaces. Whether each placeholder is a column of the dataset is known only once the dataset is
on the volume: the trainer checks it before loading the model (trainer/data.py render_prompt).
"""

from __future__ import annotations

import string
from typing import Any, Iterator

from ..core.problems import ERROR, Problem


def placeholders(template: str) -> list[str]:
    """The field names of ``template`` ([] when it does not parse: the schema reports that)."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return []


def rule_prompt_template(values: dict[str, Any]) -> Iterator[Problem]:
    data = values.get("data") if isinstance(values.get("data"), dict) else {}
    template = data.get("promptTemplate")
    if not isinstance(template, str) or not template:
        return
    mapping = data.get("columnMapping") if isinstance(data.get("columnMapping"), dict) else {}
    renamed = {old: new for old, new in mapping.items() if old != new}
    response = data.get("responseColumn", "completion")
    path = "data.promptTemplate"
    for name in dict.fromkeys(placeholders(template)):
        if name != name.strip():
            yield Problem(path, f"placeholder {{{name}}} has spaces around the column name",
                          f"write {{{name.strip()}}}", ERROR, "prompt-template")
        elif name in renamed and name not in renamed.values():
            yield Problem(path, f"placeholder {{{name}}} names a column that data.columnMapping renames to {renamed[name]!r}",
                          f"write {{{renamed[name]}}} (the mapping is applied before the template)", ERROR, "prompt-template")
        elif name == response:
            yield Problem(path, f"placeholder {{{name}}} is the response column (data.responseColumn): the prompt would "
                                "contain the answer", "leave the response out of the template; it is the completion",
                          ERROR, "prompt-template")
