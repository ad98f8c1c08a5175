"""Benchmark: one epoch of our trainer vs a v1-reference-style trainer configuration.

Same tiny Llama (``llm_finetune.local.demo_assets``), same Alpaca-like instruction data (``demo.make_samples`` joined into
samples of a few dozen to a few hundred tokens, long tail), same max length, batch size, LoRA settings, learning rate
and seed, CPU, one process, one epoch each, in this process:

* v1 style (the v1 reference's ``hf_llm_training.py``, written from its description):
  every sample tokenized with ``padding="max_length"`` (no packing), labels = input ids
  (loss on prompt and response alike), transformers ``Trainer`` + peft LoRA.
* ours: ``llm_finetune.trainer`` on the same config (TRL SFTTrainer: best-fit-decreasing
  packing, padding-free batches, completion-only loss), output written as in a pod.

Printed: epoch time (the trainers' ``train_runtime``) of both, the speed-up, and the share of
non-pad tokens among the tokens each one fed the model (counted in the data collator).
Targets (issue 4): >= 4x faster epoch, >= 95 % non-pad tokens.
Run: ``make bench`` or ``python tests/bench/bench_trainer.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "src"))

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llm_finetune.local.demo_assets import ALPACA_TEMPLATE, build_tiny_model, make_samples  # noqa: E402

MAX_LENGTH = 1024  # the chart's default data.maxSeqLength
BATCH = 4
LR = 2e-4
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
SEED = 42


class Counter:
    """Tokens fed to the model (batch numel) and the non-pad ones among them."""

    def __init__(self) -> None:
        self.fed = self.real = 0

    def share(self) -> float:
        return self.real / self.fed if self.fed else float("nan")


def alpaca_like(n: int, seed: int = 7) -> list[dict[str, str]]:
    """``n`` samples whose lengths spread like Alpaca's with a LLaMA tokenizer (a few dozen to a few
    hundred tokens, long tail): each joins 1..40 demo tasks' inputs and outputs (log-normal count)."""
    import random

    rng = random.Random(seed)
    pool = iter(make_samples(n * 40, seed=seed))
    out = []
    for _ in range(n):
        k = max(1, min(40, int(rng.lognormvariate(1.9, 0.7))))
        parts = [next(pool) for _ in range(k)]
        out.append({"instruction": parts[0]["instruction"], "input": " ".join(p["input"] for p in parts),
                    "output": " ".join(p["output"] for p in parts)})
    return out


def write_data(directory: Path, n: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "train.jsonl", "w", encoding="utf-8") as fh:
        for s in alpaca_like(n):
            fh.write(json.dumps(s) + "\n")
    return directory


def v1_style(model_dir: Path, data_dir: Path, out: Path) -> tuple[float, Counter, dict]:
    """Pad to max_length, no packing, loss on everything: transformers Trainer + LoRA, as the v1 trainer."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ds = datasets.load_dataset("json", data_files=str(data_dir / "train.jsonl"), split="train",
                               cache_dir=str(out / "hf"))
    ds = ds.map(lambda r: {"text": ALPACA_TEMPLATE.format(**r) + r["output"] + tok.eos_token})
    ds = ds.map(lambda b: tok(b["text"], padding="max_length", truncation=True, max_length=MAX_LENGTH), batched=True,
                remove_columns=ds.column_names)
    lengths = [sum(m) for m in ds["attention_mask"]]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir)),
                           LoraConfig(task_type="CAUSAL_LM", **LORA))
    counter = Counter()
    inner = DataCollatorForLanguageModeling(tok, mlm=False)

    def collate(examples):
        batch = inner(examples)
        counter.fed += batch["input_ids"].numel()
        counter.real += int(batch["attention_mask"].sum())
        return batch

    args = TrainingArguments(output_dir=str(out / "v1"), per_device_train_batch_size=BATCH, learning_rate=LR,
                             num_train_epochs=1, seed=SEED, use_cpu=True, report_to=[], save_strategy="no",
                             logging_steps=50, disable_tqdm=True, dataloader_pin_memory=False)
    from transformers.trainer_callback import PrinterCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate)
    trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    stats = {"samples": len(lengths), "mean tokens": sum(lengths) / len(lengths), "max tokens": max(lengths)}
    return result.metrics["train_runtime"], counter, stats


def ours(model_dir: Path, data_dir: Path, out: Path) -> tuple[float, Counter]:
    import trl.trainer.sft_trainer as sft
    import yaml

    from llm_finetune.core.config import load_config
    from llm_finetune.trainer.checkpoints import StopFlag
    from llm_finetune.trainer.run import train

    counter = Counter()
    original = sft.DataCollatorForLanguageModeling.torch_call

    def counting(self, examples):
        batch = original(self, examples)
        counter.fed += batch["input_ids"].numel()
        counter.real += sum(len(e["input_ids"]) for e in examples)
        return batch

    sft.DataCollatorForLanguageModeling.torch_call = counting
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    ws = out / "ws"
    config.write_text(yaml.safe_dump({
        "apiVersion": "llm-finetune/v1", "run": {"name": "bench"},
        "paths": {"workspace": str(ws), "model": str(model_dir), "dataset": str(data_dir), "cache": str(ws / "cache"),
                  "run": str(ws / "runs" / "bench")},
        "model": {"uri": str(model_dir)}, "dataset": {"uri": str(data_dir)},
        "data": {"format": "instruction", "promptTemplate": ALPACA_TEMPLATE, "responseColumn": "output",
                 "maxSeqLength": MAX_LENGTH},
        "training": {"method": "lora", "lora": LORA,
                     "args": {"per_device_train_batch_size": BATCH, "learning_rate": LR, "num_train_epochs": 1,
                              "seed": SEED, "save_strategy": "no", "logging_steps": 50, "report_to": []}},
    }))
    try:
        train(load_config(config), StopFlag())
    finally:
        sft.DataCollatorForLanguageModeling.torch_call = original
    metrics = json.loads((ws / "runs" / "bench" / "output" / "metrics.json").read_text())
    return metrics["train"]["train_runtime"], counter


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 samples instead of 2000")
    parser.add_argument("--samples", type=int, default=None)
    opts = parser.parse_args(argv)
    n = opts.samples or (600 if opts.quick else 2000)
    from llm_finetune.core.log import setup_logging

    setup_logging("WARNING")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        root = Path(tmp)
        os.environ["TMPDIR"] = str(root)
        tempfile.tempdir = str(root)
        model_dir = build_tiny_model(root / "model")
        data_dir = write_data(root / "data", n)
        base_time, base_count, stats = v1_style(model_dir, data_dir, root / "v1")
        our_time, our_count = ours(model_dir, data_dir, root / "ours")
    print(f"data: {stats['samples']} Alpaca-like samples, {stats['mean tokens']:.0f} tokens on average, "
          f"longest {stats['max tokens']}; max length {MAX_LENGTH}, batch {BATCH}, LoRA r={LORA['r']}, 1 epoch, CPU")
    print(f"{'':12s} {'epoch time':>11s} {'tokens fed':>11s} {'non-pad share':>14s}")
    print(f"{'v1 style':12s} {base_time:10.1f}s {base_count.fed:11d} {100 * base_count.share():13.1f}%")
    print(f"{'ours':12s} {our_time:10.1f}s {our_count.fed:11d} {100 * our_count.share():13.1f}%")
    speedup = base_time / our_time
    print(f"speed-up: {speedup:.1f}x faster epoch (target >= 4x); non-pad share {100 * our_count.share():.1f}% "
          f"(target >= 95%)")
    ok = speedup >= 4 and our_count.share() >= 0.95
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
