"""Parity with the v2 SDK: kubeflow 0.5 ``TrainerClient.train()`` (its real code, only the Kubernetes
API clients mocked) versus the chart's TrainJob for the same fine-tune.

The SDK is given the chart's own rendered TrainingRuntime as the cluster's answer to its
``get_runtime`` call, so this also shows that a chart-made runtime is usable from the SDK.
Every intended difference is listed in INTENDED_DIFFERENCES and asserted exactly.
"""

from __future__ import annotations

import json
from unittest.mock import MagicMock, patch

import pytest

from fixtures.render import env, one, render

INTENDED_DIFFERENCES = {
    "initializer": "no spec.initializer: the model and dataset URIs are in the job config, and one combined "
                   "initializer job (shared mode) fills the claim — the SDK's spec.initializer needs separate "
                   "dataset-initializer/model-initializer jobs, two writers on one ReadWriteOnce claim",
    "access-token": "tokens come from Secrets (secretKeyRef env); the SDK puts access_token in the TrainJob in clear",
    "env": "the trainer env adds the chart's common env (HOME, caches under /tmp, ...), the checkpoint timeout "
           "after SIGTERM and LLM_FINETUNE_SPEC_CHECKSUM (values that change the pods need a new runId)",
    "api-group": "runtimeRef.apiGroup is explicit (the CRD defaults it: no drift for Argo CD)",
    "quantities": "resource quantities are strings, as the API returns them (the SDK sends 4.0 for cpu 4)",
    "ephemeral-storage": "resourcesPerNode requests ephemeral-storage = job.tmpSizeLimit (what /tmp, an emptyDir "
                         "with that sizeLimit, may hold; as on the PyTorchJob's trainer)",
    "labels": "app.kubernetes.io/* and helm.sh/chart labels added to the given ones",
    "name": "the name is <fullname>[-<runId>], not random",
    "num-proc": "numProcPerNode comes from job.nprocPerNode (default 1, as in the v1 reference; \"auto\" leaves it "
                "out); CustomTrainerContainer has no such parameter, so the SDK leaves the torch plugin's auto",
}

VALUES = {
    "backend": "trainjob", "runId": "1",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"uri": "hf://HuggingFaceH4/no_robots"},
    "secrets": {"hf": {"existingSecret": "hf-token"}},
    "storage": {"accessModes": ["ReadWriteMany"]},
    "job": {"numWorkers": 2, "resources": {"cpu": 4, "memory": "16Gi", "gpu": 1}, "labels": {"team": "nlp"},
            "env": [{"name": "NCCL_DEBUG", "value": "INFO"}], "runPolicy": {"activeDeadlineSeconds": 7200}},
}


def sdk_train(runtime: dict, **kwargs) -> dict:
    from kubernetes import client as k8s

    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient
    from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend

    with patch.object(KubernetesBackend, "verify_backend"):  # reads a control-plane ConfigMap: an API call
        client = TrainerClient(KubernetesBackendConfig(namespace="default", client_configuration=k8s.Configuration()))
    backend = client.backend
    backend.custom_api, backend.core_api = MagicMock(), MagicMock()
    backend.custom_api.get_namespaced_custom_object.return_value.get.return_value = runtime
    client.train(runtime=runtime["metadata"]["name"], **kwargs)
    call = backend.custom_api.create_namespaced_custom_object.call_args
    assert call.args[:4] == ("trainer.kubeflow.org", "v1alpha1", "default", "trainjobs")
    return json.loads(json.dumps(call.args[4]))


@pytest.fixture(scope="module")
def chart_and_sdk(helm4):
    from kubeflow.trainer import (CustomTrainerContainer, HuggingFaceDatasetInitializer, HuggingFaceModelInitializer,
                                  Initializer)
    from kubeflow.trainer.options import ActiveDeadlineSeconds, Labels, Name, TrainerCommand

    docs = render(helm4, VALUES)
    chart = one(docs, "TrainJob")
    trainer = chart["spec"]["trainer"]
    sdk = sdk_train(
        one(docs, "TrainingRuntime", hook="pre-install,pre-upgrade"),
        initializer=Initializer(model=HuggingFaceModelInitializer(storage_uri=VALUES["model"]["uri"], access_token="hf_secret"),
                                dataset=HuggingFaceDatasetInitializer(storage_uri=VALUES["dataset"]["uri"], access_token="hf_secret")),
        trainer=CustomTrainerContainer(image=trainer["image"], num_nodes=2, resources_per_node={"cpu": 4, "memory": "16Gi", "gpu": 1},
                                       env={"NCCL_DEBUG": "INFO"}),
        options=[Name(chart["metadata"]["name"]), Labels({"team": "nlp"}), TrainerCommand(trainer["command"]),
                 ActiveDeadlineSeconds(7200)])
    return chart, sdk


