"""Real training runs of the tiny Llama (single process, CPU): formats, methods, output, export."""

from __future__ import annotations

import json
import re

import pytest

import llm_finetune
from llm_finetune.core.volume import sha256_file

from trainer.helpers import (INSTRUCTION_DATA, logged_losses, make_config, output_manifest, prepared_train, run_dir,
                       run_trainer, trainer_env)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def instruction_run(tmp_path_factory, tiny_model, alpaca_dir):
    """LoRA on the Alpaca template with an eval split, checkpoints every 3 steps (keep 1), merged output."""
    root = tmp_path_factory.mktemp("instruction")
    config = make_config(root, "instr", tiny_model, alpaca_dir,
                         data={**INSTRUCTION_DATA, "evalSplit": "test"},
                         training={"args": {"max_steps": 6, "save_steps": 3, "save_total_limit": 1}},
                         output={"mergeAdapter": True})
    proc = run_trainer(config, trainer_env(root))
    return config, proc, root


def test_instruction_lora_run_writes_a_complete_output(instruction_run):
    config, proc, root = instruction_run
    assert proc.returncode == 0, proc.output
    assert not (root / "termination-log").exists()
    out = run_dir(config) / "output"
    m = output_manifest(config)
    assert (m["kind"], m["task"], m["method"], m["merged"]) == ("adapter", "causal-lm", "lora", "merged")
    assert m["baseModel"]["revision"] == "abc123" and m["dataset"]["revision"] == "etag-alpaca"
    assert m["dataset"]["format"] == "instruction"
    assert m["packageVersion"] == llm_finetune.__version__
    assert m["config"]["training"]["method"] == "lora" and m["config"]["data"]["responseColumn"] == "output"
    assert m["globalStep"] == 6 and m["worldSize"] == 1
    assert m["metrics"]["eval"]["eval_loss"] > 0 and m["metrics"]["train"]["train_loss"] > 0
    listed = {f["path"]: f for f in m["files"]}
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "metrics.json",
                 "merged/config.json", "merged/model.safetensors"):
        assert name in listed, name
    assert any(p.startswith("logs/events.out.tfevents") for p in listed)
    for path, entry in listed.items():
        assert (out / path).stat().st_size == entry["size"]
        assert sha256_file(out / path) == entry["sha256"]
    assert not list(out.parent.glob(".output-*")), "staging folders left behind"


def test_pod_log_has_progress_lines_and_a_summary_without_bars(instruction_run):
    _, proc, _ = instruction_run
    lines = [ln for ln in proc.output.splitlines() if "llm_finetune.trainer" in ln]
    steps = [ln for ln in lines if re.search(r"step \d+/6 .*\| loss [\d.]+ lr [\d.e+-]+ \| \d+ tokens/s \| elapsed .* ETA ", ln)]
    assert len(steps) >= 6, proc.output
    assert any("eval at step" in ln and "eval_loss" in ln for ln in lines)
    assert any(ln.endswith(str(run_dir(instruction_run[0]) / "output")) and "trainer: done" in ln for ln in lines)
    assert "it/s]" not in proc.output and "%|" not in proc.output, "a tqdm bar reached the log"


