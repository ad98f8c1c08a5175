"""One finding of the validator: ``path.to.field: what is wrong — how to fix``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ERROR, WARNING, NOTICE = "error", "warning", "notice"


@dataclass(frozen=True)
class Problem:
    path: str  # values path, e.g. "storage.accessModes" or "training.args.learning_rate"
    message: str  # what is wrong
    hint: str = ""  # how to fix it
    severity: str = ERROR  # error (fails validation), warning or notice (reported only)
    rule: str = ""  # which check found it ("schema", "storage-sharing", ...)

    def render(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} — {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == ERROR]


def format_path(parts: Any) -> str:
    """``["job", "resources", "limits", "nvidia.com/gpu"]`` → ``job.resources.limits.nvidia.com/gpu``; list indexes as ``[i]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
