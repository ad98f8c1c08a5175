#!/usr/bin/env python3
"""The GPU check: the trainer as the chart's pods run it, next to a plain TRL ``SFTTrainer``, per configuration.

    make gpu-check                  # = bash tests/gpu/check.sh: on a machine with a GPU, no network needed
    python tests/gpu/check.py --cpu # the same logic on CPU with a tiny model (tests/gpu/test_check.py, in make test)

For every configuration (architecture x method x sequence length) it

1. builds a **random-weight model of a real architecture** (Qwen2.5-0.5B- and 1.5B-sized
   ``Qwen2Config``; ``tiny`` on CPU) with a byte-level BPE tokenizer trained here
   (``llm_finetune.local.demo_assets.build_tokenizer``) and a ``text`` dataset of random word
   documents of spread lengths, both with the initializer's completion manifests, as on the volume;
2. runs **the trainer as a pod does**: ``python -m llm_finetune launch --config config.yaml``
   (torchrun, ``PET_*`` env, one process), with the trainer's own defaults: bf16 and activation
   checkpointing on GPUs, SDPA (FlashAttention 2 when ``flash_attn`` is installed), padding-free
   packing (``data.packing: true``), LoRA on every linear layer, full fine-tuning, and QLoRA
   when ``bitsandbytes`` imports;
3. runs **the baseline**: ``tests/gpu/baseline_trl.py``, a plain TRL ``SFTTrainer`` on the same
   model files, data and settings (``packing=True``: TRL's padding-free BFD packing);
4. prints per configuration and implementation: tokens/s (``num_input_tokens_seen`` — the
   non-padding tokens — over ``train_runtime``, whole run), peak memory (CUDA's peak
   allocation; on CPU the process's peak RSS), MFU, and the ratio trainer/baseline. The table
   and every figure go to ``<out>/results.json`` and ``<out>/results.md``.

MFU (model FLOPs utilisation) = tokens/s x FLOPs per token / the device's peak dense bf16 FLOP/s
(H100/H200 SXM 989.4e12, A100 312e12; others: ``--peak-tflops``). FLOPs per token, after PaLM
(Chowdhery et al. 2022, appendix B), counting the model's matmuls and not recomputation
(activation checkpointing's extra forward is not "model" FLOPs):

* full fine-tuning: ``6 N + 12 L d S``; LoRA / QLoRA: ``4 N + 6 N_lora + 12 L d S`` (the frozen
  weights get no weight gradient, the activations' gradients still flow through them);
* ``N``: parameters of the matmuls (every decoder linear layer and the LM head, not the input
  embedding lookup), ``N_lora``: the adapters', ``L`` layers, ``d`` hidden size (heads x head
  dim), ``S``: attention span per token. Packing keeps documents apart (padding-free: each token
  attends within its own document), so ``S = sum(s_i^2) / sum(s_i)`` over the documents' lengths
  as trained, not the packed length.

Targets (issue 12): MFU >= 40 % for full fine-tuning of the 1.5B config in bf16 with packing;
LoRA tokens/s >= the TRL baseline's; no OOM at 4k sequence length on the 1.5B config with
gradient checkpointing. ``--targets`` makes the exit code say whether they were met.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# Qwen2.5-0.5B / 1.5B (config.json of Qwen/Qwen2.5-0.5B and -1.5B); weights random.
ARCHS: dict[str, dict] = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True, rope_theta=1e6),
}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0}  # dense bf16, SXM where it differs


@dataclass(frozen=True)
class Case:
    arch: str
    method: str  # lora | full | qlora
    seq: int
    batch: int
    steps: int

    @property
    def name(self) -> str:
        return f"{self.arch} {self.method} seq {self.seq}"


GPU_CASES = [
    Case("qwen2.5-0.5b", "lora", 2048, 8, 30),
    Case("qwen2.5-0.5b", "full", 2048, 8, 30),
    Case("qwen2.5-1.5b", "lora", 2048, 8, 30),
    Case("qwen2.5-1.5b", "full", 2048, 8, 30),
    Case("qwen2.5-1.5b", "full", 4096, 4, 20),  # no OOM at 4k with activation checkpointing
    Case("qwen2.5-1.5b", "qlora", 2048, 8, 20),  # only when bitsandbytes imports
]
CPU_CASES = [Case("tiny", "lora", 128, 2, 4), Case("tiny", "full", 128, 2, 4)]


# --------------------------------------------------------------------------- FLOPs
def matmul_params(arch: dict) -> int:
    """N: the weights of every decoder linear layer and of the LM head (biases and norms left out)."""
    d, inter, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    head_dim = d // arch["num_attention_heads"]
    kv = arch["num_key_value_heads"] * head_dim
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * inter  # q, k, v, o, gate, up, down
    return layers * per_layer + arch["vocab_size"] * d


def lora_params(arch: dict, r: int) -> int:
    """N_lora: r x (in + out) for every linear layer of every decoder layer (target_modules all-linear)."""
    d, inter, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    kv = arch["num_key_value_heads"] * (d // arch["num_attention_heads"])
    per_layer = r * ((d + d) + 2 * (d + kv) + (d + d) + 2 * (d + inter) + (inter + d))
    return layers * per_layer


def flops_per_token(arch: dict, method: str, span: float, r: int = LORA["r"]) -> float:
    """Training FLOPs per token (module docstring): 6N + 12LdS full, 4N + 6N_lora + 12LdS with adapters."""
    n, attention = matmul_params(arch), 12 * arch["num_hidden_layers"] * arch["hidden_size"] * span
    if method == "full":
        return 6 * n + attention
    return 4 * n + 6 * lora_params(arch, r) + attention


def attention_span(lengths: list[int]) -> float:
    """S = sum(s^2) / sum(s): the mean number of positions a token's attention spans, documents kept apart."""
    return sum(s * s for s in lengths) / max(1, sum(lengths))


