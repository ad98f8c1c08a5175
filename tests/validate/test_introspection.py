"""training.args / training.lora checked against the installed TRL/transformers/peft dataclasses."""

import sys

import pytest

from llm_finetune.validate import values as V
from llm_finetune.validate.introspect import introspection_problems

CHART = V.chart_dir()
DEFAULTS = V.chart_defaults(CHART)
SEQ = {"model": {"transformerType": "AutoModelForSequenceClassification", "numLabels": 2}}


def check(overlay):
    return list(introspection_problems(V.coalesce(overlay, DEFAULTS)))


def only_args(args, **extra):
    """Just these training.args (null deletes the chart's defaults), so each case sees its own keys."""
    overlay = {"training": {"args": None}, **extra}
    values = V.coalesce(overlay, DEFAULTS)
    values["training"]["args"] = args
    return list(introspection_problems(values))


@pytest.mark.parametrize("args, path, words", [
    ({"learning_rat": 1e-4}, "training.args.learning_rat", "did you mean 'learning_rate'"),
    ({"learning_rate": "0.0002"}, "training.args.learning_rate", "--set keeps decimals as strings"),
    ({"lr_scheduler_type": "cosin"}, "training.args.lr_scheduler_type", "'cosine'"),
    ({"optim": "adamw"}, "training.args.optim", "adamw_torch"),
    ({"max_steps": 1.5}, "training.args.max_steps", "int"),
    ({"report_to": 5}, "training.args.report_to", "wrong type"),
    ({"output_dir": "/tmp/x"}, "training.args.output_dir", "set by the chart"),
    ({"max_length": 128}, "training.args.max_length", "set data.maxSeqLength instead"),
    ({"assistant_only_loss": True}, "training.args.assistant_only_loss", "set data.completionOnlyLoss instead"),
])
def test_training_args_problems(args, path, words):
    found = [p for p in only_args(args) if p.path == path]
    assert found and found[0].severity == "error", only_args(args)
    assert words in found[0].render()


def test_sound_training_args_pass():
    args = {"num_train_epochs": 1, "max_steps": 10, "learning_rate": 2e-4, "lr_scheduler_type": "cosine",
            "warmup_steps": 0.03, "report_to": ["tensorboard"], "bf16": False, "optim": "adamw_torch",
            "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False},
            "eval_strategy": "steps", "save_strategy": "epoch", "max_grad_norm": None}
    assert only_args(args) == []


def test_class_follows_the_task():
    # padding_free is an SFTConfig field: fine for causal LM, unknown to TrainingArguments.
    assert only_args({"padding_free": True}) == []
    (p,) = only_args({"padding_free": True}, **SEQ)
    assert p.path == "training.args.padding_free" and "TrainingArguments" in p.message


@pytest.mark.parametrize("lora, path, words", [
    ({"lora_alpah": 16}, "training.lora.lora_alpah", "did you mean 'lora_alpha'"),
    ({"r": "8"}, "training.lora.r", "int"),
    ({"use_dora": True}, "training.lora.use_dora", "training.method"),
    ({"bias": "some"}, "training.lora.bias", "wrong type or value"),
])
def test_lora_problems(lora, path, words):
    found = [p for p in check({"training": {"lora": lora}}) if p.path == path]
    assert found, check({"training": {"lora": lora}})
    assert words in found[0].render()


def test_lora_not_checked_for_full_fine_tuning():
    assert not [p for p in check({"training": {"method": "full", "lora": {"lora_alpah": 1}}}) if p.path.startswith("training.lora")]


def test_sound_lora_passes():
    lora = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
            "modules_to_save": ["lm_head"], "bias": "none", "init_lora_weights": "gaussian"}
    assert not [p for p in check({"training": {"lora": lora}}) if p.path.startswith("training.lora")]


def test_checked_without_the_libraries(monkeypatch):
    """The initializer image (preflight) has no transformers: the shipped field lists serve."""
    for name in ("trl", "transformers", "peft"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError, as in the initializer image
    found = check({"training": {"args": {"learning_rat": 1, "output_dir": "/x"}, "lora": {"lora_alpah": 1}}})
    assert not [p for p in found if p.severity == "notice"]
    assert {p.path for p in found if p.severity == "error"} == {"training.args.output_dir", "training.args.learning_rat",
                                                                 "training.lora.lora_alpah"}


@pytest.mark.parametrize("section, key, suggestion", [
    ("lora", "rank", "r"), ("lora", "alpha", "lora_alpha"), ("lora", "dropout", "lora_dropout"),
    ("args", "lr", "learning_rate"), ("args", "learningRate", "learning_rate"), ("args", "warmup_ratio", "warmup_steps"),
    ("args", "evaluation_strategy", "eval_strategy"), ("args", "batch_size", "per device_train_batch_size".replace(" ", "_")),
    ("args", "numTrainEpochs", "num_train_epochs"),
])
def test_did_you_mean(section, key, suggestion):
    found = [p for p in check({"training": {section: {key: 1}}}) if p.path == f"training.{section}.{key}"]
    assert found and found[0].hint == f"did you mean '{suggestion}'?", found
