"""What a person wants to see after ``make run``: where things are, the loss curve, before/after.

* ``<workdir>/results/loss-curve.png`` — training loss (and eval loss) per step;
* ``<workdir>/results/samples.md`` — held-out prompts: expected answer, the base model's
  answer and the fine-tuned model's answer (greedy decoding);
* a closing summary with the eval loss before and after training (``eval_on_start``).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from ..core.config import JobConfig, load_config
from .plan import JobPlan

log = logging.getLogger(__name__)


def _history(cfg: JobConfig) -> list[dict[str, Any]]:
    """The trainer's log history: from output/metrics.json, else the newest checkpoint's trainer_state.json."""
    metrics = Path(cfg.output_dir) / "metrics.json"
    if metrics.exists():
        data = json.loads(metrics.read_text())
        if isinstance(data.get("log_history"), list):
            return data["log_history"]
    states = sorted(Path(cfg.checkpoints_dir).glob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[-1]))
    return json.loads(states[-1].read_text()).get("log_history", []) if states else []


def plot_loss(history: list[dict[str, Any]], path: Path) -> Path | None:
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o--", label="eval loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("llm-finetune run-local")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _held_out_prompts(cfg: JobConfig, n: int, scratch: Path) -> list[tuple[str, str]]:
    """(prompt, expected) pairs from the eval split, loaded and formatted as the trainer does."""
    from ..core.dataset import instruction_prompt, load_volume_dataset

    d = cfg.data
    if not d.eval_split or d.format not in ("instruction", "auto"):
        return []
    splits = load_volume_dataset(cfg, scratch)
    if d.eval_split not in splits:
        return []
    rows = splits[d.eval_split].select(range(min(n, len(splits[d.eval_split]))))
    if d.response_column not in rows.column_names:
        return []
    return [(instruction_prompt(row, d.prompt_template, d.prompt_column), str(row[d.response_column])) for row in rows]


def write_samples(cfg: JobConfig, path: Path, n: int = 4) -> Path | None:
    prompts = _held_out_prompts(cfg, n, path.parent / ".cache")
    adapter = Path(cfg.output_dir)
    if not prompts or not (adapter / "adapter_config.json").exists():
        return None
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(cfg.model_dir, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(cfg.model_dir, local_files_only=True)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6
        warnings.simplefilter("ignore", FutureWarning)
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg.model_dir, local_files_only=True),
                                          str(adapter), local_files_only=True)

    def generate(model, prompt: str) -> str:
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    lines = ["# Held-out prompts: base model vs fine-tuned", ""]
    for prompt, expected in prompts:
        lines += ["```", prompt.rstrip(), "```", f"- expected:   `{expected}`",
                  f"- base model: `{generate(base, prompt)}`", f"- fine-tuned: `{generate(tuned, prompt)}`", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def report(plan: JobPlan, *, make_samples: bool = True) -> dict[str, Any]:
    """Print the closing summary; return what it found (used by tests)."""
    os.environ["LLM_FINETUNE_PATH_MAP"] = ",".join(f"{k}={v}" for k, v in plan.mounts.items())
    try:
        cfg = load_config(plan.config_file)
    finally:
        os.environ.pop("LLM_FINETUNE_PATH_MAP", None)
    results = Path(plan.workdir) / "results"
    history = _history(cfg)
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    found: dict[str, Any] = {
        "output": cfg.output_dir,
        "checkpoints": cfg.checkpoints_dir,
        "logs": str(Path(plan.workdir) / "logs"),
        "eval_loss_before": evals[0] if len(evals) > 1 else None,
        "eval_loss_after": evals[-1] if evals else None,
        "loss_curve": None,
        "samples": None,
    }
    if make_samples:
        found["loss_curve"] = str(plot_loss(history, results / "loss-curve.png") or "") or None
        found["samples"] = str(write_samples(cfg, results / "samples.md") or "") or None
    lines = ["", "run-local finished: job " + plan.job_name,
             f"  output (adapter, tokenizer, manifest.json, metrics.json): {found['output']}",
             f"  checkpoints: {found['checkpoints']}",
             f"  pod logs: {found['logs']}"]
    if found["eval_loss_before"] is not None:
        lines.append(f"  eval loss: {found['eval_loss_before']:.4f} before training -> {found['eval_loss_after']:.4f} after")
    elif found["eval_loss_after"] is not None:
        lines.append(f"  eval loss after training: {found['eval_loss_after']:.4f}")
    if found["loss_curve"]:
        lines.append(f"  loss curve: {found['loss_curve']}")
    if found["samples"]:
        lines.append(f"  before/after generations: {found['samples']}")
    print("\n".join(lines), flush=True)
    return found
