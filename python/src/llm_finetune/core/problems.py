"""One finding of the validator (or of a rule the trainer applies): ``path.to.field: what is wrong — how to fix``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from .errors import ConfigError

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


def raise_first_error(problems: Iterable[Problem]) -> None:
    """For the commands: the first error among ``problems`` as a ConfigError (same text as the validator's)."""
    for p in problems:
        if p.severity == ERROR:
            raise ConfigError(p.message, field=p.path, hint=p.hint or None)


def format_path(parts: Any) -> str:
    """``["job", "resources", "limits", "nvidia.com/gpu"]`` → ``job.resources.limits.nvidia.com/gpu``; list indexes as ``[i]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
