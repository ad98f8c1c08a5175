"""The ``make run`` demo's task: instructions on word triples, and a base model that does not follow them.

Five instructions, each on three words from a 41-word vocabulary (deterministic, no network)::

    Reverse            First           Middle          Last            Repeat
    apple river stone  apple river ... apple river ... apple river ... apple river stone
    -> stone river apple  -> apple      -> river        -> stone        -> apple river stone

* **The base model** (``build_assets``): a 64-wide, 2-layer Llama pretrained (1000 steps of 32)
  on the same transformations written with a symbol where the instruction goes
  (``<`` reverse, ``[`` first, ``|`` middle, ``]`` last, ``=`` repeat: ``<\\napple river
  stone\\nstone river apple``). It has the skills but has never seen an instruction word, so
  it does not follow the prompts: before fine-tuning it answers a few percent of them.
* **The dataset** (``write_dataset``): ``train.jsonl`` (600 rows) and ``test.jsonl`` (50
  rows, 10 per instruction), Alpaca columns ``instruction``/``input``/``output``. No word
  triple of the test split occurs in the training split or in the pretraining text: every
  held-out prompt is new to the model.
* Fine-tuning (``values-examples/local-demo.yaml``: LoRA on every linear layer and on the
  token embeddings, where the new instruction words get their vectors) teaches the
  instructions; ``run-local``'s report measures held-out exact match before and after.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable

PROMPT_TEMPLATE = "{instruction}\n{input}\n"  # the demo values' data.promptTemplate
WORDS = (
    "apple river stone cloud green quiet bright north table window music paper garden silver "
    "orange forest candle winter summer planet rocket yellow purple simple little mountain ocean "
    "bridge castle dragon feather golden harbor island jungle lemon meadow pepper rabbit shadow tiger"
).split()
# instruction -> (the symbol that stands for it in the pretraining text, what it does to the words)
TASKS: dict[str, tuple[str, Callable[[list[str]], list[str]]]] = {
    "Repeat": ("=", lambda w: w),
    "Reverse": ("<", lambda w: w[::-1]),
    "First": ("[", lambda w: w[:1]),
    "Middle": ("|", lambda w: w[1:2]),
    "Last": ("]", lambda w: w[-1:]),
}
N_WORDS = 3
# The base model and its pretraining (measured: ~98 % held-out exact match after the demo's fine-tune).
HIDDEN, LAYERS, HEADS = 64, 2, 8
PRETRAIN_STEPS, PRETRAIN_BATCH, PRETRAIN_LR = 1000, 32, 3e-3


def _triple(rng: random.Random) -> list[str]:
    return [rng.choice(WORDS) for _ in range(N_WORDS)]


def _row(instruction: str, words: list[str]) -> dict[str, str]:
    return {"instruction": instruction, "input": " ".join(words), "output": " ".join(TASKS[instruction][1](words))}


def split(n_train: int = 600, n_eval: int = 50, seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train rows, held-out rows): held-out inputs are distinct and never in the training rows."""
    rng = random.Random(seed)
    names = list(TASKS)
    held_out: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(held_out) < n_eval:
        words = _triple(rng)
        if " ".join(words) not in seen:
            seen.add(" ".join(words))
            held_out.append(_row(names[len(held_out) % len(names)], words))
    train = []
    while len(train) < n_train:
        words = _triple(rng)
        if " ".join(words) not in seen:
            train.append(_row(rng.choice(names), words))
    return train, held_out


def write_dataset(directory: str | Path, train: list[dict[str, str]], held_out: list[dict[str, str]]) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", held_out)):
        with open(d / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    return d


def pretraining_text(rng: random.Random, avoid: set[str]) -> tuple[str, str]:
    """(context, continuation): a symbol, a word triple not in ``avoid``, and the transformed words."""
    while True:
        words = _triple(rng)
        if " ".join(words) not in avoid:
            break
    symbol, transform = TASKS[rng.choice(list(TASKS))]
    return f"{symbol}\n{' '.join(words)}\n", " ".join(transform(words))


def tokenizer_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = [PROMPT_TEMPLATE.format(**_row(name, _triple(rng))) for _ in range(100) for name in TASKS]
    texts += ["".join(pretraining_text(rng, set())) for _ in range(500)]
    return texts + WORDS + list(TASKS)


def pretrain(model, tokenizer, *, avoid: set[str], seed: int, steps: int = PRETRAIN_STEPS) -> None:
    """Next-token training on the symbol-marked transformations, the loss on the transformed words only."""
    import torch
    import torch.nn.functional as F

    rng = random.Random(seed)
    pairs = [pretraining_text(rng, avoid) for _ in range(steps * PRETRAIN_BATCH)]
    heads = tokenizer([c for c, _ in pairs], add_special_tokens=False)["input_ids"]
    tails = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
    warmup = max(1, steps // 20)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = PRETRAIN_LR * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        rows = range(step * PRETRAIN_BATCH, (step + 1) * PRETRAIN_BATCH)
        seqs = [heads[i] + tails[i] + [tokenizer.eos_token_id] for i in rows]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
        attn = torch.zeros_like(ids)
        target = torch.full_like(ids, -100)
        for j, (i, seq) in enumerate(zip(rows, seqs)):
            ids[j, :len(seq)] = torch.tensor(seq)
            attn[j, :len(seq)] = 1
            target[j, len(heads[i]):len(seq)] = torch.tensor(seq[len(heads[i]):])
        hidden = model.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
        wanted = target[:, 1:] != -100  # the LM head only where there is a target: half the compute
        loss = F.cross_entropy(model.lm_head(hidden[wanted]), target[:, 1:][wanted])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def build_assets(directory: str | Path, *, seed: int = 0) -> Path:
    """``model/`` (the pretrained base and its tokenizer) and ``dataset/`` under ``directory``."""
    from .demo_assets import build_tiny_model

    d = Path(directory)
    train, held_out = split(seed=seed)
    write_dataset(d / "dataset", train, held_out)
    build_tiny_model(d / "model", seed=seed, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS,
                     corpus=tokenizer_corpus(seed),
                     train=lambda model, tok: pretrain(model, tok, avoid={r["input"] for r in held_out}, seed=seed))
    return d
