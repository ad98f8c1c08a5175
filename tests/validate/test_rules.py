"""Semantic rules on merged values (chart defaults ← overlay): each mistake is found, named and explained."""

import pytest

from llm_finetune.validate import validate_values, values as V
from llm_finetune.validate.rules import parse_quantity, shared_storage_problem

CHART = V.chart_dir()
SCHEMA = V.load_schema(CHART)
DEFAULTS = V.chart_defaults(CHART)


def problems(overlay, severity=None):
    found = validate_values(V.coalesce(overlay, DEFAULTS), SCHEMA, introspect=False)
    return [p for p in found if severity is None or p.severity == severity]


@pytest.mark.parametrize("overlay, path, words", [
    # storage that several pods cannot share
    ({"job": {"numWorkers": 3}}, "storage.accessModes", "storage.mode=perPod"),
    ({"job": {"numWorkers": 2}, "storage": {"accessModes": ["ReadWriteOncePod"]}}, "storage.accessModes", "ReadWriteOncePod"),
    # quantities (the schema's pattern accepts these shapes; the rules check meaning)
    ({"job": {"resources": {"requests": {"memory": "8Gi"}, "limits": {"memory": "4Gi"}}}}, "job.resources.requests.memory", "larger than the limit"),
    ({"job": {"resources": {"requests": {"nvidia.com/gpu": 1}}}}, "job.resources.requests.nvidia.com/gpu", "needs a limit"),
    ({"job": {"resources": {"gpu": "1.5"}}}, "job.resources.gpu", "whole number of GPUs"),
    ({"storage": {"size": "0"}}, "storage.size", "larger than zero"),
    # GPUs vs processes
    ({"job": {"resources": {"gpu": 2}, "nprocPerNode": "4"}}, "job.nprocPerNode", "each process needs its own GPU"),
    ({"job": {"resources": {"limits": {"nvidia.com/gpu": 1}}, "nprocPerNode": 2}}, "job.nprocPerNode", "only 1 GPU(s)"),
    # URIs per provider
    ({"model": {"uri": "hf://org/name/extra"}}, "model.uri", "not a Hugging Face repo id"),
    ({"dataset": {"uri": "s3://Bad_Bucket/x"}}, "dataset.uri", "not a valid S3 bucket name"),
    ({"output": {"export": {"uri": "/workspace/out"}}}, "output.export.uri", "s3:// or hf:// only"),
    ({"storage": {"mode": "perPod"}, "dataset": {"uri": "file:///workspace/data"}}, "dataset.uri", "every pod's volume starts empty"),
    # secret references
    ({"secrets": {"hf": {"existingSecret": "hf-token", "tokenKey": ""}}}, "secrets.hf.tokenKey", "is empty"),
    ({"secrets": {"s3": {"existingSecret": "s3", "secretAccessKeyKey": ""}}}, "secrets.s3.secretAccessKeyKey", "is empty"),
    ({"output": {"export": {"uri": "hf://me/my-adapter"}}}, "output.export.uri", "needs a write token"),
    # names
    ({"storage": {"existingClaim": "My_Claim"}}, "storage.existingClaim", "not a valid Kubernetes object name"),
    ({"secrets": {"hf": {"existingSecret": "-bad"}}}, "secrets.hf.existingSecret", "not a valid Kubernetes object name"),
    ({"fullnameOverride": "Fine.Tune"}, "fullnameOverride", "not a valid Kubernetes name"),
    # method / task
    ({"training": {"method": "qlora"}}, "training.method", "qlora needs a CUDA GPU"),
    ({"model": {"transformerType": "AutoModelForSequenceClassification", "numLabels": 2}, "data": {"packing": True}},
     "data.packing", "sequence classification cannot"),
    ({"model": {"transformerType": "AutoModelForSequenceClassification", "numLabels": 2}, "data": {"format": "chat"}},
     "data.format", "causal LM format"),
    ({"model": {"transformerType": "AutoModelForMaskedLM"}}, "model.transformerType", "does not train it"),
    ({"training": {"method": "full"}, "output": {"mergeAdapter": True}}, "output.mergeAdapter", "lora or dora"),
    # what cannot work with FSDP (core.contract.fsdp_problems)
    ({"job": {"resources": {"gpu": 1}}, "training": {"method": "qlora", "args": {"fsdp": True}}}, "training.method",
     "FSDP cannot shard"),
    ({"training": {"args": {"fsdp": True, "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}}}},
     "training.args.fsdp_config.state_dict_type", "only rank 0 writes the run volume"),
    ({"training": {"args": {"fsdp": True, "activation_checkpointing": True, "fsdp_config": {"activation_checkpointing": True}}}},
     "training.args.fsdp_config.activation_checkpointing", "cannot both be on"),
    ({"training": {"args": {"fsdp": True, "deepspeed": "ds.json"}}}, "training.args.deepspeed", "use one"),
    ({"training": {"args": {"fsdp": "full_shard hybrid_shard"}}}, "training.args.fsdp", "not an FSDP2 option"),
    # output kept nowhere
    ({"storage": {"mode": "perPod", "perPod": {"outputToClaim": False}}}, "output.export.uri", "keeps no copy of the output"),
])
def test_error_names_field_and_fix(overlay, path, words):
    errors = problems(overlay, "error")
    match = [p for p in errors if p.path == path]
    assert match, f"no error at {path}: {[p.render() for p in errors]}"
    text = match[0].render()
    assert words in text
    assert " — " in text  # every problem says how to fix it


@pytest.mark.parametrize("overlay, path, words", [
    ({"job": {"numWorkers": 2}, "storage": {"existingClaim": "shared-data"}}, "storage.existingClaim", "preflight hook checks it"),
    ({"job": {"resources": {"gpu": 4}, "nprocPerNode": "2"}}, "job.nprocPerNode", "stay idle"),
    ({"job": {"nprocPerNode": "auto"}}, "job.nprocPerNode", "one process per CPU core"),
    ({"model": {"uri": "hf://meta-llama/Llama-3.2-1B"}}, "secrets.hf.existingSecret", "likely gated"),
    ({"dataset": {"uri": "s3://data/x", "s3": {"endpointUrl": "http://minio:9000"}}}, "secrets.s3.existingSecret", "AWS only"),
    ({"model": {"trustRemoteCode": True}}, "model.trustRemoteCode", "repos you trust"),
    ({"model": {"uri": "/data/model"}}, "model.uri", "outside the volume"),
])
def test_warnings_do_not_fail(overlay, path, words):
    found = problems(overlay)
    assert not [p for p in found if p.severity == "error"], [p.render() for p in found]
    assert any(p.path == path and words in p.render() for p in found if p.severity == "warning"), [p.render() for p in found]


@pytest.mark.parametrize("overlay", [
    {},
    {"job": {"numWorkers": 4}, "storage": {"accessModes": ["ReadWriteMany"]}},
    {"job": {"numWorkers": 4}, "storage": {"mode": "perPod"}},
    {"job": {"resources": {"gpu": 4, "cpu": "500m", "memory": "16Gi"}, "nprocPerNode": "4"}, "training": {"method": "qlora"}},
    {"job": {"resources": {"requests": {"cpu": "1.5", "memory": "1e9"}, "limits": {"memory": "2G", "nvidia.com/gpu": 1}}}},
    {"model": {"uri": "file:///workspace/models/base"}, "dataset": {"uri": "/workspace/data/train.jsonl"}},
    {"model": {"uri": "hf://gpt2"}, "dataset": {"uri": "s3://my.bucket-1/prefix/"}},
    {"secrets": {"hf": {"existingSecret": "hf-token"}}, "output": {"export": {"uri": "hf://org/adapter"}}},
    {"storage": {"mode": "perPod", "perPod": {"outputToClaim": False}}, "output": {"export": {"uri": "s3://out/run1"}}},
    {"model": {"transformerType": "AutoModelForSequenceClassification", "numLabels": 3}, "data": {"packing": False}},
    {"training": {"method": "full", "args": {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True}}}},
])
def test_sound_values_have_no_errors(overlay):
    assert not problems(overlay, "error"), [p.render() for p in problems(overlay, "error")]


def test_v1_defaults_say_that_evaluation_data_goes_unused():
    found = problems({"training": {"defaults": "v1"}, "data": {"evalRatio": 0.1}})
    assert [p.render() for p in found if p.rule == "defaults"] == [
        "training.args.eval_strategy: with training.defaults v1 it is 'no' (as in the v1 reference): the evaluation "
        "data of data.evalSplit/evalRatio is never used — set it to steps or epoch, or drop the evaluation data"]
    assert not [p for p in found if p.severity != "notice"]
    for fine in ({"training": {"defaults": "v1", "args": {"eval_strategy": "steps"}}, "data": {"evalRatio": 0.1}},
                 {"training": {"defaults": "v1"}}, {"data": {"evalRatio": 0.1}}):
        assert not [p for p in problems(fine) if p.rule == "defaults"], fine


@pytest.mark.parametrize("text, value", [
    ("500m", "0.5"), ("2", "2"), ("1.5", "1.5"), ("8Gi", str(8 * 2**30)), ("1e3", "1000"), ("2G", "2000000000"),
    ("+1Ki", "1024"), (".5", "0.5"), ("5.", "5"), (4, "4"), (0.25, "0.25"),
])
def test_parse_quantity(text, value):
    from decimal import Decimal

    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["10GB", "1.2.3", "", " 1Gi", "Gi", "1gi", True, None, [1]])
def test_bad_quantity(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_shared_storage_problem_is_the_one_rule_for_values_and_preflight():
    assert shared_storage_problem("shared", 1, ["ReadWriteOnce"], "x") is None
    assert shared_storage_problem("perPod", 8, ["ReadWriteOnce"], "x") is None
    assert shared_storage_problem("shared", 2, ["ReadWriteMany"], "x") is None
    p = shared_storage_problem("shared", 2, ["ReadWriteOnce"], "storage.existingClaim", claim="data")
    assert p.path == "storage.existingClaim" and "claim 'data'" in p.message and p.severity == "error"
    # the v1 SDK's default does not work on common storage: every pod mounts the claim read-write, and
    # aws-ebs-csi-driver / local-path-provisioner refuse ReadOnlyMany (the claim stays Pending)
    p = shared_storage_problem("shared", 4, ["ReadWriteOnce", "ReadOnlyMany"], "storage.accessModes")
    assert p.severity == "error" and "needs ReadWriteMany" in p.message and "aws-ebs-csi-driver" in p.message


@pytest.mark.parametrize("overlay, path, severity, words", [
    ({"job": {"resources": {"memory": "4Gi"}, "shmSizeLimit": "8Gi"}}, "job.shmSizeLimit", "warning", "OOM-kills the trainer"),
    ({"job": {"resources": {"memory": "10G"}, "shmSizeLimit": "8Gi"}}, "job.shmSizeLimit", "warning", "more than half"),
    ({"job": {"numWorkers": 3}, "storage": {"mode": "perPod"}}, "storage.mode", "warning", "--pytorch-init-container-template-file"),
    ({"storage": {"mode": "perPod", "perPod": {"outputToClaim": False}}, "output": {"export": {"uri": "s3://out/run1"}}},
     "job.runPolicy.activeDeadlineSeconds", "warning", "recreates the pod without limit"),
    ({"job": {"queueName": "gpu"}}, "job.queueName", "notice", "Kueue >= v0.19"),
])
def test_what_the_cluster_will_do_is_said_before_it_runs(overlay, path, severity, words):
    assert any(p.path == path and p.severity == severity and words in p.render() for p in problems(overlay)), \
        [p.render() for p in problems(overlay)]
    assert not [p for p in problems({}) if p.rule in ("shm", "cluster")]  # the defaults are quiet


@pytest.mark.parametrize("sets, path, words", [
    ([("typed", "data.evalRatio=0.1")], "data.evalRatio", "Helm's --set keeps decimals as strings"),
    ([("string", "data.packing=true")], "data.packing", "write it unquoted"),
    ([("typed", "job.numWorkers=two")], "job.numWorkers", "expected integer, got string 'two'"),
])
def test_type_errors_explain_strings_from_set(sets, path, words):
    found = [p for p in validate_values(V.helm_values(CHART, [], sets), SCHEMA, introspect=False) if p.path == path]
    assert found and words in found[0].render(), found
    if "two" in words:
        assert "--set" not in found[0].render()  # not a number in disguise: no --set advice


def test_every_problem_at_once():
    found = problems({"job": {"numWorkers": 2, "nprocPerNode": "four"}, "storage": {"mode": "shard"},
                      "model": {"uri": "gs://b/m"}, "output": {"export": {"uri": "hf://me/x"}}}, "error")
    assert {"job.nprocPerNode", "storage.mode", "model.uri", "output.export.uri"} <= {p.path for p in found}


# --------------------------------------------------------------------------- backend trainjob (Kubeflow Trainer v2)
V2 = {"backend": "trainjob"}


@pytest.mark.parametrize("overlay, path, words", [
    ({"job": {"restartPolicy": "Always"}}, "job.restartPolicy", "does not apply to backend trainjob"),
    ({"job": {"runPolicy": {"cleanPodPolicy": "All"}}}, "job.runPolicy.cleanPodPolicy", "does not apply to backend trainjob"),
    ({"job": {"env": [{"name": "PET_MASTER_ADDR", "value": "x"}]}}, "job.env", "its webhook rejects a TrainJob that sets them"),
    # every node pod mounts the claim read-write: read-only attachments are not enough
    ({"job": {"numWorkers": 2}, "storage": {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"]}}, "storage.accessModes",
     "mounts it read-write in all 2 node pods"),
    ({"job": {"numWorkers": 3}, "storage": {"mode": "perPod"}}, "storage.accessModes", "outputToClaim=false"),
])
def test_trainjob_backend_errors(overlay, path, words):
    found = [p for p in problems({**V2, **overlay}, "error") if p.path == path]
    assert found and words in found[0].render(), [p.render() for p in problems({**V2, **overlay})]
    # the same values are fine on the PyTorchJob backend (or fail there for another reason)
    assert not [p for p in problems(overlay, "error") if p.path == path and words in p.render()]


def test_a_given_runtime_name_must_be_a_kubernetes_name():
    found = [p for p in problems({**V2, "trainjob": {"runtimeRef": {"name": "Bad_Name"}}}, "error") if p.path == "trainjob.runtimeRef.name"]
    assert found and "not a valid Kubernetes object name" in found[0].render()


@pytest.mark.parametrize("overlay, path, words", [
    ({**V2, "job": {"nprocPerNode": "auto"}}, "job.nprocPerNode", "one process per requested CPU"),
    ({**V2, "job": {"runPolicy": {"ttlSecondsAfterFinished": 60}}}, "job.runPolicy.ttlSecondsAfterFinished", "the TrainJob and its conditions stay"),
    ({**V2, "job": {"runPolicy": {"cleanPodPolicy": "None"}}}, "job.runPolicy.cleanPodPolicy", "None cannot keep them"),
    ({"trainjob": {"runtimeRef": {"name": "llm-gpu"}}}, "trainjob.runtimeRef.name", "does not apply to backend pytorchjob"),
])
def test_backend_notices_say_what_differs(overlay, path, words):
    found = [p for p in problems(overlay) if p.path == path]
    assert found and found[0].severity == "notice" and words in found[0].render()


def test_trainjob_sound_values():
    ok = {**V2, "job": {"numWorkers": 4, "runPolicy": {"cleanPodPolicy": "Running"}}, "storage": {"accessModes": ["ReadWriteMany"]}}
    assert problems(ok, "error") == []
    assert problems({**V2, "job": {"numWorkers": 4, "runPolicy": {"cleanPodPolicy": "Running"}},
                     "storage": {"mode": "perPod", "perPod": {"outputToClaim": False}}, "output": {"export": {"uri": "s3://ml-artifacts/out"}}}, "error") == []
