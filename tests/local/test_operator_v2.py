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
def test_the_demo_gives_the_same_output_on_both_backends(tmp_path, helm4, demo_workdir):
    """One workdir (the session's demo assets, the downloads reused), two runs: runId v1 on the
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


# --------------------------------------------------------------------------- failures: trainer + JobSet + Job controller
# The reconciler (llm_finetune.local.operator_v2.JobSetReconciler) against pod statuses set by hand, on the
# failure policies the chart renders (job.restartPolicy, job.runPolicy.backoffLimit). End to end with real
# processes: tests/local/test_failures.py (the trainjob tests).
from llm_finetune.local.operator_v1 import PodStatus  # noqa: E402
from llm_finetune.local.operator_v2 import JobSetReconciler, pods as v2_pods  # noqa: E402


class Cluster:
    """The reconciler plus pods that do what a test says; deleted pods are gone at the next pass."""

    def __init__(self, helm: str, *sets: str):
        _, self.spec, _ = v2_pods(manifests(helm, *sets))
        self.rec = JobSetReconciler(self.spec)
        self.pods: dict[str, PodStatus] = {}
        self.created: list[str] = []
        self.now = 0.0

    def step(self, seconds: float = 1.0):
        self.now += seconds
        self.pods = {n: p for n, p in self.pods.items() if not p.deleting}  # deleted last pass: gone now
        actions = self.rec.reconcile(dict(self.pods), self.now)
        for name in actions.delete:
            self.pods[name].deleting = True
        for name, rjob, index in actions.create:
            assert name not in self.pods
            self.pods[name] = PodStatus(name, rjob, index, phase="Running")
            self.created.append(name)
        return actions

    def end(self, short: str, code: int = 0, *, container: str = "", init: bool = False, condition: str = ""):
        pod = self.pods[f"{self.spec.name}-{short}"]
        pod.phase = "Succeeded" if code == 0 and not condition else "Failed"
        codes = pod.init_exit_codes if init else pod.exit_codes
        codes[container or ("initializer" if short.startswith("init") or init else "node")] = code
        pod.conditions = (condition,) if condition else ()

    def running(self) -> list[str]:
        return sorted(n[len(self.spec.name) + 1:] for n, p in self.pods.items() if not p.deleting and p.phase == "Running")

    @property
    def condition(self):
        return self.rec.status.conditions[-1] if self.rec.status.conditions else None


def _to_nodes(c: Cluster) -> None:
    c.step()
    assert c.running() == ["init-0-0"]  # dependsOn: the node Job only once init completed
    c.end("init-0-0")
    c.step()
    assert c.running() == ["node-0-0", "node-0-1"]


def test_jobset_success_after_the_initializer_then_every_node(helm4):
    c = Cluster(helm4)
    _to_nodes(c)
    c.end("node-0-0")
    c.step()
    assert not c.rec.status.finished  # every index of the node Job must succeed
    c.end("node-0-1")
    c.step()
    assert (c.condition.type, c.condition.reason) == ("Complete", "AllJobsCompleted")
    assert c.rec.status.restarts == 0


@pytest.mark.parametrize("where", ["node-0-1", "init-0-0"])
def test_exit_code_1_to_127_fails_the_trainjob_at_once(helm4, where):
    """job.restartPolicy ExitCode: the Job's podFailurePolicy FailJob (reason PodFailurePolicy), the JobSet's
    rule PodFailurePolicy -> FailJobSet: no restart, whatever the backoffLimit."""
    c = Cluster(helm4)
    if where == "node-0-1":
        _to_nodes(c)
    else:
        c.step()
    c.end(where, 1)
    actions = c.step()
    rjob = where.split("-")[0]
    assert (c.condition.type, c.condition.reason) == ("Failed", "FailJobSetFailurePolicyAction")
    assert c.condition.message == f"applying FailJobSet failure policy action (first failed job: {c.spec.name}-{rjob}-0)"
    assert c.rec.jobs[rjob].condition.reason == "PodFailurePolicy"
    assert ("Container initializer" if rjob == "init" else "Container node") in c.rec.jobs[rjob].condition.message
    assert actions.delete == ([f"{c.spec.name}-node-0-0"] if rjob == "node" else [])  # the peer is stopped
    assert c.rec.status.restarts == 0 and not actions.create


def test_exit_code_128_and_over_restarts_the_whole_jobset_until_max_restarts(helm4):
    """RestartJobSet (no rule matches BackoffLimitExceeded): every Job deleted and recreated, the
    initializer first again; BlockingRecreate: nothing new while an old pod is still there;
    job.runPolicy.backoffLimit (2 here) restarts, then ReachedMaxRestarts."""
    c = Cluster(helm4, "job.runPolicy.backoffLimit=2")
    _to_nodes(c)
    for restart in (1, 2):
        c.end("node-0-0", 137)
        actions = c.step()
        assert c.rec.status.restarts == restart and not c.rec.status.finished
        assert sorted(actions.delete) == [f"{c.spec.name}-{p}" for p in ("init-0-0", "node-0-0", "node-0-1")]  # every Job
        assert not actions.create
        c.pods[f"{c.spec.name}-node-0-1"].deleting = False  # still shutting down (its checkpoint): blocks the recreate
        c.pods[f"{c.spec.name}-node-0-0"].deleting = True
        assert not c.step().create
        c.pods[f"{c.spec.name}-node-0-1"].deleting = True
        _to_nodes(c)  # gone: the initializer Job again, then the nodes
    c.end("node-0-1", 203)
    c.step()
    assert (c.condition.type, c.condition.reason) == ("Failed", "ReachedMaxRestarts")
    assert c.condition.message == f"jobset failed due to reaching max number of restarts (first failed job: {c.spec.name}-node-0)"
    assert [e.reason for e in c.rec.events] == ["RestartJobSetFailurePolicyAction", "ReachedMaxRestarts"]
    assert c.rec.events[0].count == 2
    assert c.created.count(f"{c.spec.name}-init-0-0") == 3


def test_a_disruption_is_ignored_the_pod_is_replaced_without_a_restart(helm4):
    """podFailurePolicy Ignore on DisruptionTarget (eviction, preemption, drain): not counted against
    backoffLimit 0, the index gets a new pod; the JobSet does not restart."""
    c = Cluster(helm4)
    _to_nodes(c)
    c.end("node-0-1", 143, condition="DisruptionTarget")
    assert c.step().delete == [f"{c.spec.name}-node-0-1"]
    c.step()
    assert c.running() == ["node-0-0", "node-0-1"] and c.rec.status.restarts == 0 and not c.rec.status.finished
    assert c.rec.jobs["node"].failures == 0


def test_perpod_initializer_exit_1_is_seen_in_the_init_container(helm4):
    """perPod: the initializer is an init container of each node pod; onExitCodes matches init containers too."""
    c = Cluster(helm4, "storage.mode=perPod", "storage.perPod.outputToClaim=false", "output.export.uri=s3://bucket-x/out")
    c.step()
    assert c.running() == ["node-0-0", "node-0-1"]
    c.end("node-0-0", 1, init=True)
    c.step()
    assert (c.condition.type, c.condition.reason) == ("Failed", "FailJobSetFailurePolicyAction")
    assert "Container initializer" in c.rec.jobs["node"].condition.message


@pytest.mark.parametrize("policy, code, outcome", [
    ("OnFailure", 1, "restart"),    # no FailJob rule: every failure restarts the JobSet
    ("Never", 137, "FailedJobs"),   # no failurePolicy: the first failed Job fails the JobSet
])
def test_other_restart_policies(helm4, policy, code, outcome):
    c = Cluster(helm4, f"job.restartPolicy={policy}")
    _to_nodes(c)
    c.end("node-0-0", code)
    c.step()
    if outcome == "restart":
        assert c.rec.status.restarts == 1 and not c.rec.status.finished
    else:
        assert (c.condition.type, c.condition.reason) == ("Failed", outcome)


def test_active_deadline_fails_the_trainjob_and_deletes_every_pod(helm4):
    c = Cluster(helm4, "job.runPolicy.activeDeadlineSeconds=60")
    _to_nodes(c)
    actions = c.step(60)
    assert (c.condition.type, c.condition.reason, c.condition.message) == (
        "Failed", "DeadlineExceeded", "TrainJob exceeded its active deadline")
    assert sorted(actions.delete) == [f"{c.spec.name}-{p}" for p in ("init-0-0", "node-0-0", "node-0-1")]  # the JobSet is deleted
