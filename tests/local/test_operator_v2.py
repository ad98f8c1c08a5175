"""run-local on ``backend: trainjob``: the pods Kubeflow Trainer v2 makes of the rendered TrainJob and
TrainingRuntime (llm_finetune.local.operator_v2), and the same demo output on both backends.

Plan assertions compare with the manifests real Helm renders; the env expected here is the torch
plugin's (kubeflow/trainer v2.3.0 pkg/runtime/framework/plugins/torch/torch.go): PET_* only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.render import CHART
from llm_finetune.core import helm as H
from llm_finetune.core.errors import UserError
from llm_finetune.local.plan import build_plan

DEMO = CHART.parent / "values-examples" / "local-demo.yaml"
SECRET_ENV = {"AWS_ACCESS_KEY_ID": "AKIA-test", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
LLM_FINETUNE = str(Path(sys.executable).parent / "llm-finetune")


def manifests(helm: str, *sets: str) -> list[dict]:
    return H.load_manifests(H.template(H.find_chart(None), values_files=[str(DEMO)], set_values=["backend=trainjob", *sets],
                                       release="local", helm=helm))


def plan_for(helm: str, tmp_path: Path, *sets: str):
    docs = manifests(helm, *sets)
    return docs, build_plan(docs, tmp_path / "work", local_env={"PATH": "/usr/bin", **SECRET_ENV}, master_port=29411)


def _one(docs, kind):
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def test_init_job_then_node_pods_with_the_torch_plugins_env(helm, tmp_path):
    docs, plan = plan_for(helm, tmp_path)
    job, runtime = _one(docs, "TrainJob"), _one(docs, "TrainingRuntime")
    name = job["metadata"]["name"]
    # JobSet names: <jobset>-<replicated job>-<job index>-<pod index>; dependsOn Complete: a later stage
    assert [(p.name, p.stage, p.short) for p in plan.pods] == [
        (f"{name}-init-0-0", 0, "init-0"), (f"{name}-node-0-0", 1, "node-0"), (f"{name}-node-0-1", 1, "node-1")]
    init, node0, node1 = plan.pods
    rjobs = {r["name"]: r["template"]["spec"]["template"]["spec"] for r in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    (initializer,) = rjobs["init"]["containers"]
    assert [(p.container, p.rendered_argv) for p in init.processes] == [("initializer", initializer["command"])]
    for pod in (node0, node1):
        (proc,) = pod.processes
        # the TrainJob's spec.trainer replaces the runtime's node command and adds its env
        assert (proc.container, proc.rendered_argv) == ("node", job["spec"]["trainer"]["command"])
        for e in job["spec"]["trainer"]["env"]:
            if "value" in e and not e["value"].startswith("/"):
                assert proc.env[e["name"]] == e["value"]
        assert proc.env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value"  # secretKeyRef from the local environment
        rank = str(pod.index)
        assert {k: v for k, v in proc.env.items() if k.startswith("PET_")} == {
            "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": rank,
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": "29411"}
        assert proc.env["JOB_COMPLETION_INDEX"] == rank  # the Job controller's, on every container
        assert not {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"} & set(proc.env)  # v1's, not v2's
    assert "PET_NNODES" not in init.processes[0].env  # the torch plugin touches the node container only
    # one claim folder for every pod; rank 0's trainer mounts name the report's paths
    claim = plan.mounts["/workspace"]
    assert init.processes[0].env["LLM_FINETUNE_PATH_MAP"].count(claim) == 1 and claim.endswith("claims/local-llm-finetune-workspace")
    assert plan.config_file.endswith("config.yaml")


def test_perpod_nodes_run_their_own_initializer(helm4, tmp_path):
    _, plan = plan_for(helm4, tmp_path, "storage.mode=perPod", "storage.perPod.outputToClaim=false",
                       "output.export.uri=s3://llm-finetune-demo/out")
    assert [(p.short, p.stage) for p in plan.pods] == [("node-0", 0), ("node-1", 0)]
    for pod in plan.pods:
        assert [(p.container, p.init) for p in pod.processes] == [("initializer", True), ("node", False)]
        workspace = dict(pod.processes[0].mounts)["/workspace"]
        assert workspace.endswith(f"pods/{pod.name}/volumes/workspace")  # each pod its own ephemeral volume


@pytest.mark.parametrize("sets, nproc", [
    ([], "1"),                                                   # job.nprocPerNode: the TrainJob's numProcPerNode
    (["job.nprocPerNode=auto"], "1"),                            # auto, cpu request 1: one process
    (["job.nprocPerNode=auto", "job.resources.cpu=3"], "3"),     # auto without a GPU: the CPU request
    (["job.nprocPerNode=auto", "job.resources.gpu=2"], "auto"),  # with GPUs torchrun decides
])
def test_nproc_per_node_as_the_torch_plugin_sets_it(helm4, tmp_path, sets, nproc):
    _, plan = plan_for(helm4, tmp_path, *sets)
    assert plan.pods[-1].processes[-1].env["PET_NPROC_PER_NODE"] == nproc


def test_a_runtime_the_chart_did_not_render_cannot_run_here(helm4, tmp_path):
    docs = manifests(helm4, "trainjob.runtimeRef.name=team-runtime")
    with pytest.raises(UserError, match="references ClusterTrainingRuntime 'team-runtime', which the chart did not render"):
        build_plan(docs, tmp_path / "work", local_env={"PATH": "/usr/bin", **SECRET_ENV})


# --------------------------------------------------------------------------- both backends, one demo
SHORT = {"training": {"args": {"max_steps": 4, "save_steps": 2, "logging_steps": 1, "eval_steps": 2}},
         "data": {"maxSeqLength": 96, "maxTrainSamples": 64, "maxEvalSamples": 16}}


@pytest.mark.slow
def test_the_demo_gives_the_same_output_on_both_backends(tmp_path, helm4):
    """One workdir (the demo assets are built once, the downloads are reused), two runs: runId v1 on the
    PyTorchJob backend, runId v2 on the TrainJob backend; the same adapter bytes and losses."""
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(SHORT))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_TOKEN", "LLM_FINETUNE_"))}
    env.update({"HELM_BIN": helm4, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    outputs = {}
    for backend, run_id in (("pytorchjob", "v1"), ("trainjob", "v2")):
        proc = subprocess.run([LLM_FINETUNE, "run-local", "--demo", "-f", str(DEMO), "-f", str(tmp_path / "short.yaml"),
                               "--set", f"backend={backend}", "--set", f"runId={run_id}", "--workdir", str(tmp_path / "work"),
                               "--no-report"], env=env, capture_output=True, text=True, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        outputs[backend] = tmp_path / "work" / "claims" / "local-llm-finetune-workspace" / "runs" / f"local-llm-finetune-{run_id}" / "output"
        if backend == "trainjob":
            assert "[init-0/initializer]" in out and "[node-0/node]" in out  # node-1 (rank 1) logs warnings only
            assert "[master-0/pytorch]" not in out
    manifests_ = {b: json.loads((o / "manifest.json").read_text()) for b, o in outputs.items()}
    metrics = {b: json.loads((o / "metrics.json").read_text()) for b, o in outputs.items()}
    assert manifests_["pytorchjob"]["worldSize"] == manifests_["trainjob"]["worldSize"] == 2
    assert manifests_["pytorchjob"]["globalStep"] == manifests_["trainjob"]["globalStep"] == 4

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(outputs["pytorchjob"] / "adapter_model.safetensors") == digest(outputs["trainjob"] / "adapter_model.safetensors")
    assert metrics["pytorchjob"]["eval"]["eval_loss"] == metrics["trainjob"]["eval"]["eval_loss"]
