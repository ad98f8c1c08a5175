"""Logging for pods: plain UTC lines (no tqdm bars), rank-aware, secrets redacted.

* Every line carries the process rank when running under torchrun.
* Non-zero ranks log warnings and errors only, unless ``LLM_FINETUNE_LOG_ALL_RANKS=1``. The rank
  is a *process* rank: torchrun gives it to the processes it starts together with ``LOCAL_RANK``.
  A pod-level ``RANK`` (the Training Operator's node rank, set for every container of a
  PyTorchJob pod with a Master) is not one: the launcher of every pod logs at the normal level.
* Values of secret environment variables never reach a handler (``RedactSecrets``).
* Libraries log through the root handler only (``quiet_library_loggers``).
* ``RateReporter`` prints progress lines (done/total, throughput, ETA) at a steady rate.
"""

from __future__ import annotations

import logging
import os
import sys
import time

SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_FORMAT = "%(asctime)s %(levelname)s %(rankinfo)s%(name)s: %(message)s"


def process_rank() -> int:
    """The global rank of a process torchrun started (it sets ``LOCAL_RANK`` too), else 0."""
    if "LOCAL_RANK" not in os.environ:
        return 0
    return int(os.environ.get("RANK", "0") or 0)


class RedactSecrets(logging.Filter):
    """Replace the values of secret environment variables in every record."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets = [v for k in SECRET_ENV_VARS if len(v := os.environ.get(k, "")) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            if any(s in text for s in self.secrets):
                for s in self.secrets:
                    text = text.replace(s, "***")
                record.msg, record.args = text, None
        return True


class _RankInfo(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        world = int(os.environ.get("WORLD_SIZE", "1") or 1) if "LOCAL_RANK" in os.environ else 1
        self.info = f"[rank {process_rank()}] " if world > 1 else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rankinfo = self.info
        return True


def setup_logging(level: int | str | None = None) -> None:
    """Configure the root logger once for a command (idempotent)."""
    if level is None:
        level = os.environ.get("LLM_FINETUNE_LOG_LEVEL", "INFO")
    if process_rank() != 0 and os.environ.get("LLM_FINETUNE_LOG_ALL_RANKS") != "1":
        level = "WARNING"
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_llm_finetune", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._llm_finetune = True  # type: ignore[attr-defined]
    formatter = logging.Formatter(_FORMAT, "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(_RankInfo())
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    root.setLevel(level)
    # Quiet chatty libraries and their progress bars: pod logs are read with kubectl logs.
    for name in ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore", "httpx2", "httpcore2",
                 "filelock", "fsspec"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


def quiet_library_loggers() -> None:
    """huggingface_hub and datasets add their own stderr handlers: drop them so their records go
    through the root handler only (one format, secrets redacted, no duplicates)."""
    for name in ("huggingface_hub", "datasets"):
        lib = logging.getLogger(name)
        for handler in list(lib.handlers):
            lib.removeHandler(handler)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class RateReporter:
    """Log progress of a counted quantity at most every ``interval`` seconds.

    ``update(done, ...)`` is cheap to call often; a line is emitted only when the interval
    has passed, and ``finish()`` always emits a final line.
    """

    def __init__(self, logger: logging.Logger, what: str, total: float | None, *,
                 unit: str = "bytes", interval: float = 10.0, clock=time.monotonic) -> None:
        self.logger, self.what, self.total, self.unit = logger, what, total, unit
        self.interval, self.clock = interval, clock
        self.start = self.last = clock()
        self.done = 0.0
        self.extra = ""

    def _fmt(self, value: float) -> str:
        return format_bytes(value) if self.unit == "bytes" else f"{value:.0f} {self.unit}"

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.what}: {self._fmt(self.done)}"]
        if self.total:
            pct = 100.0 * self.done / self.total
            parts[0] += f" / {self._fmt(self.total)} ({pct:.0f}%)"
        parts.append(f"{self._fmt(rate)}/s")
        if self.total:
            remaining = (self.total - self.done) / rate if rate > 0 else None
            parts.append(f"ETA {format_duration(remaining)}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.extra:
            parts.append(self.extra)
        return ", ".join(parts)

    def update(self, done: float, extra: str = "") -> None:
        self.done, self.extra = done, extra or self.extra
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self.logger.info(self.line())

    def finish(self, extra: str = "") -> None:
        if extra:
            self.extra = extra
        self.logger.info(self.line())