def test_checkpoints_are_marked_complete_and_rotated(instruction_run):
    config, proc, _ = instruction_run
    ckpts = sorted(p.name for p in (run_dir(config) / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-6"], ckpts  # save_total_limit 1: checkpoint-3 went after 6 was complete
    marker = json.loads((run_dir(config) / "checkpoints" / "checkpoint-6" / ".llm-finetune-complete.json").read_text())
    assert marker["step"] == 6 and any(f["path"] == "adapter_model.safetensors" for f in marker["files"])


def test_instruction_loss_is_on_completions_only(instruction_run):
    config = instruction_run[0]
    ds = prepared_train(config)
    row = ds[0]
    assert len(row["input_ids"]) <= 256 and "seq_lengths" in ds.column_names  # packed to maxSeqLength
    masked = sum(1 for t in row["labels"] if t == -100)
    assert 0 < masked < len(row["labels"])  # prompt tokens carry no loss, completions do


def test_adapter_reloads_with_peft_and_the_merged_model_matches(instruction_run, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = instruction_run[0]
    out = run_dir(config) / "output"
    tok = AutoTokenizer.from_pretrained(str(out))
    batch = tok(["### Instruction:\nReverse the order of the words.\n"], return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    with torch.no_grad():
        base_logits = base(**batch).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(out)).eval()
        tuned_logits = tuned(**batch).logits
        merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
        merged_logits = merged(**batch).logits
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-4), "the adapter did not change the model"
    assert torch.allclose(merged_logits, tuned_logits, atol=1e-3)


@pytest.fixture(scope="module")
def full_text_run(tmp_path_factory, tiny_model, text_dir, s3_server):
    """Full fine-tuning on plain text, long enough for the loss to fall; exported to S3."""
    s3_server.create_bucket("exports")
    root = tmp_path_factory.mktemp("full-text")
    config = make_config(root, "full", tiny_model, text_dir,
                         data={"format": "auto"},
                         training={"method": "full", "args": {"max_steps": 30, "learning_rate": 0.003, "lr_scheduler_type": "constant"}},
                         output={"export": {"uri": "s3://exports/runs/full", "s3": {"endpointUrl": s3_server.endpoint}}})
    proc = run_trainer(config, trainer_env(root, **s3_server.env()))
    return config, proc


def test_full_fine_tuning_loss_decreases(full_text_run):
    config, proc = full_text_run
    assert proc.returncode == 0, proc.output
    losses = logged_losses(config)
    assert len(losses) == 30
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 1.0, losses


def test_full_fine_tuning_saves_a_loadable_model_trained_on_every_token(full_text_run):
    from transformers import AutoModelForCausalLM

    config, _ = full_text_run
    m = output_manifest(config)
    assert (m["kind"], m["method"], m["dataset"]["format"]) == ("model", "full", "text")
    out = run_dir(config) / "output"
    assert AutoModelForCausalLM.from_pretrained(str(out)).config.model_type == "llama"
    row = prepared_train(config)[0]
    assert all(t != -100 for t in row["labels"])  # text: the loss covers every token


def test_export_to_s3_uploads_every_file_of_the_output(full_text_run, s3_server):
    config, _ = full_text_run
    m = output_manifest(config)
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket="exports", Prefix="runs/full/")["Contents"]
    keys = {o["Key"][len("runs/full/"):]: o["Size"] for o in listed}
    assert keys.pop("manifest.json") > 0
    assert keys == {f["path"]: f["size"] for f in m["files"]}
    body = client.get_object(Bucket="exports", Key="runs/full/manifest.json")["Body"].read()
    assert json.loads(body)["files"] == m["files"]


def test_chat_dora_with_a_failing_export(tmp_path, tiny_model, chat_dir, s3_server):
    """Chat format (assistant-only loss) with DoRA; an export with wrong credentials fails the run."""
    s3_server.create_bucket("exports")
    config = make_config(tmp_path, "chat", tiny_model, chat_dir,
                         data={"format": "chat", "evalRatio": 0.25, "maxTrainSamples": 40, "maxEvalSamples": 10},
                         training={"method": "dora", "args": {"max_steps": 2}},
                         output={"export": {"uri": "s3://exports/chat", "s3": {"endpointUrl": s3_server.endpoint}}})
    env = trainer_env(tmp_path, **{**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret-key-0000"})
    proc = run_trainer(config, env)
    assert proc.returncode == 1, proc.output
    assert "data: chat format, 40 training rows, 10 eval rows" in proc.output  # evalRatio, then the sample caps
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith("trainer: output.export.uri: access to s3://exports/chat denied"), message
    assert "wrong-secret-key-0000" not in proc.output
    adapter = json.loads((run_dir(config) / "output" / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True
    row = prepared_train(config)[0]
    masked = sum(1 for t in row["labels"] if t == -100)
    assert 0 < masked < len(row["labels"])  # user turns carry no loss, assistant turns do
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket="exports", Prefix="chat/")

    # The retry (right credentials): the run is complete, so nothing trains again; the export is redone.
    before = (run_dir(config) / "output" / "manifest.json").read_bytes()
    proc = run_trainer(config, trainer_env(tmp_path, **s3_server.env()))
    assert proc.returncode == 0, proc.output
    assert "already finished with this config" in proc.output
    assert "resuming" not in proc.output and "step 1/" not in proc.output
    assert (run_dir(config) / "output" / "manifest.json").read_bytes() == before
    listed = s3_server.client().list_objects_v2(Bucket="exports", Prefix="chat/")["Contents"]
    assert "chat/manifest.json" in {o["Key"] for o in listed}
