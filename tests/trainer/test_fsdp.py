"""FSDP with the chart's values (values-examples/fsdp-full.yaml) under a real 2-process torchrun (gloo, CPU).

The FSDP settings are the example's ``training.args.fsdp``/``fsdp_config`` verbatim: full shard,
auto wrap of the decoder layer class, full state dicts. accelerate would silently train plain
DDP on CPU; the trainer switches it to FSDP (trainer/fsdp.py), so what runs here is the
Trainer's FSDP2 path: sharding, FSDP checkpoints, resume, and the full-state-dict output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fixtures.render import CHART
from llm_finetune.local.s3server import free_port
from trainer.helpers import INSTRUCTION_DATA, TORCHRUN, make_config, run_dir, trainer_env

pytestmark = pytest.mark.slow

EXAMPLE = CHART.parent / "values-examples" / "fsdp-full.yaml"


def chart_fsdp_args() -> dict:
    args = yaml.safe_load(EXAMPLE.read_text())["training"]["args"]
    return {"fsdp": args["fsdp"], "fsdp_config": args["fsdp_config"]}


def _torchrun(config: Path, env: dict[str, str]) -> str:
    proc = subprocess.run([TORCHRUN, "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "llm_finetune", "train",
                           "--config", str(config)], env=env, cwd=config.parent, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def _losses(config: Path) -> dict[int, float]:
    history = json.loads((run_dir(config) / "output" / "metrics.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def _config(tmp_path: Path, name: str, model: Path, data: Path, method: str, **sections) -> Path:
    return make_config(tmp_path, name, model, data, data={**INSTRUCTION_DATA, "maxSeqLength": 64},
                       training={"method": method, "args": {"max_steps": 6, "per_device_train_batch_size": 2,
                                                            "save_steps": 3, **chart_fsdp_args()}}, **sections)


def test_the_example_asks_for_full_shard_decoder_layer_wrap_and_full_state_dicts():
    args = chart_fsdp_args()
    assert args["fsdp"] is True
    assert args["fsdp_config"]["reshard_after_forward"] is True  # FSDP2's full_shard
    assert args["fsdp_config"]["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert args["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"


def test_under_fsdp_the_default_activation_checkpointing_is_fsdps_own():
    from llm_finetune.trainer.args import fsdp_checkpointing

    fsdp = {"fsdp": True, "fsdp_config": {"version": 2}}
    moved = fsdp_checkpointing({**fsdp, "activation_checkpointing": True}, {"activation_checkpointing": True})
    assert moved["activation_checkpointing"] is False
    assert moved["fsdp_config"] == {"activation_checkpointing": True, "version": 2}
    # the user's own setting stays (both set: the validator refuses), and without FSDP nothing moves
    user = {**fsdp, "activation_checkpointing": True}
    assert fsdp_checkpointing(user, {}) == user
    assert fsdp_checkpointing({"activation_checkpointing": True}, {"activation_checkpointing": True}) == {
        "activation_checkpointing": True}


def test_fsdp_lora_shards_each_decoder_layer_and_merges_from_the_saved_adapter(tmp_path, tiny_model, alpaca_dir):
    config = _config(tmp_path, "fsdp-lora", tiny_model, alpaca_dir, "lora", output={"mergeAdapter": True})
    out = _torchrun(config, trainer_env(tmp_path))
    # every decoder layer is its own FSDP unit, and rank 0 holds half of the parameters
    line = next(ln for ln in out.splitlines() if "fsdp: " in ln and "[rank 0]" in ln)
    assert "LlamaDecoderLayer x2" in line, line
    local, total = (int(x) for x in line.split("holds ")[1].split(" parameters")[0].split(" of "))
    assert 0.4 * total <= local <= 0.6 * total, line
    run = run_dir(config)
    # accelerate's FSDP checkpoint format (model and optimizer gathered to rank 0), not DDP's optimizer.pt
    assert {"pytorch_model_fsdp.bin", "optimizer.bin", "adapter_model.safetensors"} <= {
        p.name for p in (run / "checkpoints" / "checkpoint-6").iterdir()}
    manifest = json.loads((run / "output" / "manifest.json").read_text())
    assert (manifest["worldSize"], manifest["globalStep"], manifest["merged"]) == (2, 6, "merged")

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run / "output")
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # trained (lora_B starts at zero)
    merged = AutoModelForCausalLM.from_pretrained(run / "output" / "merged")
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, tuned(ids).logits, atol=1e-4)


def test_fsdp_full_fine_tuning_resumes_exactly_and_saves_a_loadable_model(tmp_path, tiny_model, alpaca_dir):
    config = _config(tmp_path, "fsdp-full", tiny_model, alpaca_dir, "full")
    env = trainer_env(tmp_path)
    _torchrun(config, env)
    run = run_dir(config)
    first = _losses(config)
    from safetensors.torch import load_file

    weights = load_file(run / "output" / "model.safetensors")
    assert {"pytorch_model_fsdp.bin", "optimizer.bin"} <= {p.name for p in (run / "checkpoints" / "checkpoint-3").iterdir()}

    # The attempt "dies" after checkpoint-3: its later checkpoint and output are gone; the next one resumes.
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")
    shutil.rmtree(run / "output")
    out = _torchrun(config, env)
    assert "resuming at step 3" in out
    assert "step 4/6" in out and "step 3/6" not in out
    # steps 1-3 come from the checkpoint's history; 4-6 were trained again, with the same losses as without the stop
    assert sorted(first) == list(range(1, 7))
    assert _losses(config) == pytest.approx(first, abs=1e-5)
    resumed = load_file(run / "output" / "model.safetensors")
    assert resumed.keys() == weights.keys()
    import torch

    assert all(torch.allclose(resumed[k], weights[k], atol=1e-5) for k in weights)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "output")
    tok = AutoTokenizer.from_pretrained(run / "output")
    ids = tok("### Instruction:\nRepeat the words.", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    # not the base model: full fine-tuning changed every decoder layer
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert not torch.equal(base["model.layers.0.mlp.down_proj.weight"], weights["model.layers.0.mlp.down_proj.weight"])
