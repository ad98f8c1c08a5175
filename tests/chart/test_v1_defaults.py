"""`training.defaults`: v1 mode is the v1 reference run, recommended mode is README's table.

v1 side: the real kubeflow-training 1.9.4 `train()` (only the Kubernetes API clients mocked) builds
the PyTorchJob; its --training_parameters/--lora_config JSON is rebuilt into TrainingArguments and
LoraConfig as the v1 trainer image does (training-operator@v1.9.0:sdk/python/kubeflow/trainer/
hf_llm_training.py: `__main__` and `setup_peft_model`, re-described in `_v1_rebuild`).
Our side: the chart renders the same parameters (real Helm), the images' loader reads the ConfigMap,
and the trainer's `build_args`/`lora_config` build the objects. Every field of TrainingArguments and
LoraConfig is compared; the only differences allowed are INTENDED (each with its reason), and each
must show exactly where it applies.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from unittest.mock import MagicMock

import pytest
import yaml

from fixtures.render import container, job_config, pod_spec, render
from llm_finetune.core import defaults as D

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "values-examples"
README = (REPO / "README.md").read_text()
TABLE = README.split("<!-- v1-defaults:start", 1)[1].split("<!-- v1-defaults:end -->")[0]
ROWS = {m[0]: (m[1], m[2]) for m in re.findall(r"^\| `([^`]+)` \| (.+?) \| (.+?) \| .+ \|$", TABLE, re.M)}

# TrainingArguments fields where v1 mode differs from the v1 run, and why (asserted exactly, per case).
INTENDED = {
    "output_dir": "chart-managed: <paths.run>/checkpoints on the claim (the v1 SDK passes its own path)",
    "use_cpu": "set on nodes without a GPU: without it each torchrun process of a CPU node trains alone",
    "dataloader_pin_memory": "follows use_cpu: transformers turns pinning off on CPU (TrainingArguments.__post_init__)",
    "save_total_limit": "when set, applied by the chart's checkpoint rotation (it deletes only complete "
                        "checkpoints); the TrainingArguments object gets None",
    "accelerator_config": "a v1 trainer bug, not reproduced: its cast-to-the-reference's-type loop calls "
                          "AcceleratorConfig(<the dict>), so split_batches becomes the whole dict",
}
INTENDED_LORA = {
    "task_type": "set from model.transformerType: a classifier's head is trained and saved with the adapter "
                 "(v1: None, the new head stays as initialized)",
}


# --------------------------------------------------------------------------- the v1 side
def _v1_rebuild(obj, reference, items):
    """What the v1 trainer does after parsing the JSON: for every (key, value) in ``items``, when the
    default-constructed ``reference`` has a non-None attribute of that name, the value is converted by
    calling that attribute's type on it; then it is set on ``obj``."""
    for key, value in items:
        ref = getattr(reference, key, None)
        setattr(obj, key, type(ref)(value) if ref is not None else value)
    return obj


def v1_run(transformer_type: str, training_parameters: dict, lora: dict):
    """TrainingArguments and LoraConfig as the v1 trainer ends up with them for a train() call."""
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tc.train(name="v1", model_provider_parameters=HuggingFaceModelParams(
                     model_uri="hf://org/model", transformer_type=getattr(transformers, transformer_type)),
                 dataset_provider_parameters=HuggingFaceDatasetParams(repo_id="org/data"),
                 trainer_parameters=HuggingFaceTrainerParams(
                     training_parameters=TrainingArguments(output_dir="/v1-out", **training_parameters),
                     lora_config=LoraConfig(**lora)))
        job = ApiClient().sanitize_for_serialization(tc.custom_api.create_namespaced_custom_object.call_args.args[4])
        argv = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
        args = {argv[i].lstrip("-"): argv[i + 1] for i in range(0, len(argv), 2)}
        assert args["transformer_type"] == transformer_type
        train_args = TrainingArguments(**json.loads(args["training_parameters"]))
        train_args = _v1_rebuild(train_args, TrainingArguments(output_dir=train_args.output_dir),
                                 train_args.to_dict().items())
        lora_config = LoraConfig(**json.loads(args["lora_config"]))
        lora_config = _v1_rebuild(lora_config, LoraConfig(), list(lora_config.__dict__.items()))
    return train_args, lora_config


# --------------------------------------------------------------------------- our side
def ours(helm_bin: str, values: dict, *, cuda: bool = False, bf16_ok: bool = False, tmp: Path):
    """What the trainer builds from the chart's render of ``values`` (ConfigMap -> strict loader)."""
    from llm_finetune.core.config import CAUSAL_LM
    from llm_finetune.trainer.args import build_args
    from llm_finetune.trainer.model import lora_config

    docs = render(helm_bin, values)
    assert "--config" in container(pod_spec(docs), "pytorch")["command"]
    cfg = job_config(docs)
    causal = cfg.model.transformer_type == CAUSAL_LM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args, limit = build_args(cfg, output_dir=str(tmp), causal_lm=causal, cuda=cuda, bf16_ok=bf16_ok,
                                 has_eval=bool(cfg.data.eval_split or cfg.data.eval_ratio))
        lora = lora_config(cfg, "CAUSAL_LM" if causal else "SEQ_CLS")
    return cfg, args, limit, lora


