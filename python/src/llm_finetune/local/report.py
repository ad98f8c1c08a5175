"""What a person wants to see after ``make run``: where things are, the loss curve, before/after.

* ``<workdir>/results/loss-curve.png`` — training loss (and eval loss) per step;
* ``<workdir>/results/samples.md`` — every held-out prompt (the eval split, up to 100): expected
  answer, the base model's and the fine-tuned model's answer (greedy decoding), each marked
  right or wrong;
* a closing summary with the eval loss before and after training (``eval_on_start``) and the
  held-out exact match before and after (``held-out exact match: 2% before -> 98% after (50
  prompts, none in the training split)``).
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


def held_out_prompts(cfg: JobConfig, limit: int, scratch: Path) -> tuple[list[tuple[str, str]], int]:
    """(prompt, expected) pairs of the eval split, formatted as the trainer does (at most ``limit``),
    and how many of those prompts the training split holds too."""
    from ..core.dataset import instruction_prompt, load_volume_dataset

    d = cfg.data
    if not d.eval_split or d.format not in ("instruction", "auto"):
        return [], 0
    splits = load_volume_dataset(cfg, scratch)
    if d.eval_split not in splits or d.response_column not in splits[d.eval_split].column_names:
        return [], 0
    held = splits[d.eval_split].select(range(min(limit, len(splits[d.eval_split]))))
    pairs = [(instruction_prompt(row, d.prompt_template, d.prompt_column), str(row[d.response_column])) for row in held]
    trained = {instruction_prompt(row, d.prompt_template, d.prompt_column) for row in splits[d.train_split]} \
        if d.train_split in splits else set()
    return pairs, sum(prompt in trained for prompt, _ in pairs)


def _models(cfg: JobConfig, adapter: Path):
    """(tokenizer, base model, fine-tuned model: base + the adapter)."""
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
    return tok, base.eval(), tuned.eval()


def _cell(text: str) -> str:
    return "`" + text.replace("\n", " \u23ce ").replace("|", "\\|").replace("`", "'") + "`" if text else "(nothing)"


def _answers(model, tok, prompts: list[str], max_new_tokens: int, batch: int = 32) -> list[str]:
    """Greedy continuations of ``prompts``, in batches (left-padded: every prompt ends where generation starts)."""
    import torch

    side, tok.padding_side = tok.padding_side, "left"
    answers = []
    try:
        for i in range(0, len(prompts), batch):
            ids = tok(prompts[i:i + batch], return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            answers += [a.strip() for a in tok.batch_decode(out[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)]
    finally:
        tok.padding_side = side
    return answers


def _mark(right: bool) -> str:
    return " \u2713" if right else " \u2717"


def write_samples(cfg: JobConfig, path: Path, limit: int = 100) -> dict[str, Any] | None:
    """Greedy answers of the base and the fine-tuned model to every held-out prompt (up to ``limit``)
    in ``path``, and their exact match: ``{path, prompts, before, after, inTraining}``."""
    prompts, in_training = held_out_prompts(cfg, limit, path.parent / ".cache")
    adapter = Path(cfg.output_dir)
    if not prompts or not (adapter / "adapter_config.json").exists():
        return None
    tok, base, tuned = _models(cfg, adapter)
    longest = max(len(tok(expected, add_special_tokens=False)["input_ids"]) for _, expected in prompts)
    texts = [prompt for prompt, _ in prompts]
    before, after = (_answers(model, tok, texts, min(longest + 8, 256)) for model in (base, tuned))
    rows = [(prompt, expected.strip(), b, t) for (prompt, expected), b, t in zip(prompts, before, after)]
    found = {"path": str(path), "prompts": len(rows), "inTraining": in_training,
             "before": sum(b == e for _, e, b, _ in rows) / len(rows), "after": sum(t == e for _, e, _, t in rows) / len(rows)}
    lines = ["# Held-out prompts: base model vs fine-tuned", "",
             f"Exact match (greedy decoding): {exact_match_line(found)}.", "",
             "| # | prompt | expected | base model | fine-tuned |", "|---|---|---|---|---|"]
    for i, (prompt, expected, b, t) in enumerate(rows, 1):
        lines.append(f"| {i} | {_cell(prompt.rstrip())} | {_cell(expected)} | {_cell(b)}{_mark(b == expected)} "
                     f"| {_cell(t)}{_mark(t == expected)} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return found


def exact_match_line(found: dict[str, Any]) -> str:
    """``3% before -> 74% after (50 prompts)``, saying how many held-out prompts the training split holds too."""
    seen = found["inTraining"]
    return (f"{100 * found['before']:.0f}% before -> {100 * found['after']:.0f}% after ({found['prompts']} prompts"
            + (f", {seen} of them also in the training split)" if seen else ", none in the training split)"))


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
        "exact_match": None,
    }
    if make_samples:
        found["loss_curve"] = str(plot_loss(history, results / "loss-curve.png") or "") or None
        found["exact_match"] = write_samples(cfg, results / "samples.md")
        found["samples"] = found["exact_match"]["path"] if found["exact_match"] else None
    lines = ["", "run-local finished: job " + plan.job_name,
             f"  output (adapter, tokenizer, manifest.json, metrics.json): {found['output']}",
             f"  checkpoints: {found['checkpoints']}",
             f"  pod logs: {found['logs']}"]
    if found["eval_loss_before"] is not None:
        lines.append(f"  eval loss: {found['eval_loss_before']:.4f} before training -> {found['eval_loss_after']:.4f} after")
    elif found["eval_loss_after"] is not None:
        lines.append(f"  eval loss after training: {found['eval_loss_after']:.4f}")
    if found["exact_match"]:
        lines.append(f"  held-out exact match: {exact_match_line(found['exact_match'])}")
    if found["loss_curve"]:
        lines.append(f"  loss curve: {found['loss_curve']}")
    if found["samples"]:
        lines.append(f"  before/after generations: {found['samples']}")
    print("\n".join(lines), flush=True)
    return found