def peak_tflops(device_name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


# --------------------------------------------------------------------------- assets
def build_model(arch_name: str, where: Path, *, cuda: bool) -> Path:
    """A random-weight model of ``arch_name`` and the BPE tokenizer, with the initializer's manifest."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from llm_finetune.core.volume import write_manifest
    from llm_finetune.local.demo_assets import build_tokenizer

    if (where / "config.json").exists():
        return where
    tok = build_tokenizer(1024)
    arch = dict(ARCHS[arch_name])
    arch["vocab_size"] = max(arch["vocab_size"], len(tok))
    config = Qwen2Config(**arch, max_position_embeddings=32768, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32
    with torch.device("cuda" if cuda else "cpu"):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.save_pretrained(where, safe_serialization=True)
    tok.save_pretrained(where)
    write_manifest(where, {"kind": "model", "source": f"random:{arch_name}", "revision": "random", "sourceKey": arch_name,
                           "files": []})
    del model
    if cuda:
        torch.cuda.empty_cache()
    return where


def build_dataset(case: Case, model_dir: Path, where: Path) -> list[int]:
    """``train.jsonl`` of random word documents, seq/8 to seq tokens long, enough for the run; returns
    the documents' lengths as trained (tokens + EOS, at most ``seq``)."""
    from transformers import AutoTokenizer

    from llm_finetune.core.volume import write_manifest
    from llm_finetune.local.demo_assets import _WORDS

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(case.seq)
    needed, texts, lengths = case.steps * case.batch * case.seq * 1.3, [], []
    while sum(lengths) < needed:
        target = rng.randint(max(8, case.seq // 8), case.seq - 1)
        ids = tok(" ".join(rng.choice(_WORDS) for _ in range(target)), add_special_tokens=False)["input_ids"][:target]
        text = tok.decode(ids)
        texts.append(text)
        lengths.append(min(len(tok(text, add_special_tokens=False)["input_ids"]) + 1, case.seq))
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "train.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    write_manifest(where, {"kind": "dataset", "source": "random:words", "revision": str(case.seq), "sourceKey": "words",
                           "layout": "files", "fileType": "jsonl", "splits": {"train": ["train.jsonl"]},
                           "files": [{"path": "train.jsonl", "size": (where / "train.jsonl").stat().st_size}]})
    return lengths


def settings(case: Case, *, cuda: bool, attn: str) -> dict:
    """What both implementations train with (the trainer's GPU defaults, written out for the baseline)."""
    return {"method": case.method, "seq": case.seq, "batch": case.batch, "steps": case.steps,
            "learning_rate": 1e-5 if case.method == "full" else 2e-4, "bf16": cuda, "gradient_checkpointing": cuda,
            "attn_implementation": attn, "dtype": "bfloat16" if cuda else "float32", "lora": LORA, "seed": 0}


def job_config(case: Case, s: dict, model_dir: Path, data_dir: Path, ws: Path) -> Path:
    """The job config as the chart renders it (the ConfigMap's config.yaml), paths under ``ws``."""
    import yaml

    name = f"gpu-check-{case.arch}-{case.method}-{case.seq}".replace(".", "")
    cfg = {
        "apiVersion": "llm-finetune/v1", "run": {"name": name, "id": ""},
        "paths": {"workspace": str(ws), "model": str(model_dir), "dataset": str(data_dir), "cache": str(ws / "cache"),
                  "run": str(ws / "runs" / name)},
        "storage": {"mode": "shared"},
        "model": {"uri": str(model_dir), "torchDtype": s["dtype"], "attnImplementation": s["attn_implementation"]},
        "dataset": {"uri": str(data_dir)},
        "data": {"format": "text", "maxSeqLength": case.seq, "packing": True},
        "training": {"method": case.method, "lora": LORA,
                     "args": {"max_steps": case.steps, "per_device_train_batch_size": case.batch,
                              "learning_rate": s["learning_rate"], "logging_steps": 5, "save_strategy": "no",
                              "report_to": "none", "seed": s["seed"]}},
    }
    path = ws / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- runs
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(ws: Path, *, cpu: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_TOKEN", "LLM_FINETUNE_"))}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(ws / "hf-home"), "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1", "LLM_FINETUNE_TERMINATION_LOG": str(ws / "termination-log"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "python" / "src"), os.environ.get("PYTHONPATH")]))})
    if cpu:
        env.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")})
    return env


def _run(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=log.parent)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {proc.returncode} after {time.monotonic() - started:.0f}s "
                           f"(log {log}):\n{tail}")


def run_trainer(config: Path, env: dict[str, str], timeout: float) -> dict:
    """``llm-finetune launch --config`` as the trainer container runs it (PET_* env as the operator sets)."""
    import yaml

    env = {**env, "PET_NNODES": "1", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "0",
           "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(_free_port())}
    _run([sys.executable, "-m", "llm_finetune", "launch", "--config", str(config)], env,
         config.with_suffix(".trainer.log"), timeout)
    run = Path(yaml.safe_load(config.read_text())["paths"]["run"])
    metrics = json.loads((run / "output" / "metrics.json").read_text())
    return {"tokens": metrics["num_input_tokens_seen"], "seconds": metrics["train"]["train_runtime"],
            "peak_bytes": metrics["peak_memory_bytes"], "steps": metrics["global_step"],
            "loss": metrics["train"].get("train_loss"), "output": str(run / "output")}


def run_baseline(case: Case, s: dict, model_dir: Path, data_dir: Path, ws: Path, env: dict[str, str],
                 timeout: float) -> dict:
    spec = ws / f"baseline-{case.arch}-{case.method}-{case.seq}.json"
    spec.write_text(json.dumps({**s, "model": str(model_dir), "data": str(data_dir / "train.jsonl"),
                                "output_dir": str(ws / (spec.stem + "-out")), "result": str(spec.with_suffix(".result.json"))}))
    _run([sys.executable, str(HERE / "baseline_trl.py"), str(spec)], env, spec.with_suffix(".log"), timeout)
    return json.loads(spec.with_suffix(".result.json").read_text())


def measure(found: dict, arch: dict, case: Case, span: float, peak: float | None) -> dict:
    tokens_per_s = found["tokens"] / found["seconds"] if found["seconds"] else 0.0
    fpt = flops_per_token(arch, case.method, span)
    return {**found, "tokens_per_s": tokens_per_s, "flops_per_token": fpt,
            "mfu": tokens_per_s * fpt / (peak * 1e12) if peak else None}


def run_case(case: Case, root: Path, *, cuda: bool, attn: str, peak: float | None, timeout: float) -> dict:
    ws = root / f"{case.arch}-{case.method}-{case.seq}"
    ws.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(case.arch, root / "models" / case.arch, cuda=cuda)
    arch = json.loads((model_dir / "config.json").read_text())
    lengths = build_dataset(case, model_dir, ws / "dataset")
    span = attention_span(lengths)
    s = settings(case, cuda=cuda, attn=attn)
    env = _env(ws, cpu=not cuda)
    row = {"case": asdict(case), "name": case.name, "settings": s, "attention_span": span, "error": None}
    try:
        row["trainer"] = measure(run_trainer(job_config(case, s, model_dir, ws / "dataset", ws), env, timeout),
                                 arch, case, span, peak)
        row["baseline"] = measure(run_baseline(case, s, model_dir, ws / "dataset", ws, env, timeout),
                                  arch, case, span, peak)
        row["ratio"] = row["trainer"]["tokens_per_s"] / row["baseline"]["tokens_per_s"]
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        row["error"] = str(exc)
        print(f"{case.name}: FAILED: {exc}", file=sys.stderr, flush=True)
    return row


# --------------------------------------------------------------------------- report
def _fmt(impl: dict | None, key: str, scale: float = 1.0, spec: str = ".0f") -> str:
    value = impl.get(key) if impl else None
    return "-" if value is None else format(value * scale, spec)


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| configuration | implementation | tokens/s | peak memory GiB | MFU % | tokens/s vs TRL |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        if row["error"]:
            lines.append(f"| {row['name']} | failed: {row['error'].splitlines()[0][:120]} | | | | |")
            continue
        for label, key in (("llm-finetune trainer", "trainer"), ("TRL SFTTrainer", "baseline")):
            impl = row[key]
            ratio = f"{row['ratio']:.2f}x" if key == "trainer" else "1.00x"
            lines.append(f"| {row['name']} | {label} | {_fmt(impl, 'tokens_per_s')} | "
                         f"{_fmt(impl, 'peak_bytes', 2 ** -30, '.2f')} | {_fmt(impl, 'mfu', 100, '.1f')} | {ratio} |")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets that were not met (configurations that did not run count as not met)."""
    missed = []
    by = {(r["case"]["arch"], r["case"]["method"], r["case"]["seq"]): r for r in rows}
    full = by.get(("qwen2.5-1.5b", "full", 2048))
    if not full or full["error"] or (full["trainer"]["mfu"] or 0) < 0.40:
        missed.append("MFU >= 40% for full fine-tuning of the 1.5B config")
    for r in rows:
        if r["case"]["method"] == "lora" and (r["error"] or r["ratio"] < 1.0):
            missed.append(f"LoRA tokens/s >= TRL's ({r['name']})")
    long = by.get(("qwen2.5-1.5b", "full", 4096))
    if not long or long["error"]:
        missed.append("no OOM at 4k on the 1.5B config")
    return missed


def environment(cuda: bool) -> dict:
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu", "cuda": torch.version.cuda if cuda else None}
    for dist in ("trl", "peft", "accelerate", "datasets", "flash_attn", "bitsandbytes"):
        try:
            info[dist] = __import__(dist).__version__
        except Exception:  # noqa: BLE001 - not installed, or broken: reported as absent
            info[dist] = None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="CPU mode: the tiny model (what make test runs)")
    parser.add_argument("--out", type=Path, default=REPO / ".gpu-check", help="work and results folder")
    parser.add_argument("--only", default="", help="run only configurations whose name contains this text")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak dense bf16 TFLOP/s")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per training run")
    parser.add_argument("--targets", action="store_true", help="exit 1 when one of the issue's GPU targets is missed")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("gpu-check: no CUDA device here; run with --cpu for the CPU mode", file=sys.stderr)
        return 2
    env_info = environment(cuda)
    attn = "flash_attention_2" if cuda and env_info["flash_attn"] else "sdpa"
    cases = GPU_CASES if cuda else CPU_CASES
    cases = [c for c in cases if args.only in c.name and (c.method != "qlora" or env_info["bitsandbytes"])]
    peak = peak_tflops(env_info["device"], args.peak_tflops)
    args.out.mkdir(parents=True, exist_ok=True)
    started, rows = time.monotonic(), []
    for case in cases:
        print(f"gpu-check: {case.name} ...", flush=True)
        rows.append(run_case(case, args.out, cuda=cuda, attn=attn, peak=peak, timeout=args.timeout))
    header = (f"GPU check on {env_info['device']} ({attn}; peak {peak or 'unknown'} TFLOP/s bf16; "
              f"{time.monotonic() - started:.0f} s in all)")
    text = table(rows, header)
    missed = targets(rows) if cuda else []
    if cuda:
        text += "\n\nTargets not met: " + ("; ".join(missed) if missed else "none") + "\n"
    print(text, flush=True)
    (args.out / "results.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps({"environment": env_info, "peak_tflops": peak, "rows": rows,
                                                       "missed": missed}, indent=1), encoding="utf-8")
    if any(r["error"] for r in rows):
        return 1
    return 1 if args.targets and missed else 0


if __name__ == "__main__":
    sys.exit(main())
