"""Issue 10's corpus of plausible mistakes: each is refused by `llm-finetune validate` naming the
field, what is allowed and the fix, and — where a schema or template can express it — by both
real Helms naming the field too. Credentials never reach a manifest, nor a message."""

from __future__ import annotations

import re

import pytest

from fixtures.render import CHART, pod_spec, render_text
from llm_finetune.core.errors import UserError
from llm_finetune.validate import validate_values
from llm_finetune.validate import values as V
from llm_finetune.validate.credentials import CREDENTIAL_RE
from llm_finetune.validate.envvars import CHART_ENV, OPERATOR_ENV, POD_ENV, PYTORCHJOB_TRAINER_ENV, TRAINER_ENV

SCHEMA = V.load_schema(CHART)
DEFAULTS = V.chart_defaults(CHART)
HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567"
AKIA = "AKIA" + "IOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def errors(overlay):
    return [p for p in validate_values(V.coalesce(overlay, DEFAULTS), SCHEMA) if p.severity == "error"]


# (case, values, dotted field, words of the validator's message, words Helm must print: None = Helm accepts it)
CORPUS = [
    ("negative learning rate", {"training": {"args": {"learning_rate": -1e-4}}}, "training.args.learning_rate", "minimum of 0", "learning_rate"),
    ("fp16 and bf16", {"training": {"args": {"fp16": True, "bf16": True}}}, "training.args.bf16", "bf16 and fp16 exclude each other", "bf16"),
    ("LoRA r 0", {"training": {"lora": {"r": 0}}}, "training.lora.r", "less than the minimum of 1", "training"),
    ("lora_dropout 1.5", {"training": {"lora": {"lora_dropout": 1.5}}}, "training.lora.lora_dropout", "maximum", "lora_dropout"),
    ("batch size 0", {"training": {"args": {"per_device_train_batch_size": 0}}}, "training.args.per_device_train_batch_size", "minimum", "per_device_train_batch_size"),
    ("eval without eval data", {"training": {"args": {"eval_strategy": "steps"}}}, "training.args.eval_strategy", "Evaluation needs data.evalSplit or data.evalRatio", "eval_strategy"),
    ("best model without eval", {"training": {"args": {"load_best_model_at_end": True}}}, "training.args.load_best_model_at_end", "chosen by evaluation", "load_best_model_at_end"),
    ("evalSplit and evalRatio", {"data": {"evalSplit": "test", "evalRatio": 0.1}}, "data.evalRatio", "only when evalSplit is empty", "evalRatio"),
    ("template unbalanced", {"data": {"format": "instruction", "promptTemplate": "### Q: {instruction\n### A:"}}, "data.promptTemplate", "{column} placeholders", "promptTemplate"),
    ("template positional", {"data": {"promptTemplate": "Q: {}"}}, "data.promptTemplate", "write {{ and }} for literal braces", "promptTemplate"),
    ("template attribute", {"data": {"promptTemplate": "{row.instruction}"}}, "data.promptTemplate", "no index, attribute", "promptTemplate"),
    ("template with format text", {"data": {"format": "text", "promptTemplate": "{prompt}"}}, "data.promptTemplate", "used by format instruction", "promptTemplate"),
    ("template renamed-away column", {"data": {"columnMapping": {"instruction": "prompt"}, "promptTemplate": "{instruction}"}}, "data.promptTemplate", "write {prompt}", None),
    ("template shows the answer", {"data": {"promptTemplate": "{prompt} {completion}"}}, "data.promptTemplate", "response column", None),
    ("model uri blank", {"model": {"uri": ""}}, "model.uri", "hf://org/name, s3://bucket/prefix", "model"),
    ("dataset uri null", {"dataset": {"uri": None}}, "dataset.uri", "is required", "uri"),
    ("pod label value", {"job": {"podLabels": {"team": "ML Platform"}}}, "job.podLabels.team", "a label value", "podLabels"),
    ("pod label key", {"job": {"podLabels": {"my team": "ml"}}}, "job.podLabels", "key 'my team' must be a Kubernetes label/annotation key", "my team"),
    ("annotation key", {"job": {"podAnnotations": {"bad key!": "x"}}}, "job.podAnnotations", "label/annotation key", "bad key!"),
    ("secretKeyRef without key", {"job": {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}]}}, "job.env[0].valueFrom.secretKeyRef.key", "is required", "key"),
    ("value and valueFrom", {"job": {"env": [{"name": "X", "value": "a", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}}, "job.env[0].value", "not allowed here", "value"),
    ("env name the chart sets", {"job": {"env": [{"name": "HOME", "value": "/home/me"}]}}, "job.env[0].name", "HOME is already set by the chart", "job.env[0].name: HOME is already set"),
    ("initializer env name the chart sets", {"initializer": {"env": [{"name": "HF_HOME", "value": "/x"}]}}, "initializer.env[0].name", "HF_HOME is already set by the chart", "initializer.env[0].name: HF_HOME is already set"),
    ("env name the chart sets on a PyTorchJob pod", {"initializer": {"env": [{"name": "POD_NAMESPACE", "value": "x"}]}},
     "initializer.env[0].name", "POD_NAMESPACE is already set by the chart", "initializer.env[0].name: POD_NAMESPACE is already set"),
    ("env name twice", {"initializer": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}}, "initializer.env[1].name", "also set by initializer.env[0]", "initializer.env[1].name"),
    ("env name the operator sets", {"job": {"env": [{"name": "MASTER_ADDR", "value": "x"}]}}, "job.env[0].name", "Training Operator", None),
    ("fullnameOverride digit", {"fullnameOverride": "1ft"}, "fullnameOverride", "DNS-1035 label", "fullnameOverride"),
    ("storage.mode null", {"storage": {"mode": None}}, "storage.mode", "is required", "mode"),
]