def _differing(a: dict, b: dict) -> set[str]:
    """Keys of ``b`` whose value in ``a`` differs (floats compared as numbers, lists as sets)."""
    def norm(v):
        return sorted(v) if isinstance(v, (set, list)) and all(isinstance(x, str) for x in v) else v
    return {k for k in b if norm(a.get(k)) != norm(b[k])}


def _example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


# (values, v1 train() call: transformer_type, TrainingArguments kwargs, LoraConfig kwargs)
CASES = {
    "nothing-set": ({"training": {"defaults": "v1"}}, ("AutoModelForCausalLM", {}, {})),
    "v1-llm-lora.yaml": (_example("v1-llm-lora.yaml"), None),
    "v1-bert-classification-s3.yaml": (_example("v1-bert-classification-s3.yaml"), None),
    "limit-and-checkpointing": ({"training": {"defaults": "v1", "args": {
        "save_total_limit": 3, "gradient_checkpointing": True, "lr_scheduler_type": "cosine", "warmup_steps": 10}}},
        None),
}


def _v1_call(values: dict, call):
    if call:
        return call
    t = values["training"]
    task = (values.get("model") or {}).get("transformerType", "AutoModelForCausalLM")
    return task, dict(t.get("args") or {}), dict(t.get("lora") or {})


