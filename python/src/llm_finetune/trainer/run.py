"""One training run, on every rank: config checks, data, model, train, output, export.

Order matters for distributed runs: collectives (data-cache agreement, checkpoint sync,
training, evaluation) happen on every rank in the same order; only rank 0 writes to the
run folder, and it alone writes the output and exports after the other ranks are done.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..core.config import CAUSAL_LM, JobConfig
from ..core.errors import Terminated, UserError
from ..core.log import format_duration
from . import checkpoints as ckpt
from .args import build_args, set_data_fields
from .data import (CHAT, INSTRUCTION, PackedRowsCollator, assistant_only_loss, cache_path, fingerprint, load_cached, load_splits,
                   save_cache)
from .dist import Ranks, all_true, broadcast, scratch_root, sync_checkpoint, writable_dir
from .model import check_config, load_model, load_tokenizer, lora_config
from .progress import RecordingCollator, debug_samples_dir, make_progress_callback

log = logging.getLogger("llm_finetune.trainer")

# SFTConfig fields that change the prepared data (part of the cache fingerprint).
_PREP_ARGS = ("seed", "packing_strategy", "truncation_mode", "shuffle_dataset", "eval_packing", "chat_template_path",
              "eos_token")


def _quiet_libraries() -> None:
    import warnings

    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_warning()
    from ..core.log import quiet_library_loggers

    quiet_library_loggers()
    # Deprecation notices of the ML libraries are for developers, not pod logs.
    warnings.filterwarnings("ignore", category=FutureWarning)


def _check_run_dir(cfg: JobConfig) -> None:
    for d in (cfg.checkpoints_dir, cfg.logs_dir):
        if not writable_dir(d):
            raise UserError(f"rank 0 cannot write to {d}", field="paths.run",
                            hint="the Master needs the claim mounted read-write (storage.existingClaim, "
                                 "storage.perPod.outputToClaim)")


def train(cfg: JobConfig, stop: ckpt.StopFlag) -> int:
    t_start = time.monotonic()
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
    finished = broadcast(_finished_output(cfg) if ranks.is_main else None)  # only rank 0 may see the output
    if finished:
        log.info("trainer: run %s already finished with this config: output %s. Nothing to train "
                 "(set a new runId, or training.resume: never, to train again)", cfg.run.name, finished)
        if ranks.is_main:
            from .export import export

            export(cfg, Path(finished))  # an export that failed in the previous attempt is retried
        return 0
    tokenizer = load_tokenizer(cfg)

    # -- data: the prepared cache when every rank has it, else load + format (+ TRL prepares) --
    fp = fingerprint(cfg, {k: getattr(args, k, None) for k in _PREP_ARGS})
    cpath = cache_path(cfg, fp)
    cached = load_cached(cpath)
    use_cache = all_true(cached is not None)
    if use_cache:
        train_ds, eval_ds, info = cached
        log.info("prepared data from cache %s", cpath)
    else:
        with args.main_process_first(local=True, desc="load and format the dataset"):
            splits = load_splits(cfg, tokenizer, scratch / "data", seed=args.seed)
        train_ds, eval_ds = splits.train, splits.eval
        info = {"format": splits.format, "labelNames": splits.label_names,
                "assistantOnlyLoss": assistant_only_loss(tokenizer, splits.format, cfg.data.completion_only_loss)}
        if not causal:
            info["numLabels"] = cfg.model.num_labels or (len(splits.label_names) if splits.label_names else
                                                         max(train_ds["labels"]) + 1)
    fmt = info["format"]
    log.info("data: %s format, %d training rows%s", fmt, len(train_ds),
             f", {len(eval_ds)} eval rows" if eval_ds is not None else "")

    # -- resume: rank 0 picks the checkpoint; ranks that cannot see it receive it --
    resume_path, files = None, None
    if ranks.is_main:
        found = ckpt.resolve_resume(cfg.training.resume, cfg.checkpoints_dir)
        if found is not None:
            marker = ckpt.read_marker(found)
            resume_path, files = str(found), (marker["files"] if marker else ckpt.checkpoint_files(found))
    resume = sync_checkpoint(ranks, resume_path, files, lambda p: _local_view(cfg, p),
                             lambda p, f: ckpt.incomplete_reason(p, f) is None, scratch / f"node-{ranks.node_rank}")
    if resume and ranks.is_main:
        log.info("resuming from %s", resume)
        ckpt.warn_missing_rank_state(resume, args.world_size)

    # -- model and trainer --
    num_labels = info.get("numLabels")
    model = load_model(cfg, tokenizer, num_labels=num_labels, label_names=info.get("labelNames"),
                       local_rank=ranks.local_rank, gradient_checkpointing=bool(args.gradient_checkpointing))
    peft = peft_config is not None
    callbacks = [ckpt.make_callback(stop, save_total_limit), make_progress_callback()]
    if causal:
        from trl import SFTTrainer

        set_data_fields(args, completion_only_loss=(cfg.data.completion_only_loss if fmt == INSTRUCTION and not use_cache
                                                    else None),
                        assistant_only_loss=bool(info["assistantOnlyLoss"]) and fmt == CHAT and not use_cache,
                        skip_prepare=use_cache)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, callbacks=callbacks,
                             peft_config=peft_config)
        train_ds, eval_ds = trainer.train_dataset, trainer.eval_dataset
        if args.packing and "flash" not in str(getattr(model.config, "_attn_implementation", "")):
            trainer.data_collator = PackedRowsCollator(tokenizer.pad_token_id)
    else:
        from peft import get_peft_model
        from transformers import DataCollatorWithPadding, Trainer

        if peft:
            model = get_peft_model(model, peft_config)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                          data_collator=DataCollatorWithPadding(tokenizer), callbacks=callbacks,
                          compute_metrics=_accuracy if eval_ds is not None else None)
    if not use_cache and ranks.is_local_main and writable_dir(cpath.parent):
        save_cache(cpath, train_ds, eval_ds, info)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if debug_samples_dir():
        trainer.data_collator = RecordingCollator(trainer.data_collator, debug_samples_dir(), ranks.rank)

    # -- train --
    stop.in_training = True
    result = trainer.train(resume_from_checkpoint=resume)
    if stop.stopped_at is not None:
        raise Terminated(f"stopped by SIGTERM at step {stop.stopped_at}, after saving checkpoint-{stop.stopped_at}",
                              hint="the next attempt resumes from it")
    eval_metrics = None
    if eval_ds is not None:
        done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        eval_metrics = {k: v for k, v in done[-1].items() if k != "step"} if done else trainer.evaluate()

    # -- output: every rank takes part in save_model (sharded setups gather); rank 0 writes --
    from .output import finish_output, staging_dir

    staging = staging_dir(cfg) if ranks.is_main else scratch / f"rank-{ranks.rank}" / "final"
    if ranks.is_main:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))
    if not ranks.is_main:
        return 0
    state = trainer.state
    metrics: dict[str, Any] = {"train": result.metrics, "eval": eval_metrics, "log_history": state.log_history,
                               "global_step": state.global_step, "world_size": args.world_size,
                               "num_input_tokens_seen": state.num_input_tokens_seen}
    out = finish_output(cfg, staging, trainer=trainer, tokenizer=tokenizer, kind="adapter" if peft else "model",
                        fmt=fmt, num_labels=num_labels, metrics=metrics, label_names=info.get("labelNames"))
    from .export import export

    exported = export(cfg, out)
    tm = result.metrics
    summary = [f"trainer: done in {format_duration(time.monotonic() - t_start)}", f"{state.global_step} steps",
               f"train loss {tm.get('train_loss', float('nan')):.4f}"]
    if eval_metrics and "eval_loss" in eval_metrics:
        summary.append(f"eval loss {eval_metrics['eval_loss']:.4f}")
    if tm.get("train_runtime") and state.num_input_tokens_seen:
        summary.append(f"{state.num_input_tokens_seen / tm['train_runtime']:.0f} tokens/s")
    summary.append(f"world size {args.world_size}")
    summary.append(f"output {out}" + (f", exported to {exported}" if exported else ""))
    log.info(", ".join(summary))
    return 0


def _finished_output(cfg: JobConfig) -> str | None:
    """The run's output folder when an earlier attempt completed it with this same config."""
    if cfg.training.resume == "never":
        return None
    from ..core.volume import OUTPUT_MANIFEST, read_json

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


def _local_view(cfg: JobConfig, rank0_path: str) -> str:
    """This rank's path for rank 0's checkpoint: the same pod path through this pod's mounts."""
    from ..core.config import map_path

    if cfg.training.resume in ("auto", "never"):
        return os.path.join(cfg.checkpoints_dir, os.path.basename(rank0_path))
    return map_path(cfg.training.resume)


def _accuracy(eval_pred) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}