@pytest.mark.parametrize("case, values, field, words, helm_words", CORPUS, ids=[c[0] for c in CORPUS])
def test_refused_by_the_validator_naming_the_field_and_the_fix(case, values, field, words, helm_words):
    found = [p for p in errors(values) if p.path == field]
    assert found, [p.render() for p in errors(values)]
    text = " ".join(p.render() for p in found)
    assert words in text and " — " in text, text
    assert "^" not in text and "$'" not in text and "[a-z" not in text  # patterns in words, never the expression


@pytest.mark.parametrize("case, values, field, words, helm_words",
                         [c for c in CORPUS if c[4]], ids=[c[0] for c in CORPUS if c[4]])
def test_refused_by_both_helms_naming_the_field(helm, case, values, field, words, helm_words):
    with pytest.raises(UserError) as exc:
        render_text(helm, values)
    assert helm_words in str(exc.value)


CREDENTIALS = [
    ({"secrets": {"hf": {"existingSecret": "hf", "tokenKey": HF}}}, "secrets.hf.tokenKey"),
    ({"secrets": {"s3": {"existingSecret": "s3", "accessKeyIdKey": AKIA}}}, "secrets.s3.accessKeyIdKey"),
    ({"secrets": {"s3": {"existingSecret": "s3", "secretAccessKeyKey": AWS_SECRET}}}, "secrets.s3.secretAccessKeyKey"),
    ({"secrets": {"s3": {"existingSecret": "s3", "secretAccessKeyKey": AWS_SECRET.replace("/", "x")}}}, "secrets.s3.secretAccessKeyKey"),
    ({"secrets": {"hf": {"existingSecret": HF}}}, "secrets.hf.existingSecret"),
    ({"job": {"env": [{"name": "HF_TOKEN", "value": HF}]}}, "job.env[0].value"),
    ({"job": {"env": [{"name": "MY_TOKEN", "value": HF}]}}, "job.env[0].value"),
    ({"job": {"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": AWS_SECRET.replace("/", "x")}}}]}}, "job.env[0].valueFrom.secretKeyRef.key"),
    ({"job": {"annotations": {"note": f"token {HF}"}}}, "job.annotations.note"),
    ({"training": {"args": {"hub_token": HF}}}, "training.args.hub_token"),
    ({"job": {"labels": {"k": AKIA}}}, "job.labels.k"),
    ({"model": {"revision": HF}}, "model.revision"),
    ({"job": {"podAnnotations": {HF: "x"}}}, f"job.podAnnotations.{HF[:4]}…(redacted)"),
]


@pytest.mark.parametrize("values, field", CREDENTIALS, ids=[c[1] for c in CREDENTIALS])
def test_a_credential_anywhere_is_refused_says_use_a_secret_and_is_never_echoed(helm, values, field):
    found = errors(values)
    rendered = "\n".join(p.render() for p in found)
    assert any(p.path == field and "Secret" in p.render() for p in found), rendered
    for secret in (HF, AKIA, AWS_SECRET, AWS_SECRET.replace("/", "x")):
        assert secret not in rendered
    with pytest.raises(UserError) as exc:  # never rendered: the schema or the chart's template refuses it
        render_text(helm, values)
    for secret in (HF, AKIA, AWS_SECRET.replace("/", "x")):
        assert secret not in str(exc.value).replace("'" + secret + "' does not match", "")  # Helm 4 echoes a failed pattern's value


def test_a_secrets_field_for_the_token_itself_explains_secrets():
    (p,) = [p for p in errors({"secrets": {"hf": {"token": "abc"}}}) if p.path == "secrets.hf.token"]
    assert "did you mean" not in p.hint and "kubectl create secret" in p.hint and "existingSecret" in p.hint


def test_the_chart_template_and_the_validator_use_one_credential_expression():
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    assert f'$re := "{CREDENTIAL_RE}"' in text


def test_chart_env_names_are_the_ones_the_chart_renders(helm4):
    import yaml

    docs = [d for d in yaml.safe_load_all(render_text(helm4)) if d]
    spec = pod_spec(docs)  # rank 0 (Worker 0 in the default Workers-only job)
    init = {e["name"] for e in spec["initContainers"][0]["env"]}
    trainer = {e["name"] for e in spec["containers"][0]["env"]}
    assert init == set(CHART_ENV) | set(POD_ENV)
    # without a Master the chart sets the static rendezvous the operator would (PET_MASTER_*, PET_NODE_RANK)
    rendezvous = {"PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NODE_RANK"}
    assert rendezvous <= set(OPERATOR_ENV)
    assert trainer == set(CHART_ENV) | set(TRAINER_ENV) | set(POD_ENV) | set(PYTORCHJOB_TRAINER_ENV) | rendezvous


@pytest.mark.parametrize("values", [
    {"model": {"numLabels": None}, "data": {"packing": None, "maxTrainSamples": None, "maxEvalSamples": None}},
    {"job": {"runPolicy": {"ttlSecondsAfterFinished": None, "activeDeadlineSeconds": None}}},
    {"training": {"args": {"max_grad_norm": None}, "lora": {"lora_dropout": None}}},
])
def test_explicit_nulls_render_byte_identical_in_both_helms(helm3, helm4, values):
    assert render_text(helm3, values) == render_text(helm4, values)
    assert render_text(helm4, values) != "" and not re.search(r"numLabels: null|packing: null", render_text(helm4, values))


def test_run_id_numbers_render_as_integers(helm4):
    assert "name: ft-llm-finetune-1000000\n" in render_text(helm4, {"runId": 1000000})
