"""Deterministic test assets: a tiny Llama model and an Alpaca-like instruction dataset.

Used by the tests, the benchmarks and ``llm-finetune demo-assets``, so that everything runs
offline on a CPU; ``make run``'s own task and pretrained base are in :mod:`.demo_task`. The same
seed gives the same files on the same machine.

* The dataset's tasks are learnable by a tiny model (reverse, sort, count, repeat,
  uppercase words from a small vocabulary), and its lengths spread like Alpaca's: most
  samples are short, some are long.
* The tokenizer is a byte-level BPE with a chat template that marks assistant turns
  with ``{% generation %}`` (so assistant-only loss works) and ``<|end|>`` as EOS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any, Callable

ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}\n"
    "{% else %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]

_WORDS = (
    "apple river stone cloud green quiet bright north table window music paper garden silver "
    "orange forest candle winter summer planet rocket yellow purple simple little mountain ocean "
    "bridge castle dragon feather golden harbor island jungle lemon meadow pepper rabbit shadow tiger"
).split()
_NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def _length(rng: random.Random) -> int:
    """Word count with a long tail: most inputs short, a few long (Alpaca-like spread)."""
    return max(1, min(60, int(rng.lognormvariate(1.6, 0.8))))


def make_samples(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` Alpaca-style samples: instruction, input, output."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(_length(rng))]
        kind = rng.randrange(5)
        if kind == 0:
            sample = ("Reverse the order of the words.", words, list(reversed(words)))
        elif kind == 1:
            sample = ("Sort the words alphabetically.", words, sorted(words))
        elif kind == 2:
            count = len(words)
            answer = [_NUMBERS[count]] if count < len(_NUMBERS) else [str(count)]
            sample = ("How many words are there?", words, answer)
        elif kind == 3:
            sample = ("Repeat the words.", words, words)
        else:
            sample = ("Write the words in capital letters.", words, [w.upper() for w in words])
        instruction, inp, output = sample
        out.append({"instruction": instruction, "input": " ".join(inp), "output": " ".join(output)})
    return out


def to_format(sample: dict[str, str], style: str) -> dict:
    """Turn an Alpaca sample into another dataset style (the trainer's data formats)."""
    prompt = ALPACA_TEMPLATE.format(**sample)
    if style == "alpaca":
        return dict(sample)
    if style == "prompt-completion":
        return {"prompt": prompt, "completion": sample["output"]}
    if style == "text":
        return {"text": prompt + sample["output"]}
    if style == "chat":
        return {"messages": [
            {"role": "user", "content": f"{sample['instruction']}\n{sample['input']}"},
            {"role": "assistant", "content": sample["output"]},
        ]}
    raise ValueError(f"unknown style {style!r}")


def write_dataset(directory: str | os.PathLike[str], *, n_train: int = 400, n_eval: int = 40, seed: int = 0,
                  style: str = "alpaca") -> Path:
    """Write ``train.jsonl`` and ``test.jsonl`` (``test`` is the eval split) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    samples = make_samples(n_train + n_eval, seed)
    for name, part in (("train", samples[:n_train]), ("test", samples[n_train:])):
        with open(d / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for s in part:
                fh.write(json.dumps(to_format(s, style), sort_keys=True) + "\n")
    return d


def _corpus(seed: int) -> list[str]:
    texts = []
    for s in make_samples(2000, seed + 1):
        texts.append(ALPACA_TEMPLATE.format(**s) + s["output"])
        texts.append(f"{s['instruction']}\n{s['input']}\n{s['output']}")
    texts += list(_WORDS) + [w.upper() for w in _WORDS] + _NUMBERS
    return texts


def build_tokenizer(vocab_size: int = 1024, seed: int = 0, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer trained on ``corpus`` (default: the Alpaca-like demo corpus; deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus if corpus is not None else _corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<|end|>", bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    return fast


def build_tiny_model(directory: str | os.PathLike[str], *, seed: int = 0, vocab_size: int = 1024,
                     hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     corpus: list[str] | None = None, train: Callable[[Any, Any], None] | None = None) -> Path:
    """Save a tiny Llama and its tokenizer (trained on ``corpus``, default the Alpaca-like demo
    corpus) to ``directory``: randomly initialised, or trained by ``train(model, tokenizer)``
    first (the ``make run`` demo's pretraining: :mod:`.demo_task`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size, seed, corpus)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if train is not None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same result wherever it runs: no thread-count-dependent reductions
        try:
            train(model, tokenizer)
        finally:
            torch.set_num_threads(threads)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return d


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="Folder to write model/ and dataset/ into.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-samples", type=int, default=400)
    parser.add_argument("--eval-samples", type=int, default=40)
    parser.add_argument("--style", default="alpaca", choices=["alpaca", "prompt-completion", "text", "chat"])


def run(args: argparse.Namespace) -> int:
    base = Path(args.directory)
    build_tiny_model(base / "model", seed=args.seed)
    write_dataset(base / "dataset", n_train=args.train_samples, n_eval=args.eval_samples, seed=args.seed,
                  style=args.style)
    print(f"demo model: {base / 'model'}\ndemo dataset: {base / 'dataset'}")
    return 0
