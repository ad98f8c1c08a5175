"""One training run, on every rank: config checks, data, model, train, output, export.

:func:`train` runs the steps below in order. Order matters for distributed runs:
collectives (data-cache agreement, checkpoint sync, training, evaluation) happen on every
rank in the same order; only rank 0 writes to the run folder, and it alone writes the
output and exports after the other ranks are done.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import CAUSAL_LM, JobConfig, map_path
from ..core.errors import Terminated, UserError
from ..core.log import format_duration, quiet_library_loggers
from ..core.volume import OUTPUT_MANIFEST, read_json
from . import checkpoints as ckpt
from . import fsdp
from .args import build_args, set_data_fields
from .data.cache import cache_path, fingerprint, load_cached, save_cache
from .data.collator import PackedRowsCollator
from .data.formats import CHAT, INSTRUCTION, assistant_only_loss
from .data.splits import load_splits
from .dist import Ranks, all_true, broadcast, scratch_root, sync_checkpoint, writable_dir
from .model import check_config, load_model, load_tokenizer, lora_config
from .progress import RecordingCollator, debug_samples_dir, make_progress_callback, peak_memory_bytes

log = logging.getLogger(__name__)

# SFTConfig fields that change the prepared data (part of the cache fingerprint).
_PREP_ARGS = ("seed", "packing_strategy", "truncation_mode", "shuffle_dataset", "eval_packing", "chat_template_path",
              "eos_token")


@dataclass
class Run:
    """What the steps share: the config, this process's ranks and scratch, the training arguments."""

    cfg: JobConfig
    ranks: Ranks
    scratch: Path
    args: Any  # SFTConfig | TrainingArguments
    save_total_limit: int | None
    peft_config: Any  # LoraConfig | None (full fine-tuning)
    started: float = field(default_factory=time.monotonic)

    @property
    def causal(self) -> bool:
        return self.cfg.model.transformer_type == CAUSAL_LM


@dataclass
class Data:
    """The training (and eval) datasets, ready for the trainer, and what describes them."""

    train: Any
    eval: Any | None
    info: dict[str, Any]  # format, labelNames, assistantOnlyLoss, numLabels (classification)
    from_cache: bool
    cache: Path


def train(cfg: JobConfig, stop: ckpt.StopFlag) -> int:
    run = prepare(cfg)
    if finished_before(run):
        return 0
    tokenizer = load_tokenizer(cfg)
    data = load_data(run, tokenizer)
    resume = resume_checkpoint(run)
    trainer = make_trainer(run, data, tokenizer, stop)
    result, eval_metrics = fit(trainer, stop, resume, has_eval=data.eval is not None)
    write_output(run, trainer, tokenizer, data, result, eval_metrics)
    return 0


def prepare(cfg: JobConfig) -> Run:
    """Check the config, quiet the libraries, find this rank's place and build the training arguments."""
    started = time.monotonic()
    check_config(cfg)
    # bitsandbytes (imported by peft/trl) complains about missing optional CPU kernels at import.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import torch

    cuda = torch.cuda.is_available()
    causal = cfg.model.transformer_type == CAUSAL_LM
    peft_config = lora_config(cfg, "CAUSAL_LM" if causal else "SEQ_CLS") if cfg.training.method != "full" else None
    _quiet_libraries()
    ranks = Ranks.from_env()
    scratch = scratch_root(cfg.run.name)
    if ranks.is_main:
        _check_run_dir(cfg)
        os.environ["TENSORBOARD_LOGGING_DIR"] = cfg.logs_dir
    output_dir = cfg.checkpoints_dir if ranks.is_main else str(scratch / f"rank-{ranks.rank}" / "checkpoints")
    has_eval = bool(cfg.data.eval_split or cfg.data.eval_ratio)
    args, save_total_limit = build_args(cfg, output_dir=output_dir, causal_lm=causal, has_eval=has_eval, cuda=cuda,
                                        bf16_ok=cuda and torch.cuda.is_bf16_supported())
    log.info("trainer: %s %s on %s, world size %d, device %s", cfg.training.method, cfg.task, cfg.model.uri,
             args.world_size, args.device)
    return Run(cfg, ranks, scratch, args, save_total_limit, peft_config, started)


def _quiet_libraries() -> None:
    import warnings

    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_warning()
    quiet_library_loggers()
    # Deprecation notices of the ML libraries are for developers, not pod logs.
    warnings.filterwarnings("ignore", category=FutureWarning)


def _check_run_dir(cfg: JobConfig) -> None:
    from ..core.volume import unwritable_reason

    for d in (cfg.checkpoints_dir, cfg.logs_dir):
        reason = unwritable_reason(d)
        if reason is not None:
            raise UserError(f"rank 0 cannot write to {d}: {reason}", field="paths.run",
                            hint="rank 0 needs the claim mounted read-write (storage.existingClaim, "
                                 "storage.perPod.outputToClaim) and writable for podSecurityContext.runAsUser: "
                                 "a volume whose driver ignores fsGroup keeps a root-owned root directory")


