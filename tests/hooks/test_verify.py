"""The helm test hook (`llm-finetune verify`) on a real LoRA adapter of the tiny model, laid out on a
workspace exactly as the chart's config says, with the PyTorchJob served by the fake API."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from fixtures.render import find, render
from llm_finetune.cli import main


def write_manifest(out_dir, kind):
    """Rewrite the manifest's file list after a test changed a file on purpose."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    manifest["kind"] = kind
    manifest["files"] = [{"path": f.relative_to(out_dir).as_posix(), "size": f.stat().st_size}
                         for f in sorted(out_dir.rglob("*")) if f.is_file() and f.name != "manifest.json"]
    (out_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_model_dir, helm4):
    """Real outputs of the trainer (`python -m llm_finetune train`, 3 steps on the tiny model):
    a LoRA adapter and a full fine-tune, as the helm test pod finds them on the claim."""
    from llm_finetune.local.demo_assets import ALPACA_TEMPLATE, write_dataset

    root = tmp_path_factory.mktemp("outputs")
    ws = root / "ws"
    shutil.copytree(tiny_model_dir, ws / "model")
    write_dataset(ws / "dataset", n_train=24, n_eval=4)
    for method in ("lora", "full"):
        values = {"runId": method, "model": {"uri": "file:///workspace/model"}, "dataset": {"uri": "file:///workspace/dataset"},
                  "data": {"format": "instruction", "promptTemplate": ALPACA_TEMPLATE, "responseColumn": "output", "maxSeqLength": 64},
                  "training": {"method": method, "args": {"max_steps": 3, "per_device_train_batch_size": 4, "save_steps": 100}}}
        (cm,) = find(render(helm4, values), "ConfigMap", hook="")
        config = root / f"{method}.yaml"
        config.write_text(cm["data"]["config.yaml"])
        env = {**os.environ, "LLM_FINETUNE_PATH_MAP": f"/workspace={ws}", "LLM_FINETUNE_TERMINATION_LOG": str(root / "t")}
        proc = subprocess.run([sys.executable, "-m", "llm_finetune", "train", "--config", str(config)],
                              capture_output=True, text=True, env=env, cwd=root, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        shutil.copytree(ws / "runs" / f"ft-llm-finetune-{method}" / "output", root / ("adapter" if method == "lora" else "model"))
    return root


@pytest.fixture
def pod(helm4, kube_api, tmp_path, monkeypatch, tiny_model_dir, outputs):
    """The rendered helm test Pod's command and env, run here with /workspace mapped to a tmp workspace."""

    def setup(values=None, *, output="adapter", base_model=True, rbac=True):
        docs = render(helm4, values or {})
        (test_pod,) = find(docs, "Pod", hook="test")
        (role,) = [d for d in find(docs, "Role", hook="test")]
        (cm,) = find(docs, "ConfigMap", hook="")
        container = test_pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"] if "value" in e}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        config = yaml.safe_load(cm["data"]["config.yaml"])
        ws, out = tmp_path / "ws", tmp_path / "out"
        monkeypatch.setenv("LLM_FINETUNE_PATH_MAP", f"/workspace={ws},/output={out}")
        run_dir = (ws if config["paths"]["run"].startswith("/workspace/") else out) / config["paths"]["run"].split("/", 2)[2]
        if output:
            shutil.copytree(outputs / output, run_dir / "output")
        if base_model:
            shutil.copytree(tiny_model_dir, ws / "model")
        path = tmp_path / "config.yaml"
        path.write_text(cm["data"]["config.yaml"])
        kube_api.cluster.rbac = role["rules"] if rbac else None
        args = container["command"][1:]
        args[args.index("--config") + 1] = str(path)
        return env["JOB_NAME"], run_dir / "output", args

    return setup


def succeeded(api, job):
    api.cluster.add_pytorchjob("ml", job, [("Created", "True", ""), ("Running", "False", ""),
                                           ("Succeeded", "True", f"PyTorchJob {job} is successfully completed.")])


def test_adapter_loads_onto_base_model(pod, kube_api, caplog, termination_log):
    job, _, args = pod()
    succeeded(kube_api, job)
    assert main(args) == 0
    assert f"PyTorchJob {job} condition Succeeded=True" in caplog.text
    assert "adapter LoraConfig (LORA) loads" in caplog.text
    assert "base model + adapter load" in caplog.text and "forward pass OK" in caplog.text
    assert ("GET", f"/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs/{job}") in kube_api.cluster.requests
    assert not termination_log.exists()


def test_full_model_loads(pod, kube_api, caplog):
    job, _, args = pod({"training": {"method": "full"}}, output="model")
    succeeded(kube_api, job)
    assert main(args) == 0
    assert "model loads" in caplog.text and "forward pass OK" in caplog.text


def test_failed_job(pod, kube_api, termination_log):
    job, _, args = pod()
    kube_api.cluster.add_pytorchjob("ml", job, [("Created", "True", ""), ("Failed", "True", f"PyTorchJob {job} is failed because 1 Master replica(s) failed.")])
    assert main(args) == 1
    msg = termination_log.read_text()
    assert msg.startswith(f"verify: PyTorchJob '{job}' failed: PyTorchJob {job} is failed because 1 Master replica(s) failed.")
    assert f"logs -l training.kubeflow.org/job-name={job} --all-containers" in msg


def test_running_job(pod, kube_api, termination_log):
    job, _, args = pod()
    kube_api.cluster.add_pytorchjob("ml", job, [("Created", "True", ""), ("Running", "True", "")])
    assert main(args) == 1
    assert "has not succeeded yet (Running)" in termination_log.read_text()


def test_job_deleted_after_ttl_falls_back_to_the_output(pod, kube_api, caplog):
    _, _, args = pod()
    assert main(args) == 0
    assert "not found in namespace ml" in caplog.text and "verify passed" in caplog.text


def test_forbidden(pod, kube_api, termination_log):
    job, _, args = pod()
    succeeded(kube_api, job)
    kube_api.cluster.rbac = [{"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "resourceNames": ["another-job"], "verbs": ["get"]}]
    assert main(args) == 1
    assert f"reading PyTorchJob '{job}' is forbidden — the test Role must allow get" in termination_log.read_text()


def test_missing_output(pod, kube_api, termination_log):
    job, out, args = pod(output=None)
    succeeded(kube_api, job)
    assert main(args) == 1
    assert f"no output manifest at {out}/manifest.json" in termination_log.read_text()


def truncate_weights(out):
    weights = out / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def flip_a_byte(out):
    config = out / "adapter_config.json"
    data = bytearray(config.read_bytes())
    data[data.index(b'"r": ') + 5] ^= 1  # same size, different content
    config.write_bytes(bytes(data))


def nan_weights(out):
    import torch
    from safetensors.torch import load_file, save_file

    weights = out / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(weights))


@pytest.mark.parametrize("damage, relist, words", [
    (truncate_weights, False, "adapter_model.safetensors has"),  # size differs from the manifest
    (truncate_weights, True, "cannot load"),  # a consistent manifest: the file itself must fail to load
    (flip_a_byte, False, "adapter_config.json does not match its sha256 in the manifest"),
    (nan_weights, True, "has NaN/Inf values"),
], ids=["size", "unloadable", "checksum", "nan"])
def test_damaged_output(pod, kube_api, termination_log, damage, relist, words):
    job, out, args = pod()
    succeeded(kube_api, job)
    damage(out)
    if relist:
        write_manifest(out, "adapter")
    assert main(args) == 1
    assert words in termination_log.read_text()


def test_per_pod_mode_checks_the_adapter_without_the_base(pod, kube_api, caplog):
    job, out, args = pod({"storage": {"mode": "perPod"}, "job": {"numWorkers": 2}}, base_model=False)
    assert str(out).endswith(f"out/runs/{job}/output")  # /output on the claim in perPod mode
    succeeded(kube_api, job)
    assert main(args) == 0
    assert "base model not on this volume" in caplog.text


def test_load_budget(pod, kube_api, caplog):
    job, _, args = pod()
    succeeded(kube_api, job)
    assert main(args + ["--max-load-gib", "0"]) == 0
    assert "exceed the load budget" in caplog.text and "forward pass" not in caplog.text


# --------------------------------------------------------------------------- backend trainjob (Kubeflow Trainer v2)
V2 = {"backend": "trainjob"}


def test_trainjob_complete_passes_with_the_charts_rbac(pod, kube_api, caplog):
    job, _, args = pod(V2)
    assert os.environ["JOB_KIND"] == "TrainJob"
    kube_api.cluster.add_trainjob("ml", job, [("Suspended", "False", "TrainJob is resumed"),
                                              ("Complete", "True", "jobset completed successfully")])
    assert main(args) == 0
    assert f"verify passed: TrainJob {job} Complete" in caplog.text
    assert ("GET", f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs/{job}") in kube_api.cluster.requests


def test_trainjob_failed_and_not_finished(pod, kube_api, termination_log):
    job, _, args = pod(V2)
    kube_api.cluster.add_trainjob("ml", job, [("Failed", "True", "applying FailJobSet failure policy action (first failed job: x)")])
    assert main(args) == 1
    msg = termination_log.read_text()
    assert msg.startswith(f"verify: TrainJob '{job}' failed: applying FailJobSet failure policy action")
    assert f"jobset.sigs.k8s.io/jobset-name={job}" in msg
    kube_api.cluster.add_trainjob("ml", job, [("Suspended", "True", "TrainJob is suspended")])
    assert main(args) == 1
    assert "has not completed yet (Suspended)" in termination_log.read_text()
    kube_api.cluster.add_trainjob("ml", job, [])
    assert main(args) == 1
    assert "has not completed yet (not started)" in termination_log.read_text()


def test_trainjob_role_grants_only_that_trainjob(pod, kube_api, termination_log):
    job, _, args = pod(V2)
    kube_api.cluster.add_trainjob("ml", job, [("Complete", "True", "")])
    kube_api.cluster.rbac = [{"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "resourceNames": [job], "verbs": ["get"]}]
    assert main(args) == 1
    assert f"reading TrainJob '{job}' is forbidden — the test Role must allow get on trainjobs.trainer.kubeflow.org" in termination_log.read_text()
