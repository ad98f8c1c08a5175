"""Pod-log progress (rank 0): one line per logging step and at least every ``interval`` seconds.

``step 40/200 (20%) epoch 0.40 | loss 1.8342 lr 1.93e-04 | 5120 tokens/s | elapsed 1m02s ETA 4m08s``

Tokens are the non-padding input tokens of every rank (``num_input_tokens_seen``); the
ETA is the remaining steps at this attempt's average step time. transformers' own
printer/progress-bar callbacks are removed by the caller.

``LLM_FINETUNE_DEBUG_SAMPLES_DIR`` (tests only): every rank appends a hash of each training
example it collates to ``<dir>/rank-<RANK>.txt`` (node-local), to check the sharding.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from ..core.log import format_duration

log = logging.getLogger(__name__)

DEBUG_SAMPLES_ENV = "LLM_FINETUNE_DEBUG_SAMPLES_DIR"


def example_hash(input_ids) -> str:
    return hashlib.sha1(",".join(str(int(i)) for i in input_ids).encode()).hexdigest()[:16]


class RecordingCollator:
    """Wraps a data collator; records a hash of every example it sees (debug/test hook)."""

    def __init__(self, inner, directory: str, rank: int) -> None:
        self.inner = inner
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / f"rank-{rank}.txt"

    def __call__(self, examples):
        with open(self.path, "a", encoding="utf-8") as fh:
            for ex in examples:
                fh.write(example_hash(ex["input_ids"]) + "\n")
        return self.inner(examples)


def make_progress_callback(interval: float = 30.0):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = self.last = time.monotonic()
            self.step0 = state.global_step
            self.tokens0 = state.num_input_tokens_seen or 0
            self.loss = self.lr = None
            if state.is_world_process_zero:
                log.info("training: %d steps, %s epoch(s), world size %d, %d sample(s)/step%s",
                         state.max_steps, f"{args.num_train_epochs:g}", args.world_size,
                         args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
                         f", resuming at step {state.global_step}" if state.global_step else "")

        def line(self, state) -> str:
            elapsed = time.monotonic() - self.t0
            done = state.global_step - self.step0
            total = max(state.max_steps, 1)
            parts = [f"step {state.global_step}/{state.max_steps} ({100 * state.global_step / total:.0f}%)"
                     + (f" epoch {state.epoch:.2f}" if state.epoch is not None else "")]
            if self.loss is not None:
                parts.append(f"loss {self.loss:.4f}" + (f" lr {self.lr:.2e}" if self.lr is not None else ""))
            tokens = (state.num_input_tokens_seen or 0) - self.tokens0
            if tokens and elapsed > 0:
                parts.append(f"{tokens / elapsed:.0f} tokens/s")
            eta = (state.max_steps - state.global_step) * elapsed / done if done > 0 else None
            parts.append(f"elapsed {format_duration(elapsed)} ETA {format_duration(eta)}")
            return " | ".join(parts)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                self.loss, self.lr = logs["loss"], logs.get("learning_rate")
                log.info(self.line(state))
                self.last = time.monotonic()
            evals = {k: v for k, v in logs.items() if k.startswith("eval_") and isinstance(v, (int, float))}
            if "eval_loss" in evals:
                log.info("eval at step %d: %s", state.global_step,
                         ", ".join(f"{k} {v:.4f}" for k, v in sorted(evals.items()) if "runtime" not in k))

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero and time.monotonic() - self.last >= interval:
                log.info(self.line(state))
                self.last = time.monotonic()

    return ProgressCallback()


def peak_memory_bytes() -> int:
    """This process's peak memory: CUDA's peak allocation on a GPU, else the peak resident set size."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def debug_samples_dir() -> str | None:
    return os.environ.get(DEBUG_SAMPLES_ENV) or None
