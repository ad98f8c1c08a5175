"""Fast checks of the trainer's pieces: checkpoint markers and rotation, resume choice, formats, arguments."""

from __future__ import annotations

import json

import pytest

from llm_finetune.core.config import JobConfig
from llm_finetune.core.errors import ConfigError
from llm_finetune.trainer import checkpoints as ck
from llm_finetune.core.dataset import render_prompt
from llm_finetune.trainer.data.formats import CHAT, INSTRUCTION, TEXT, resolve_format


def _checkpoint(root, step, *, complete=True, weights=b"w" * 10):
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(weights)
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        ck.mark_complete(d, step)
    return d


def test_latest_complete_skips_unmarked_and_damaged_checkpoints(tmp_path, caplog):
    _checkpoint(tmp_path, 10)
    good = _checkpoint(tmp_path, 20)
    damaged = _checkpoint(tmp_path, 30)
    (damaged / "adapter_model.safetensors").write_bytes(b"short")
    _checkpoint(tmp_path, 40, complete=False)
    assert ck.latest_complete(tmp_path) == good
    assert "checkpoint-40: no completeness marker" in caplog.text
    assert "checkpoint-30: adapter_model.safetensors has 5 bytes, expected 10" in caplog.text


def test_state_file_must_parse(tmp_path):
    d = _checkpoint(tmp_path, 5)
    (d / "trainer_state.json").write_text("{not json")
    ck.mark_complete(d, 5)  # sizes match the damaged file
    assert ck.incomplete_reason(d) == "trainer_state.json is missing or damaged"


def test_resolve_resume_removes_newer_incomplete_checkpoints_only(tmp_path):
    keep = _checkpoint(tmp_path, 10)
    older_partial = _checkpoint(tmp_path, 5, complete=False)
    newer_partial = _checkpoint(tmp_path, 15, complete=False)
    assert ck.resolve_resume("auto", str(tmp_path)) == keep
    assert keep.exists() and older_partial.exists() and not newer_partial.exists()


def test_resolve_resume_never_and_explicit(tmp_path):
    _checkpoint(tmp_path / "a", 10)
    assert ck.resolve_resume("never", str(tmp_path / "a")) is None
    assert ck.list_checkpoints(tmp_path / "a") == []
    explicit = _checkpoint(tmp_path / "b", 7)
    assert ck.resolve_resume(str(explicit), str(tmp_path / "a")) == explicit
    with pytest.raises(ConfigError) as err:
        ck.resolve_resume(str(tmp_path / "nowhere"), str(tmp_path / "a"))
    assert err.value.field == "training.resume"