def finished_before(run: Run) -> bool:
    """True when an earlier attempt completed this run with this config (its export is retried)."""
    cfg = run.cfg
    finished = broadcast(_finished_output(cfg) if run.ranks.is_main else None)  # only rank 0 may see the output
    if not finished:
        return False
    log.info("trainer: run %s already finished with this config: output %s. Nothing to train "
             "(set a new runId, or training.resume: never, to train again)", cfg.run.name, finished)
    if run.ranks.is_main:
        from .export import export

        export(cfg, Path(finished))  # an export that failed in the previous attempt is retried
    return True


def _finished_output(cfg: JobConfig) -> str | None:
    """The run's output folder when an earlier attempt completed it with this same config."""
    if cfg.training.resume == "never":
        return None
    manifest = read_json(Path(cfg.output_dir) / OUTPUT_MANIFEST)
    if not manifest or _what_is_trained(manifest.get("config") or {}) != _what_is_trained(cfg.to_dict()):
        return None
    return cfg.output_dir


def _what_is_trained(config: dict[str, Any]) -> dict[str, Any]:
    """The config without what does not change the trained output: endpoints, download and export settings."""
    c = json.loads(json.dumps(config))
    for section, key in (("model", "s3"), ("dataset", "s3"), ("output", "export")):
        (c.get(section) or {}).pop(key, None)
    c.pop("download", None)
    return c


def load_data(run: Run, tokenizer) -> Data:
    """The prepared cache when every rank has it, else load + format (TRL prepares causal LM data later)."""
    cfg, args = run.cfg, run.args
    cpath = cache_path(cfg, fingerprint(cfg, {k: getattr(args, k, None) for k in _PREP_ARGS}))
    cached = load_cached(cpath)
    if all_true(cached is not None):
        log.info("prepared data from cache %s", cpath)
        data = Data(*cached, from_cache=True, cache=cpath)
    else:
        with args.main_process_first(local=True, desc="load and format the dataset"):
            splits = load_splits(cfg, tokenizer, run.scratch / "data", seed=args.seed)
        info = {"format": splits.format, "labelNames": splits.label_names,
                "assistantOnlyLoss": assistant_only_loss(tokenizer, splits.format, cfg.data.completion_only_loss)}
        if not run.causal:
            info["numLabels"] = cfg.model.num_labels or (len(splits.label_names) if splits.label_names else
                                                         max(splits.train["labels"]) + 1)
        data = Data(splits.train, splits.eval, info, from_cache=False, cache=cpath)
    log.info("data: %s format, %d training rows%s", data.info["format"], len(data.train),
             f", {len(data.eval)} eval rows" if data.eval is not None else "")
    return data


def resume_checkpoint(run: Run) -> str | None:
    """Rank 0 picks the checkpoint to resume from; ranks that cannot see it receive it."""
    cfg, ranks = run.cfg, run.ranks
    resume_path, files = None, None
    if ranks.is_main:
        found = ckpt.resolve_resume(cfg.training.resume, cfg.checkpoints_dir)
        if found is not None:
            marker = ckpt.read_marker(found)
            resume_path, files = str(found), (marker["files"] if marker else ckpt.checkpoint_files(found))
    resume = sync_checkpoint(ranks, resume_path, files, lambda p: _local_view(cfg, p),
                             lambda p, f: ckpt.incomplete_reason(p, f) is None, run.scratch / f"node-{ranks.node_rank}")
    if resume and ranks.is_main:
        log.info("resuming from %s", resume)
        ckpt.warn_missing_rank_state(resume, run.args.world_size)
    return resume


def _local_view(cfg: JobConfig, rank0_path: str) -> str:
    """This rank's path for rank 0's checkpoint: the same pod path through this pod's mounts."""
    if cfg.training.resume in ("auto", "never"):
        return os.path.join(cfg.checkpoints_dir, os.path.basename(rank0_path))
    return map_path(cfg.training.resume)


def make_trainer(run: Run, data: Data, tokenizer, stop: ckpt.StopFlag):
    """The model and the (SFT) trainer with our callbacks; the prepared data is cached on the way."""
    cfg, ranks = run.cfg, run.ranks
    model = load_model(cfg, tokenizer, num_labels=data.info.get("numLabels"), label_names=data.info.get("labelNames"),
                       local_rank=ranks.local_rank, gradient_checkpointing=bool(run.args.gradient_checkpointing))
    callbacks = [ckpt.make_callback(stop, run.save_total_limit), make_progress_callback()]
    if fsdp.enabled(run.args):
        callbacks.append(fsdp.make_callback())
    make = _causal_lm_trainer if run.causal else _classification_trainer
    with fsdp.cpu_fsdp(fsdp.enabled(run.args) and run.args.use_cpu):
        trainer = make(run, data, model, tokenizer, callbacks)
    if not data.from_cache and ranks.is_local_main and writable_dir(data.cache.parent):
        save_cache(data.cache, data.train, data.eval, data.info)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if debug_samples_dir():
        trainer.data_collator = RecordingCollator(trainer.data_collator, debug_samples_dir(), ranks.rank)
    return trainer


