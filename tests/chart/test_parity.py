"""Parity with the v1 reference: kubeflow-training 1.9.4 `TrainingClient.train()` (its real code, with
only the Kubernetes API clients mocked) versus the chart's render of the same parameters.

They must agree on replicas, nprocPerNode, resources, volumes/mounts, init container placement,
the PVC spec, metadata, env, and the model/dataset/trainer parameters. Every intended difference
is listed in INTENDED_DIFFERENCES and asserted exactly, so a change on either side fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest.mock import MagicMock

import pytest
import yaml

from fixtures.render import container, env, job_config, mounts, one, pytorchjob, render, volumes

EXAMPLES = Path(__file__).resolve().parents[2] / "values-examples"

INTENDED_DIFFERENCES = {
    "volume-name": "the claim's pod volume is named 'workspace', not 'storage-initializer'",
    "claim-name": "the claim is <fullname>-workspace per release, not per job: a new runId reuses the downloads",
    "topology": "num_workers pods are all `Worker` replicas (worker-0 is rank 0), not a Master + num_workers-1 "
                "Workers: without a Master the Training Operator injects no init-pytorch container (alpine:3.10 from "
                "Docker Hub, no securityContext), so the pods pass Pod Security \"restricted\" and pull nothing from "
                "outside global.imageRegistry (a Master only in perPod mode with the claim and several pods)",
    "init-every-pod": "every pod runs the storage-initializer (`initialize --shared --outcome ...`): pod 0 fills the "
                      "claim, the others wait for its manifests (the v1 reference: the Master only; Workers race a "
                      "half-written volume); its outcome ends the pytorch container, whose exit code the operator reads",
    "access-modes": "several pods sharing the claim need ReadWriteMany: the SDK's [ReadWriteOnce, ReadOnlyMany] is "
                    "refused by common drivers (aws-ebs-csi-driver, local-path-provisioner)",
    "argv": "containers run `command` with --config (a ConfigMap), not JSON blobs in args",
    "secrets": "tokens and keys are env from secretKeyRef, never in argv (the v1 reference puts them in args)",
    "extra-volumes": "config (ConfigMap), tmp (emptyDir for the read-only root filesystem), dshm (/dev/shm)",
    "images": "the chart's initializer and trainer images",
    "pod-hardening": "restricted securityContext, env (HOME, caches under /tmp), terminationMessagePolicy, "
                     "terminationGracePeriodSeconds, checksum/config annotation, the chart's ServiceAccount (its token "
                     "only to post a failure Event on the job), /tmp bounded and requested as ephemeral-storage",
    "run-policy": "runPolicy cleanPodPolicy Running (the pods of a finished job free their GPUs) and backoffLimit 3 "
                  "(retries without progress, counted by the pods: the operator ignores it under ExitCode)",
    "spec-checksum": "the PyTorchJob carries llm-finetune.io/spec-checksum: the preflight refuses a changed spec for a live run",
    "restart-policy": "restartPolicy ExitCode (the v1 reference leaves the operator's default, Never)",
    "labels": "app.kubernetes.io/* and helm.sh/chart labels added to the given ones",
    "output-dir": "TrainingArguments.output_dir is chart-managed (paths.run), not a user parameter",
}


def sdk_train(**kwargs):
    """Run the real v1 train() and return (pvc, pytorchjob) as the API server would receive them."""
    from kubernetes import client as k8s

    from kubeflow.training import TrainingClient
    from kubeflow.training.api_client import ApiClient

    tc = TrainingClient(client_configuration=k8s.Configuration(), namespace=kwargs.get("namespace", "default"))
    tc.core_api, tc.custom_api = MagicMock(), MagicMock()
    tc.train(**kwargs)
    pvc = tc.core_api.create_namespaced_persistent_volume_claim.call_args.kwargs["body"]
    job = tc.custom_api.create_namespaced_custom_object.call_args.args[4]
    api = ApiClient()
    return json.loads(json.dumps(api.sanitize_for_serialization(pvc))), json.loads(json.dumps(api.sanitize_for_serialization(job)))


def _args(container_spec: dict) -> dict[str, str]:
    args = container_spec["args"]
    return {args[i].lstrip("-"): args[i + 1] for i in range(0, len(args), 2)}


def _case_bert_s3():
    import transformers
    from peft import LoraConfig

    from kubeflow.storage_initializer.hugging_face import HuggingFaceModelParams, HuggingFaceTrainerParams
    from kubeflow.storage_initializer.s3 import S3DatasetParams

    values = yaml.safe_load((EXAMPLES / "v1-bert-classification-s3.yaml").read_text())
    args = values["training"]["args"]
    sdk = dict(
        name="fine-tune-bert", namespace="ml", num_workers=4, num_procs_per_worker=2,
        resources_per_worker={"gpu": 2, "cpu": 5, "memory": "10G"},
        model_provider_parameters=HuggingFaceModelParams(
            model_uri="hf://google-bert/bert-base-cased",
            transformer_type=transformers.AutoModelForSequenceClassification, num_labels=5),
        dataset_provider_parameters=S3DatasetParams(
            endpoint_url="http://minio-service.kubeflow:9000", bucket_name="datasets", file_key="yelp_review_full",
            region_name="us-east-1", access_key="AKIAEXAMPLE", secret_key="s3cr3t-example"),
        trainer_parameters=HuggingFaceTrainerParams(
            training_parameters=transformers.TrainingArguments(output_dir="/tmp/unused", **args),
            lora_config=LoraConfig(**values["training"]["lora"])),
        storage_config={"size": "10Gi", "storage_class": None, "access_modes": ["ReadWriteOnce", "ReadOnlyMany"]},
    )
    return sdk, values, {}


def _case_llm_lora():
    import transformers
    from peft import LoraConfig

    from kubeflow.storage_initializer.hugging_face import (HuggingFaceDatasetParams, HuggingFaceModelParams,
                                                             HuggingFaceTrainerParams)

    values = yaml.safe_load((EXAMPLES / "v1-llm-lora.yaml").read_text())
    args = values["training"]["args"]
    sdk = dict(
        name="llm-lora", namespace="default", num_workers=1, num_procs_per_worker=1,
        resources_per_worker={"gpu": 1, "cpu": 4, "memory": "16Gi"},
        model_provider_parameters=HuggingFaceModelParams(
            model_uri="hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0", transformer_type=transformers.AutoModelForCausalLM),
        dataset_provider_parameters=HuggingFaceDatasetParams(repo_id="tatsu-lab/alpaca", split="train[:3000]"),
        trainer_parameters=HuggingFaceTrainerParams(
            training_parameters=transformers.TrainingArguments(output_dir="/tmp/unused", **args),
            lora_config=LoraConfig(**values["training"]["lora"])),
        storage_config={"size": "20Gi", "access_modes": ["ReadWriteOnce"]},
    )
    return sdk, values, {}


def _case_metadata_env_queue():
    """The remaining train() parameters: labels, annotations, env_vars, init_env_vars, queue_name,
    storage_class, HF access_token, and 2 workers with {requests, limits} resources."""
    import transformers
    from kubernetes import client as k8s
    from peft import LoraConfig

    from kubeflow.storage_initializer.hugging_face import (HuggingFaceDatasetParams, HuggingFaceModelParams,
                                                             HuggingFaceTrainerParams)

    resources = {"requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    sdk = dict(
        name="gated", namespace="team-a", num_workers=2, num_procs_per_worker="auto",
        labels={"team": "a"}, annotations={"owner": "alice"},
        resources_per_worker=k8s.V1ResourceRequirements(**resources),
        model_provider_parameters=HuggingFaceModelParams(
            model_uri="hf://meta-llama/Llama-3.2-1B", transformer_type=transformers.AutoModelForCausalLM,
            access_token="hf_example_token"),
        dataset_provider_parameters=HuggingFaceDatasetParams(repo_id="org/private-set", access_token="hf_example_token"),
        trainer_parameters=HuggingFaceTrainerParams(
            training_parameters=transformers.TrainingArguments(output_dir="/tmp/unused"),
            lora_config=LoraConfig(r=4)),
        env_vars={"NCCL_DEBUG": "INFO"}, init_env_vars={"HF_HUB_ENABLE_HF_TRANSFER": "1"},
        storage_config={"size": "30Gi", "storage_class": "fast-rwx", "access_modes": ["ReadWriteMany"]},
        queue_name="gpu-queue",
    )
    values = {
        "model": {"uri": "hf://meta-llama/Llama-3.2-1B", "transformerType": "AutoModelForCausalLM"},
        "dataset": {"uri": "hf://org/private-set"},
        "training": {"lora": {"r": 4}},
        "secrets": {"hf": {"existingSecret": "hf-token"}},
        "storage": {"size": "30Gi", "storageClassName": "fast-rwx", "accessModes": ["ReadWriteMany"]},
        "job": {"numWorkers": 2, "nprocPerNode": "auto", "resources": resources, "labels": {"team": "a"},
                "annotations": {"owner": "alice"}, "queueName": "gpu-queue",
                "env": [{"name": "NCCL_DEBUG", "value": "INFO"}]},
        "initializer": {"env": [{"name": "HF_HUB_ENABLE_HF_TRANSFER", "value": "1"}]},
    }
    return sdk, values, {"hf_token": "hf_example_token"}


CASES = {"bert-s3": _case_bert_s3, "llm-lora": _case_llm_lora, "metadata-env-queue": _case_metadata_env_queue}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, helm4):
    sdk_kwargs, values, extra = CASES[request.param]()
    name, namespace = sdk_kwargs["name"], sdk_kwargs["namespace"]
    sdk_pvc, sdk_job = sdk_train(**sdk_kwargs)
    docs = render(helm4, {**values, "fullnameOverride": name}, release=name, namespace=namespace)
    return dict(sdk_kwargs=sdk_kwargs, values=values, extra=extra, sdk_pvc=sdk_pvc, sdk_job=sdk_job, docs=docs)


def _str_quantities(resources: dict) -> dict:
    return {kind: {k: str(v) for k, v in (lst or {}).items()} for kind, lst in (resources or {}).items()}


def our_template(docs, role: str) -> dict:
    """Our pod template standing for the SDK's ``role`` ("topology": every pod is a Worker)."""
    specs = pytorchjob(docs)["spec"]["pytorchReplicaSpecs"]
    return specs.get(role, specs["Worker"])["template"]