def test_rotation_keeps_the_newest_complete_and_the_best(tmp_path):
    for step in (1, 2, 3, 4):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 5, complete=False)
    ck.rotate(tmp_path, 2, keep=str(tmp_path / "checkpoint-1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-3", "checkpoint-4", "checkpoint-5"]


def _cfg(**data) -> JobConfig:
    cfg = JobConfig()
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


class _Tok:
    chat_template = "{{ messages }}"


MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize("row, cfg, expected", [
    ({"messages": MESSAGES, "text": "x"}, _cfg(), CHAT),
    ({"prompt": "p", "completion": "c"}, _cfg(), INSTRUCTION),
    ({"instruction": "i", "output": "o"}, _cfg(prompt_template="{instruction}", response_column="output"), INSTRUCTION),
    ({"text": "t"}, _cfg(), TEXT),
])
def test_auto_format_follows_the_columns(row, cfg, expected):
    assert resolve_format(cfg, list(row), row, _Tok()) == expected


def test_auto_format_without_known_columns_says_what_to_set():
    with pytest.raises(ConfigError) as err:
        resolve_format(_cfg(), ["a", "b"], {"a": 1, "b": 2}, _Tok())
    assert err.value.field == "data.format" and "columns a, b" in err.value.message


def test_chat_needs_messages_and_a_chat_template():
    with pytest.raises(ConfigError) as err:
        resolve_format(_cfg(format="chat"), ["messages"], {"messages": "not a list"}, _Tok())
    assert err.value.field == "data.messagesColumn"

    class NoTemplate:
        chat_template = None

    with pytest.raises(ConfigError) as err:
        resolve_format(_cfg(format="chat"), ["messages"], {"messages": MESSAGES}, NoTemplate())
    assert err.value.field == "data.format" and "chat template" in err.value.message


def test_prompt_template_renders_missing_values_as_empty_and_rejects_positional_fields():
    assert render_prompt("{instruction}|{input}", {"instruction": "a", "input": None}) == "a|"
    with pytest.raises(ConfigError) as err:
        render_prompt("{} {instruction}", {"instruction": "a"})
    assert err.value.field == "data.promptTemplate"


def test_classification_format_needs_text_and_label_columns():
    cfg = _cfg(format="instruction")
    cfg.model.transformer_type = "AutoModelForSequenceClassification"
    with pytest.raises(ConfigError) as err:
        resolve_format(cfg, ["text", "label"], {"text": "t", "label": 1}, _Tok())
    assert err.value.field == "data.format"
    cfg.data.format = "auto"
    with pytest.raises(ConfigError) as err:
        resolve_format(cfg, ["text", "stars"], {"text": "t", "stars": 1}, _Tok())
    assert err.value.field == "data.labelColumn"


def test_training_args_merge_defaults_and_force_chart_settings():
    from llm_finetune.trainer.args import build_args

    cfg = JobConfig()
    cfg.training.args = {"learning_rate": 0.001, "save_total_limit": 3, "report_to": None, "save_steps": 7}
    cfg.data.eval_split = "test"
    args, limit = build_args(cfg, output_dir="/tmp/x", causal_lm=True, has_eval=True, cuda=False, bf16_ok=False)
    assert limit == 3 and args.save_total_limit is None  # rotation is ours, after the marker
    assert args.learning_rate == 0.001 and args.use_cpu and args.disable_tqdm
    assert args.report_to == []  # null dropped our tensorboard default: the library's own ("none") applies
    assert (args.eval_strategy, args.eval_steps) == ("steps", 7)
    assert (args.max_length, args.packing) == (cfg.data.max_seq_length, True)


def test_packed_rows_attend_and_learn_within_each_sample_only(tiny_model_dir):
    """A packed row's loss equals the losses of its samples run one by one (no attention or target across them)."""
    import torch
    from transformers import AutoModelForCausalLM

    from llm_finetune.trainer.data.collator import PackedRowsCollator

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    a, b = list(range(10, 17)), list(range(40, 51))
    packed = {"input_ids": a + b, "labels": a + b, "seq_lengths": [len(a), len(b)]}
    batch = PackedRowsCollator(pad_token_id=0)([packed, {"input_ids": a, "labels": a, "seq_lengths": [len(a)]}])
    assert "attention_mask" not in batch and batch["input_ids"].shape == (2, len(a) + len(b))
    with torch.no_grad():
        row = model(input_ids=batch["input_ids"][:1], position_ids=batch["position_ids"][:1],
                    labels=batch["labels"][:1], use_cache=batch["use_cache"]).loss
        alone = [model(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss for s in (a, b)]
    expected = (alone[0] * (len(a) - 1) + alone[1] * (len(b) - 1)) / (len(a) + len(b) - 2)
    assert torch.allclose(row, expected, atol=1e-5)


def test_hub_export_without_a_token_is_a_user_error(tmp_path, monkeypatch):
    from llm_finetune.core.errors import UserError
    from llm_finetune.trainer.export import export

    monkeypatch.delenv("HF_TOKEN", raising=False)
    cfg = JobConfig()
    cfg.output.export.uri = "hf://org/model"
    with pytest.raises(UserError) as err:
        export(cfg, tmp_path)
    assert err.value.field == "output.export.uri" and "HF_TOKEN" in err.value.message


def test_export_uri_must_be_s3_or_hf(tmp_path):
    cfg = JobConfig()
    cfg.output.export.uri = "gs://bucket/x"
    from llm_finetune.trainer.export import export

    with pytest.raises(ConfigError) as err:
        export(cfg, tmp_path)
    assert err.value.field == "output.export.uri"


def test_a_tokenizer_without_pad_token_pads_with_eos(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from llm_finetune.trainer.model import load_tokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.pad_token = None
    tok.save_pretrained(str(tmp_path))
    cfg = JobConfig()
    cfg.model.uri = str(tmp_path)
    assert AutoTokenizer.from_pretrained(str(tmp_path)).pad_token is None
    assert load_tokenizer(cfg).pad_token == "<|end|>"


def test_a_resume_says_which_ranks_it_cannot_restore(tmp_path, caplog):
    d = _checkpoint(tmp_path, 5)
    (d / "rng_state_0.pth").write_bytes(b"r")
    ck.warn_missing_rank_state(d, 2)
    assert f"checkpoint {d} has no RNG state of rank(s) 1: they resume with fresh random generators" in caplog.text
    caplog.clear()
    (d / "rng_state_1.pth").write_bytes(b"r")
    ck.warn_missing_rank_state(d, 2)
    ck.warn_missing_rank_state(d, 3)
    assert "no RNG state of rank(s) 2:" in caplog.text and caplog.text.count("no RNG state") == 1
