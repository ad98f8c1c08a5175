"""The GPU check's CPU mode (tests/gpu/check.sh --cpu): its whole logic on a tiny Qwen2, here.

On a GPU machine the same script builds Qwen2.5-0.5B/1.5B-sized random models; here it runs
the trainer through ``llm-finetune launch`` and the plain TRL baseline on the tiny one, and
the table, the figures and the FLOPs formula are checked against what the runs wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import check  # noqa: E402

pytestmark = pytest.mark.slow


def test_flops_per_token_counts_the_qwen_matmuls():
    # Qwen2.5-1.5B: 28 layers of q/k/v/o (kv 256 wide) + a 8960-wide MLP, and the 151936 x 1536 LM head
    arch = check.ARCHS["qwen2.5-1.5b"]
    layer = 1536 * 1536 * 2 + 2 * 1536 * 256 + 3 * 1536 * 8960
    assert check.matmul_params(arch) == 28 * layer + 151936 * 1536
    assert 1.5e9 < check.matmul_params(arch) < 1.6e9  # the published 1.54B parameters
    n = check.matmul_params(arch)
    assert check.flops_per_token(arch, "full", 1000) == 6 * n + 12 * 28 * 1536 * 1000
    lora = check.flops_per_token(arch, "lora", 1000)
    assert lora == 4 * n + 6 * check.lora_params(arch, 16) + 12 * 28 * 1536 * 1000
    assert check.lora_params(arch, 16) < 0.02 * n
    # documents kept apart: two documents of 100 and 300 tokens span (100^2 + 300^2) / 400 positions
    assert check.attention_span([100, 300]) == 250


def test_the_cpu_mode_runs_the_trainer_as_a_pod_and_the_trl_baseline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LLM_FINETUNE_"))}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(["bash", str(HERE / "check.sh"), "--cpu", "--out", str(tmp_path), "--peak-tflops", "0.5"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["case"]["method"]: r for r in results["rows"]}
    assert set(rows) == {"lora", "full"} and not any(r["error"] for r in rows.values())
    for method, row in rows.items():
        for impl in ("trainer", "baseline"):
            found = row[impl]
            assert found["steps"] == row["case"]["steps"]
            assert found["tokens"] > 0 and found["seconds"] > 0 and found["peak_bytes"] > 50 * 2 ** 20
            assert found["tokens_per_s"] == pytest.approx(found["tokens"] / found["seconds"])
            assert found["mfu"] == pytest.approx(found["tokens_per_s"] * found["flops_per_token"] / 0.5e12)
        # both trained on the same packed data: the same non-padding tokens per step, within packing's slack
        assert rows[method]["trainer"]["tokens"] == pytest.approx(rows[method]["baseline"]["tokens"], rel=0.25)
        assert row["ratio"] == pytest.approx(row["trainer"]["tokens_per_s"] / row["baseline"]["tokens_per_s"])
    # the trainer wrote what a pod writes: an adapter for LoRA, a full model for full fine-tuning
    assert (Path(rows["lora"]["trainer"]["output"]) / "adapter_model.safetensors").is_file()
    assert (Path(rows["full"]["trainer"]["output"]) / "model.safetensors").is_file()
    table = (tmp_path / "results.md").read_text()
    assert table == proc.stdout[proc.stdout.index("GPU check on cpu"):].rstrip("\n") + "\n"
    for method in ("lora", "full"):
        assert f"| tiny {method} seq 128 | llm-finetune trainer |" in table
        assert f"| tiny {method} seq 128 | TRL SFTTrainer |" in table