def test_job_metadata_replicas_and_nproc(pair):
    sdk, ours = pair["sdk_job"], pytorchjob(pair["docs"])
    assert (ours["apiVersion"], ours["kind"]) == (sdk["apiVersion"], sdk["kind"])
    assert ours["metadata"]["name"] == sdk["metadata"]["name"]
    assert ours["metadata"]["namespace"] == sdk["metadata"]["namespace"]
    # labels: the given ones (and Kueue's) are there; the chart adds its own ("labels")
    assert (sdk["metadata"].get("labels") or {}).items() <= ours["metadata"]["labels"].items()
    assert set(ours["metadata"]["labels"]) - set(sdk["metadata"].get("labels") or {}) >= {
        "app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"}
    annotations = dict(ours["metadata"]["annotations"])
    assert len(annotations.pop("llm-finetune.io/spec-checksum")) == 64  # "spec-checksum"
    assert annotations == (sdk["metadata"].get("annotations") or {})
    assert ours["spec"]["nprocPerNode"] == sdk["spec"]["nprocPerNode"]
    sdk_specs, our_specs = sdk["spec"]["pytorchReplicaSpecs"], ours["spec"]["pytorchReplicaSpecs"]
    # "topology": the same number of pods, all Workers
    assert list(our_specs) == ["Worker"] and "Master" in sdk_specs
    assert our_specs["Worker"]["replicas"] == sum(s["replicas"] for s in sdk_specs.values()) == pair["sdk_kwargs"]["num_workers"]
    # "run-policy" and "restart-policy"
    assert sdk["spec"]["runPolicy"] == {} and ours["spec"]["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3}
    assert all("restartPolicy" not in s for s in sdk_specs.values())
    assert {s["restartPolicy"] for s in our_specs.values()} == {"ExitCode"}


def test_pod_templates_containers_resources_and_init_placement(pair):
    sdk_specs = pair["sdk_job"]["spec"]["pytorchReplicaSpecs"]
    for role, sdk_spec in sdk_specs.items():
        sdk_pod, our_pod = sdk_spec["template"], our_template(pair["docs"], role)
        assert our_pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == \
            sdk_pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        assert set(our_pod["metadata"]["annotations"]) == {"sidecar.istio.io/inject", "checksum/config"}
        sdk_c, our_c = sdk_pod["spec"]["containers"], our_pod["spec"]["containers"]
        assert [c["name"] for c in our_c] == [c["name"] for c in sdk_c] == ["pytorch"]
        ours = _str_quantities(our_c[0]["resources"])
        assert ours["requests"].pop("ephemeral-storage") == "10Gi"  # "pod-hardening": job.tmpSizeLimit
        assert {k: v for k, v in ours.items() if v} == _str_quantities(sdk_c[0].get("resources"))
        sdk_init = [c["name"] for c in sdk_pod["spec"].get("initContainers") or []]
        our_init = our_pod["spec"]["initContainers"]
        assert sdk_init == (["storage-initializer"] if role == "Master" else [])
        # "init-every-pod"
        assert [c["name"] for c in our_init] == ["storage-initializer"]
        assert our_init[0]["command"][4:] == ["--shared", "--outcome", "/tmp/llm-finetune/initializer-outcome.json"]
        # "argv": no JSON in argv; the v1 reference passes everything as args
        assert all("args" not in c for c in our_c + our_init)
        assert "args" in sdk_c[0] and "--training_parameters" in sdk_c[0]["args"]
        # "images"
        assert our_c[0]["image"].startswith("ghcr.io/llm-finetune/trainer:")


def test_volumes_and_mounts(pair):
    sdk_specs = pair["sdk_job"]["spec"]["pytorchReplicaSpecs"]
    sdk_claim = pair["sdk_pvc"]["metadata"]["name"]
    our_claim = one(pair["docs"], "PersistentVolumeClaim")["metadata"]["name"]
    assert sdk_claim == pair["sdk_kwargs"]["name"] and our_claim == sdk_claim + "-workspace"  # "claim-name"
    for role, sdk_spec in sdk_specs.items():
        sdk_pod, our_pod = sdk_spec["template"]["spec"], our_template(pair["docs"], role)["spec"]
        assert volumes(sdk_pod) == {"storage-initializer": {
            "name": "storage-initializer", "persistentVolumeClaim": {"claimName": sdk_claim}}}
        ours = volumes(our_pod)
        assert ours["workspace"]["persistentVolumeClaim"] == {"claimName": our_claim}  # "volume-name"
        assert set(ours) - {"workspace"} == {"config", "tmp", "dshm"}  # "extra-volumes"
        for sdk_c in (sdk_pod.get("initContainers") or []) + sdk_pod["containers"]:
            sdk_mount = mounts(sdk_c)["/workspace"]
            our_mount = mounts(container(our_pod, sdk_c["name"]))["/workspace"]
            assert (sdk_mount["mountPath"], sdk_mount.get("readOnly")) == ("/workspace", None)
            assert (our_mount["name"], our_mount.get("readOnly")) == ("workspace", None)


def test_pvc_spec(pair):
    sdk, ours = pair["sdk_pvc"], one(pair["docs"], "PersistentVolumeClaim")
    if sdk["spec"]["accessModes"] == ["ReadWriteOnce", "ReadOnlyMany"]:  # "access-modes"
        assert ours["spec"]["accessModes"] == ["ReadWriteMany"]
    else:
        assert ours["spec"]["accessModes"] == sdk["spec"]["accessModes"]
    assert ours["spec"]["resources"] == sdk["spec"]["resources"]
    assert ours["spec"].get("storageClassName") == sdk["spec"].get("storageClassName")
    assert ours["metadata"]["namespace"] == sdk["metadata"]["namespace"]


def test_env_and_secrets(pair):
    sdk_specs = pair["sdk_job"]["spec"]["pytorchReplicaSpecs"]
    master_sdk, master_ours = sdk_specs["Master"]["template"]["spec"], our_template(pair["docs"], "Master")["spec"]
    for name in ("pytorch", "storage-initializer"):
        sdk_env = {e["name"]: e for e in container(master_sdk, name).get("env") or []}
        assert sdk_env.items() <= env(container(master_ours, name)).items(), name
    # "secrets": the v1 reference passes tokens/keys in argv; the chart never does
    init_args = _args(container(master_sdk, "storage-initializer"))
    model_params = json.loads(init_args["model_provider_parameters"])
    dataset_params = json.loads(init_args["dataset_provider_parameters"])
    text = yaml.safe_dump(pair["docs"])
    if pair["extra"].get("hf_token"):
        assert model_params["access_token"] == pair["extra"]["hf_token"]
        assert env(container(master_ours, "storage-initializer"))["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    for secret in filter(None, [model_params.get("access_token"), dataset_params.get("access_token"),
                                dataset_params.get("secret_key"), dataset_params.get("access_key")]):
        assert secret not in text
    if "secret_key" in dataset_params:
        assert env(container(master_ours, "storage-initializer"))["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]


def test_model_dataset_and_trainer_parameters(pair):
    master_sdk = pair["sdk_job"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    init_args = _args(container(master_sdk, "storage-initializer"))
    train_args = _args(container(master_sdk, "pytorch"))
    model = json.loads(init_args["model_provider_parameters"])
    dataset = json.loads(init_args["dataset_provider_parameters"])
    cfg = job_config(pair["docs"])
    assert cfg.model.uri == model["model_uri"] == train_args["model_uri"]
    assert cfg.model.transformer_type == train_args["transformer_type"]
    assert str(cfg.model.num_labels) == train_args["num_labels"]
    assert (cfg.model_dir, cfg.dataset_dir) == (train_args["model_dir"], train_args["dataset_dir"])
    if init_args["dataset_provider"] == "hf":
        assert cfg.dataset.uri == "hf://" + dataset["repo_id"]
        assert (cfg.dataset.split or None) == dataset["split"]
    else:
        assert cfg.dataset.uri == f"s3://{dataset['bucket_name']}/{dataset['file_key']}"
        assert (cfg.dataset.s3.endpoint_url, cfg.dataset.s3.region) == (dataset["endpoint_url"], dataset["region_name"])
    sdk_lora = json.loads(train_args["lora_config"])
    for key, value in pair["values"]["training"]["lora"].items():
        got = sdk_lora[key]
        assert (sorted(got) == sorted(value)) if isinstance(value, list) else got == value, key
        assert cfg.training.lora[key] == value
    sdk_training = json.loads(train_args["training_parameters"])
    for key, value in (pair["values"]["training"].get("args") or {}).items():
        assert sdk_training[key] == value == cfg.training.args[key], key
    assert "output_dir" not in cfg.training.args and cfg.checkpoints_dir.startswith(cfg.paths.run)  # "output-dir"


def test_every_train_parameter_has_a_values_equivalent():
    """The README's mapping table covers every parameter of train() and of the provider classes."""
    import inspect

    from kubeflow.storage_initializer.hugging_face import HuggingFaceDatasetParams, HuggingFaceModelParams
    from kubeflow.storage_initializer.s3 import S3DatasetParams
    from kubeflow.training import TrainingClient

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- v1-mapping:start -->", 1)[1].split("<!-- v1-mapping:end -->", 1)[0]
    names = [p for p in inspect.signature(TrainingClient.train).parameters if p != "self"]
    for cls in (HuggingFaceModelParams, HuggingFaceDatasetParams, S3DatasetParams):
        names += list(inspect.signature(cls).parameters)
    names += ["size", "storage_class", "access_modes", "lora_config", "training_parameters"]
    missing = [n for n in names if f"`{n}`" not in table]
    assert missing == []