def test_same_runtime_job_shape_and_resources(chart_and_sdk):
    chart, sdk = chart_and_sdk
    assert sdk["apiVersion"] == chart["apiVersion"] and sdk["kind"] == chart["kind"]
    assert sdk["metadata"]["name"] == chart["metadata"]["name"]
    # api-group: the SDK leaves it to the CRD default
    assert chart["spec"]["runtimeRef"] == {**sdk["spec"]["runtimeRef"], "apiGroup": "trainer.kubeflow.org"}
    c, s = chart["spec"]["trainer"], sdk["spec"]["trainer"]
    for key in ("image", "command", "numNodes"):
        assert c[key] == s[key], key
    # quantities: strings in the chart, numbers from the SDK; the same resources either way
    as_text = {k: {n: str(int(q)) if isinstance(q, float) else q for n, q in v.items()} for k, v in s["resourcesPerNode"].items()}
    as_text["requests"]["ephemeral-storage"] = "10Gi"  # ephemeral-storage: job.tmpSizeLimit's default
    assert c["resourcesPerNode"] == as_text
    assert chart["spec"]["activeDeadlineSeconds"] == sdk["spec"]["activeDeadlineSeconds"]


def test_env_and_labels_the_sdk_sets_are_in_the_chart(chart_and_sdk):
    chart, sdk = chart_and_sdk
    chart_env, sdk_env = env({"env": chart["spec"]["trainer"]["env"]}), env({"env": sdk["spec"]["trainer"]["env"]})
    assert {k: chart_env[k] for k in sdk_env} == sdk_env
    extra = set(chart_env) - set(sdk_env)  # env: the chart's own variables
    assert {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "HOME", "LLM_FINETUNE_SPEC_CHECKSUM", "HF_TOKEN"} <= extra
    assert chart_env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert sdk["metadata"]["labels"].items() <= chart["metadata"]["labels"].items()  # labels: ours added


def test_intended_differences_are_exactly_these(chart_and_sdk):
    chart, sdk = chart_and_sdk
    # initializer: the SDK describes the download in the TrainJob; the chart in its config
    assert "initializer" not in chart["spec"]
    assert {k: v["storageUri"] for k, v in sdk["spec"]["initializer"].items()} == \
        {"model": VALUES["model"]["uri"], "dataset": VALUES["dataset"]["uri"]}
    # access-token: in clear in the SDK's TrainJob, nowhere in the chart's
    assert "hf_secret" in json.dumps(sdk) and "hf_secret" not in json.dumps(chart)
    assert set(chart["spec"]) - set(sdk["spec"]) == set()
    assert set(sdk["spec"]) - set(chart["spec"]) == {"initializer"}
    assert set(chart["spec"]["trainer"]) - set(sdk["spec"]["trainer"]) == {"numProcPerNode"}  # num-proc
    assert chart["spec"]["trainer"]["numProcPerNode"] == 1
    assert set(INTENDED_DIFFERENCES) == {"initializer", "access-token", "env", "api-group", "quantities", "labels",
                                         "name", "num-proc", "ephemeral-storage"}


def test_every_v2_sdk_parameter_is_in_the_readme_table():
    """The README's mapping table has a v2 column naming every parameter of TrainerClient.train(), of
    the trainer/initializer types it takes and its Kubernetes options."""
    import dataclasses
    import inspect
    from pathlib import Path

    from kubeflow.trainer import (CustomTrainer, CustomTrainerContainer, HuggingFaceDatasetInitializer,
                                  HuggingFaceModelInitializer, S3DatasetInitializer, S3ModelInitializer, TrainerClient)
    from kubeflow.trainer import options

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- v1-mapping:start -->", 1)[1].split("<!-- v1-mapping:end -->", 1)[0]
    v2_column = "\n".join(row.rsplit("|", 2)[-2] for row in table.splitlines() if row.startswith("| "))
    names = [p for p in inspect.signature(TrainerClient.train).parameters if p not in ("self", "trainer", "initializer", "options")]
    for cls in (CustomTrainer, CustomTrainerContainer, HuggingFaceModelInitializer, HuggingFaceDatasetInitializer,
                S3ModelInitializer, S3DatasetInitializer):
        names += [f.name for f in dataclasses.fields(cls)]
    names += [n for n in ("Name", "Labels", "Annotations", "TrainerCommand", "TrainerArgs", "ActiveDeadlineSeconds", "RuntimePatches")
              if hasattr(options, n)]
    missing = sorted({n for n in names if n not in v2_column})
    assert missing == []