@pytest.mark.parametrize("node", ["cpu", "gpu"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_v1_mode_is_the_v1_run_field_by_field(helm4, tmp_path, case, node):
    from transformers import TrainingArguments

    values, call = CASES[case]
    assert values["training"]["defaults"] == "v1"
    transformer_type, params, lora_params = _v1_call(values, call)
    v1_args, v1_lora = v1_run(transformer_type, params, lora_params)
    cfg, args, limit, lora = ours(helm4, values, cuda=node == "gpu", tmp=tmp_path)
    assert cfg.training.defaults == "v1" and cfg.model.transformer_type == transformer_type
    assert isinstance(args, TrainingArguments)

    # Every TrainingArguments field (SFTConfig's own fields come from the data section; the v1
    # trainer has no such settings: it pads every row to the tokenizer's maximum length).
    theirs, mine = v1_args.to_dict(), args.to_dict()
    expected = {"output_dir", "accelerator_config"}
    expected |= {"use_cpu", "dataloader_pin_memory"} if node == "cpu" else set()
    expected |= {"save_total_limit"} if "save_total_limit" in params else set()
    assert _differing(mine, theirs) == expected, {k: (mine.get(k), theirs[k]) for k in _differing(mine, theirs)}
    assert expected <= set(INTENDED)
    assert mine["output_dir"] == str(tmp_path) and theirs["output_dir"] == "/v1-out"
    assert mine["accelerator_config"] == TrainingArguments(output_dir="x").to_dict()["accelerator_config"]
    assert isinstance(theirs["accelerator_config"]["split_batches"], dict)  # the v1 bug, still there
    if node == "cpu":
        assert (mine["use_cpu"], theirs["use_cpu"], mine["dataloader_pin_memory"]) == (True, False, False)
    assert limit == params.get("save_total_limit") and mine["save_total_limit"] is None

    theirs_l, mine_l = v1_lora.to_dict(), lora.to_dict()
    assert _differing(mine_l, theirs_l) == {"task_type"} <= set(INTENDED_LORA)
    assert theirs_l["task_type"] is None
    assert mine_l["task_type"] == ("CAUSAL_LM" if transformer_type == "AutoModelForCausalLM" else "SEQ_CLS")


def test_sftconfig_defaults_do_not_leak_into_v1_mode(helm4, tmp_path):
    """A causal LM trains with TRL's SFTConfig, whose defaults differ from TrainingArguments' (the v1 run's)."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    from llm_finetune.trainer.args import v1_gap

    gap = v1_gap(SFTConfig)
    assert {"learning_rate", "logging_steps", "gradient_checkpointing", "bf16"} <= set(gap)
    _, args, _, _ = ours(helm4, {"training": {"defaults": "v1"}}, tmp=tmp_path)
    assert isinstance(args, SFTConfig)
    plain = TrainingArguments(output_dir="x", use_cpu=True)
    for key in ("learning_rate", "logging_steps", "gradient_checkpointing", "activation_checkpointing", "bf16"):
        assert getattr(args, key) == getattr(plain, key), key
    _, args, _, _ = ours(helm4, {"training": {"defaults": "v1", "args": {"learning_rate": 1e-3}}}, tmp=tmp_path)
    assert args.learning_rate == 1e-3  # the user's keys still win


def test_v1_mode_renders_only_the_users_keys(helm4):
    cfg = job_config(render(helm4, {"training": {"defaults": "v1", "args": {"seed": 7}, "lora": {"r": 4}}}))
    assert (cfg.training.defaults, cfg.training.args, cfg.training.lora) == ("v1", {"seed": 7}, {"r": 4})
    cfg = job_config(render(helm4, {}))
    assert (cfg.training.defaults, cfg.training.args, cfg.training.lora) == ("recommended", {}, {})


# --------------------------------------------------------------------------- recommended mode, README's table
@pytest.fixture(scope="module")
def v1_nothing_set():
    args, lora = v1_run("AutoModelForCausalLM", {}, {})
    return {**args.to_dict(), **{f"lora.{k}": v for k, v in lora.to_dict().items()}}


def _first_code(cell: str) -> str:
    return re.match(r"`([^`]*)`", cell).group(1)


def _same(got, want: str) -> bool:
    return str(got) == want or repr(got) == want or (isinstance(got, float) and float(want) == got)


def test_the_table_lists_every_recommended_and_always_set_key():
    assert list(ROWS) == [d.key for d in D.RECOMMENDED] + list(D.ALWAYS)


@pytest.mark.parametrize("key", sorted(ROWS))
def test_the_v1_column_is_what_a_v1_run_uses(v1_nothing_set, key):
    assert _same(v1_nothing_set[key], _first_code(ROWS[key][0])), (key, v1_nothing_set[key], ROWS[key][0])


@pytest.mark.parametrize("default", [d for d in D.RECOMMENDED if d.static], ids=lambda d: d.key)
def test_every_recommended_default_differs_from_v1(v1_nothing_set, default):
    assert v1_nothing_set[default.key] != default.value


@pytest.mark.parametrize("node", ["cpu", "gpu-no-bf16-eval"])
def test_the_recommended_column_is_what_the_trainer_sets(helm4, tmp_path, node):
    gpu = node != "cpu"
    values = {"data": {"evalRatio": 0.1}} if gpu else {}
    cfg, args, limit, lora = ours(helm4, values, cuda=gpu, tmp=tmp_path)
    assert cfg.training.defaults == "recommended" and cfg.training.args == {} and cfg.training.lora == {}
    got = {**args.to_dict(), "save_total_limit": limit, **{f"lora.{k}": v for k, v in lora.to_dict().items()}}
    for d in D.RECOMMENDED:
        if d.static:
            assert _same(got[d.key], _first_code(ROWS[d.key][1])) and got[d.key] == d.value, d.key
    conditional = {"dataloader_pin_memory": gpu, "bf16": False, "activation_checkpointing": gpu,
                   "gradient_checkpointing": gpu, "eval_strategy": "steps" if gpu else "no",
                   "eval_steps": 100 if gpu else None, "use_cpu": not gpu}
    assert {k: got[k] for k in conditional} == conditional
    assert got["lora.task_type"] == "CAUSAL_LM"


def test_bf16_where_the_gpu_supports_it_unless_fp16():
    gpu = D.Node(cuda=True, bf16_ok=True)
    assert D.args_defaults("recommended", {}, gpu)["bf16"] is True
    assert D.args_defaults("recommended", {"fp16": True}, gpu)["bf16"] is False  # they exclude each other
    assert D.args_defaults("recommended", {}, D.Node(cuda=True, bf16_ok=False))["bf16"] is False
    assert "bf16" not in D.args_defaults("recommended", {"bf16": None}, gpu)  # a null drops it
    assert D.args_defaults("v1", {}, gpu) == {} and D.lora_defaults("v1", {}) == {}


def test_null_drops_a_recommended_default(helm, tmp_path):
    """The library's own default applies (for a causal LM, SFTConfig's), with both Helms' renders."""
    from trl import SFTConfig

    values = {"training": {"args": {"learning_rate": None, "report_to": None, "eval_strategy": None},
                           "lora": {"r": None, "target_modules": None}}, "data": {"evalRatio": 0.1}}
    cfg, args, _, lora = ours(helm, values, tmp=tmp_path)
    assert cfg.training.args == {"learning_rate": None, "report_to": None, "eval_strategy": None}
    sft = SFTConfig(output_dir="x", use_cpu=True, bf16=False)
    assert (args.learning_rate, args.report_to, args.eval_strategy) == (sft.learning_rate, sft.report_to, "no")
    assert args.lr_scheduler_type == "cosine"  # the other defaults stay
    assert (lora.r, lora.target_modules, lora.lora_alpha) == (8, None, 32)