def _causal_lm_trainer(run: Run, data: Data, model, tokenizer, callbacks):
    """TRL's SFTTrainer; ``data`` takes the datasets it prepared (tokenized, packed)."""
    from trl import SFTTrainer

    cfg, fmt, fresh = run.cfg, data.info["format"], not data.from_cache
    set_data_fields(run.args, completion_only_loss=cfg.data.completion_only_loss if fmt == INSTRUCTION and fresh else None,
                    assistant_only_loss=bool(data.info["assistantOnlyLoss"]) and fmt == CHAT and fresh,
                    skip_prepare=data.from_cache)
    trainer = SFTTrainer(model=model, args=run.args, train_dataset=data.train, eval_dataset=data.eval,
                         processing_class=tokenizer, callbacks=callbacks, peft_config=run.peft_config)
    data.train, data.eval = trainer.train_dataset, trainer.eval_dataset
    if run.args.packing and "flash" not in str(getattr(model.config, "_attn_implementation", "")):
        trainer.data_collator = PackedRowsCollator(tokenizer.pad_token_id)
    return trainer


def _classification_trainer(run: Run, data: Data, model, tokenizer, callbacks):
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, Trainer

    if run.peft_config is not None:
        model = get_peft_model(model, run.peft_config)
    return Trainer(model=model, args=run.args, train_dataset=data.train, eval_dataset=data.eval, processing_class=tokenizer,
                   data_collator=DataCollatorWithPadding(tokenizer), callbacks=callbacks,
                   compute_metrics=_accuracy if data.eval is not None else None)


def _accuracy(eval_pred) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def fit(trainer, stop: ckpt.StopFlag, resume: str | None, *, has_eval: bool):
    """Train (stopping with exit 143 after the SIGTERM checkpoint); returns (train result, final eval metrics)."""
    stop.in_training = True
    result = trainer.train(resume_from_checkpoint=resume)
    if stop.stopped_at is not None:
        raise Terminated(f"stopped by SIGTERM at step {stop.stopped_at}, after saving checkpoint-{stop.stopped_at}",
                         hint="the next attempt resumes from it")
    if not has_eval:
        return result, None
    state = trainer.state
    done = [h for h in state.log_history if "eval_loss" in h and h.get("step") == state.global_step]
    return result, ({k: v for k, v in done[-1].items() if k != "step"} if done else trainer.evaluate())


def write_output(run: Run, trainer, tokenizer, data: Data, result, eval_metrics) -> None:
    """Every rank takes part in save_model (sharded setups gather); rank 0 writes the output and exports."""
    from .export import export
    from .output import finish_output, fresh_staging_dir

    cfg, ranks = run.cfg, run.ranks
    staging = fresh_staging_dir(cfg) if ranks.is_main else run.scratch / f"rank-{ranks.rank}" / "final"
    trainer.save_model(str(staging))
    if not ranks.is_main:
        return
    state = trainer.state
    metrics: dict[str, Any] = {"train": result.metrics, "eval": eval_metrics, "log_history": state.log_history,
                               "global_step": state.global_step, "world_size": run.args.world_size,
                               "num_input_tokens_seen": state.num_input_tokens_seen, "peak_memory_bytes": peak_memory_bytes()}
    out = finish_output(cfg, staging, trainer=trainer, tokenizer=tokenizer,
                        kind="adapter" if run.peft_config is not None else "model", fmt=data.info["format"],
                        num_labels=data.info.get("numLabels"), metrics=metrics, label_names=data.info.get("labelNames"),
                        sharded=fsdp.enabled(run.args))
    exported = export(cfg, out)
    log.info(_summary(run, state, result.metrics, eval_metrics, out, exported))


def _summary(run: Run, state, train_metrics: dict[str, Any], eval_metrics: dict[str, Any] | None, out: Path,
             exported: str | None) -> str:
    parts = [f"trainer: done in {format_duration(time.monotonic() - run.started)}", f"{state.global_step} steps",
             f"train loss {train_metrics.get('train_loss', float('nan')):.4f}"]
    if eval_metrics and "eval_loss" in eval_metrics:
        parts.append(f"eval loss {eval_metrics['eval_loss']:.4f}")
    if train_metrics.get("train_runtime") and state.num_input_tokens_seen:
        parts.append(f"{state.num_input_tokens_seen / train_metrics['train_runtime']:.0f} tokens/s")
    parts.append(f"peak memory {peak_memory_bytes() / 2 ** 30:.2f} GiB")
    parts.append(f"world size {run.args.world_size}")
    parts.append(f"output {out}" + (f", exported to {exported}" if exported else ""))
    return ", ".join(parts)
