"""README's table of the defaults that differ from the v1 reference is true: its "v1 reference"
column is what a v1 run uses (the real kubeflow-training 1.9.4 train(), API mocked, its
--training_parameters/--lora_config JSON rebuilt as the v1 trainer does), its "chart" column is
what the chart's values.yaml and the trainer set, and every key where they differ is listed."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from unittest.mock import MagicMock

import pytest
import yaml

from llm_finetune.core.config import from_dict

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
VALUES = yaml.safe_load((REPO / "chart" / "values.yaml").read_text())
TABLE = README.split("<!-- v1-defaults:start -->")[1].split("<!-- v1-defaults:end -->")[0]
ROWS = {m[0]: (m[1], m[2]) for m in re.findall(r"^\| `([^`]+)` \| (.+?) \| (.+?) \| .+ \|$", TABLE, re.M)}
# Set by the trainer only on some nodes or with some data (the chart column says when).
CONDITIONAL = {"bf16", "gradient_checkpointing", "eval_strategy", "dataloader_pin_memory", "use_cpu", "lora.task_type"}


def _first_code(cell: str) -> str:
    return re.match(r"`([^`]*)`", cell).group(1)


@pytest.fixture(scope="module")
def v1_run():
    """TrainingArguments and LoraConfig as the v1 reference trainer ends up with them, for unset keys."""
    import transformers
    from kubernetes import client as k8s
    from peft import LoraConfig
    from transformers import TrainingArguments

    from kubeflow.storage_initializer.hugging_face import (HuggingFaceDatasetParams, HuggingFaceModelParams,
                                                             HuggingFaceTrainerParams)
    from kubeflow.training import TrainingClient
    from kubeflow.training.api_client import ApiClient

    tc = TrainingClient(client_configuration=k8s.Configuration(), namespace="default")
    tc.core_api, tc.custom_api = MagicMock(), MagicMock()
    tc.train(name="v1", model_provider_parameters=HuggingFaceModelParams(
                 model_uri="hf://org/model", transformer_type=transformers.AutoModelForCausalLM),
             dataset_provider_parameters=HuggingFaceDatasetParams(repo_id="org/data"),
             trainer_parameters=HuggingFaceTrainerParams(training_parameters=TrainingArguments(output_dir="/out"),
                                                         lora_config=LoraConfig()))
    job = ApiClient().sanitize_for_serialization(tc.custom_api.create_namespaced_custom_object.call_args.args[4])
    argv = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    args = {argv[i].lstrip("-"): argv[i + 1] for i in range(0, len(argv), 2)}
    # training-operator@v1.9.0:sdk/python/kubeflow/trainer/hf_llm_training.py (__main__, setup_peft_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_args = TrainingArguments(**json.loads(args["training_parameters"]))
        lora = LoraConfig(**json.loads(args["lora_config"]))
    return train_args.to_dict(), lora.to_dict()


@pytest.fixture(scope="module")
def chart_run(tmp_path_factory):
    """What the trainer builds from the chart's defaults on this (CPU) node, without evaluation data."""
    from llm_finetune.trainer.args import build_args

    cfg = from_dict({"model": {"uri": "hf://org/model"}, "dataset": {"uri": "hf://org/data"},
                     "training": VALUES["training"], "data": VALUES["data"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args, save_total_limit = build_args(cfg, output_dir=str(tmp_path_factory.mktemp("out")), causal_lm=True,
                                            has_eval=False, cuda=False, bf16_ok=False)
    return {**args.to_dict(), "save_total_limit": save_total_limit}


def test_the_table_covers_every_chart_default_that_differs(v1_run):
    ta, lora = v1_run
    for key, value in VALUES["training"]["args"].items():
        if value != ta[key] and not (isinstance(ta[key], float) and value == ta[key]):
            assert key in ROWS, f"{key}: the chart's {value!r} differs from v1's {ta[key]!r} but README does not say so"
    for key, value in VALUES["training"]["lora"].items():
        if value != lora[key]:
            assert f"lora.{key}" in ROWS, key


@pytest.mark.parametrize("key", sorted(ROWS))
def test_the_v1_column_is_what_a_v1_run_uses(v1_run, key):
    ta, lora = v1_run
    got = lora[key.split(".", 1)[1]] if key.startswith("lora.") else ta[key]
    want = _first_code(ROWS[key][0])
    assert str(got) == want or repr(got) == want, (key, got, want)


@pytest.mark.parametrize("key", sorted(set(ROWS) - CONDITIONAL))
def test_the_chart_column_is_what_the_chart_sets(chart_run, key):
    want = _first_code(ROWS[key][1])
    if key.startswith("lora."):
        got = VALUES["training"]["lora"][key.split(".", 1)[1]]
    else:
        got = chart_run[key]
    assert str(got) == want or repr(got) == want or (isinstance(got, float) and float(want) == got), (key, got, want)


def test_the_cpu_only_defaults(chart_run):
    assert chart_run["use_cpu"] is True and chart_run["dataloader_pin_memory"] is False
    assert chart_run["bf16"] is False and chart_run["eval_strategy"] == "no"
