"""run-local's plan is the rendered PyTorchJob: same commands, same env, the operator's env added.

Every assertion compares the plan with the manifests real Helm 3 and Helm 4 render, so a
change to the chart changes both sides (and a plan built by hand would fail).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.render import CHART

REPO = CHART.parent
from llm_finetune.core import helm as H
from llm_finetune.core.errors import UserError
from llm_finetune.local import operator_v1 as op
from llm_finetune.local.plan import build_plan

DEMO = REPO / "values-examples" / "local-demo.yaml"
SECRET_ENV = {"AWS_ACCESS_KEY_ID": "AKIA-test", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}


def manifests(helm: str, *sets: str, files=(DEMO,)) -> list[dict]:
    return H.load_manifests(H.template(H.find_chart(None), values_files=[str(f) for f in files], set_values=list(sets),
                                       release="local", helm=helm))


def plan_for(helm: str, tmp_path: Path, *sets: str, port: int = 29400):
    docs = manifests(helm, *sets)
    return docs, build_plan(docs, tmp_path / "work", local_env={"PATH": "/usr/bin", **SECRET_ENV}, master_port=port)


def rendered_pods(docs):
    """(pod name, replica type, index, pod spec) as the Training Operator creates them."""
    job = next(d for d in docs if d["kind"] == "PyTorchJob")
    name = job["metadata"]["name"]
    out = []
    for rtype in sorted(job["spec"]["pytorchReplicaSpecs"], key=lambda t: t != "Master"):
        spec = job["spec"]["pytorchReplicaSpecs"][rtype]
        for i in range(spec["replicas"]):
            out.append((f"{name}-{rtype.lower()}-{i}", rtype, i, spec["template"]["spec"]))
    return job, out


def test_plan_runs_exactly_the_rendered_containers(helm, tmp_path):
    docs, plan = plan_for(helm, tmp_path)
    job, pods = rendered_pods(docs)
    assert [p.name for p in plan.pods] == [p[0] for p in pods]
    for pod, (name, rtype, index, spec) in zip(plan.pods, pods):
        injected = op.injected_init_containers(plan.job, rtype)  # the operator's init-pytorch (Workers, with a Master)
        want = [(c["name"], True, c.get("command", []) + c.get("args", [])) for c in spec.get("initContainers", []) + injected]
        want += [(c["name"], False, c.get("command", []) + c.get("args", [])) for c in spec["containers"]]
        assert [(p.container, p.init, p.rendered_argv) for p in pod.processes] == want
        assert [p.builtin for p in pod.processes if p.init] == [""] * len(spec.get("initContainers", [])) + ["wait-for-master"] * len(injected)
        for proc, c in zip([p for p in pod.processes if not p.builtin], spec.get("initContainers", []) + spec["containers"]):
            # argv is the rendered argv with mount paths mapped to local folders, nothing else
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            for rendered, local in zip(proc.rendered_argv, proc.argv):
                if rendered.startswith("/etc/llm-finetune/"):
                    assert local.startswith(str(tmp_path / "work" / "configmaps")) and "/etc/llm-finetune" in mounts
                elif rendered.startswith("/tmp/"):  # the pod's own /tmp emptyDir
                    assert local.startswith(str(tmp_path / "work" / "pods" / name / "volumes" / "tmp")) and "/tmp" in mounts
                elif rendered != proc.rendered_argv[0]:
                    assert local == rendered
            assert Path(proc.argv[0]).name == proc.rendered_argv[0]
            # every literal env var of the container, path-mapped, and every secret from the local env
            operator = {} if proc.init else dict(op.operator_env(plan.job, rtype, index))  # appended: the operator's win
            for e in c.get("env", []):
                got = proc.env[e["name"]]
                if e["name"] in operator:
                    assert got == operator[e["name"]]
                elif "value" in e:
                    v = e["value"]
                    if e["name"] in ("PET_MASTER_ADDR", "PET_MASTER_PORT"):  # a Service name / the job's port, localized
                        assert (got, v) in (("127.0.0.1", f"{job['metadata']['name']}-worker-0"), ("29400", "23456"))
                    else:
                        assert got == v or (v.startswith("/") and got.startswith(str(tmp_path)))
                elif "secretKeyRef" in e.get("valueFrom", {}):
                    assert got == SECRET_ENV[e["name"]]
                elif "fieldRef" in e.get("valueFrom", {}):  # the downward API: name, namespace, the operator's labels
                    assert got in (name, "default", str(index))


def test_without_a_master_every_pod_is_a_worker_and_worker_0_is_the_rendezvous_host(helm, tmp_path):
    """Shared mode: Workers only, so the operator adds no init container and no MASTER_*/RANK env
    (training-operator@v1.9.0:pkg/controller.v1/pytorch/initcontainer.go:116-120, envvar.go:66-97);
    the chart's own static rendezvous env does it, each pod's rank is its replica-index label."""
    docs, plan = plan_for(helm, tmp_path, "job.numWorkers=3", "job.nprocPerNode=2", port=29411)
    assert [(p.replica_type, p.index) for p in plan.pods] == [("Worker", 0), ("Worker", 1), ("Worker", 2)]
    for pod in plan.pods:
        trainer = next(p for p in pod.processes if not p.init)
        assert [p.container for p in pod.processes if p.init] == ["storage-initializer"]
        e = trainer.env
        assert (e["PET_MASTER_ADDR"], e["PET_MASTER_PORT"], e["PET_NODE_RANK"]) == ("127.0.0.1", "29411", str(pod.index))
        assert (e["PET_NNODES"], e["PET_NPROC_PER_NODE"], e["PYTHONUNBUFFERED"]) == ("3", "2", "1")
        assert not {"MASTER_ADDR", "RANK", "WORLD_SIZE"} & set(e)
        assert e["LLM_FINETUNE_POD_NAME"] == pod.name and e["LLM_FINETUNE_POD_INDEX"] == str(pod.index)


def test_with_a_master_the_operator_sets_ranks_and_makes_workers_wait_for_it(helm, tmp_path):
    """perPod + the claim + several pods: Master + Workers, the operator's env and init-pytorch."""
    docs, plan = plan_for(helm, tmp_path, "storage.mode=perPod", "job.numWorkers=3", "job.nprocPerNode=2", port=29412)
    assert [(p.replica_type, p.index) for p in plan.pods] == [("Master", 0), ("Worker", 0), ("Worker", 1)]
    ranks = []
    for pod in plan.pods:
        trainer = next(p for p in pod.processes if not p.init)
        e = trainer.env
        assert (e["MASTER_ADDR"], e["MASTER_PORT"], e["PET_MASTER_ADDR"], e["PET_MASTER_PORT"]) == \
            ("127.0.0.1", "29412", "127.0.0.1", "29412")
        assert (e["WORLD_SIZE"], e["PET_NNODES"], e["PET_NPROC_PER_NODE"]) == ("6", "3", "2")
        assert e["RANK"] == e["PET_NODE_RANK"]
        ranks.append(int(e["RANK"]))
        inits = [p for p in pod.processes if p.init]
        assert all("RANK" not in p.env for p in inits)  # the operator sets the main containers only
        want = ["storage-initializer"] + (["init-pytorch"] if pod.replica_type == "Worker" else [])
        assert [p.container for p in inits] == want  # appended after the template's init containers
        assert [p.wait_for for p in inits if p.builtin] == ([f"{plan.job_name}-master-0"] if pod.replica_type == "Worker" else [])
    assert ranks == [0, 1, 2]


def test_changing_a_value_changes_the_manifests_and_the_plan_alike(helm, tmp_path):
    docs1, base = plan_for(helm, tmp_path)
    docs2, changed = plan_for(helm, tmp_path, "runId=second", "job.numWorkers=1", "job.terminationGracePeriodSeconds=60",
                              "job.env[0].name=EXTRA_FLAG", "job.env[0].value=on")
    job1, job2 = (next(d for d in docs if d["kind"] == "PyTorchJob") for docs in (docs1, docs2))
    assert job1["metadata"]["name"] != job2["metadata"]["name"]
    assert base.job_name == job1["metadata"]["name"] and changed.job_name == job2["metadata"]["name"]
    assert len(base.pods) == 2 and len(changed.pods) == 1
    trainer = next(p for p in changed.pods[0].processes if not p.init)
    assert trainer.env["EXTRA_FLAG"] == "on" and "EXTRA_FLAG" not in next(p for p in base.pods[0].processes if not p.init).env
    assert trainer.env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "50"
    # the config file the processes read is the rendered ConfigMap's data, byte for byte
    for docs, plan in ((docs1, base), (docs2, changed)):
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        assert Path(plan.config_file).read_text() == cm["data"]["config.yaml"]
        assert Path(plan.config_file).parent.name == cm["metadata"]["name"]
    assert yaml.safe_load(Path(base.config_file).read_text())["run"] != yaml.safe_load(Path(changed.config_file).read_text())["run"]


def test_volumes_map_to_shared_and_per_pod_folders(helm, tmp_path):
    _, plan = plan_for(helm, tmp_path, "storage.mode=perPod", "job.numWorkers=2")
    work = tmp_path / "work"
    maps = {p.name: dict(kv.split("=", 1) for kv in next(x for x in p.processes if not x.init).env["LLM_FINETUNE_PATH_MAP"].split(","))
            for p in plan.pods}
    master, worker = (maps[p.name] for p in plan.pods)
    # perPod: every pod its own /workspace; only the Master has the claim at /output
    assert master["/workspace"] != worker["/workspace"]
    assert all(m["/workspace"].startswith(str(work / "pods")) for m in (master, worker))
    assert master["/output"].startswith(str(work / "claims")) and "/output" not in worker
    assert master["/tmp"] != worker["/tmp"]


def test_missing_secret_env_is_a_user_error_naming_the_variables(helm, tmp_path):
    docs = manifests(helm)
    with pytest.raises(UserError) as err:
        build_plan(docs, tmp_path / "w", local_env={"PATH": "/usr/bin"})
    assert "AWS_ACCESS_KEY_ID (Secret demo-s3/AWS_ACCESS_KEY_ID)" in str(err.value)
    assert "export those variables" in str(err.value)


def test_dry_run_prints_the_plan_without_secret_values(tmp_path, helm4):
    env = {"PATH": "/usr/bin:/bin", "HELM_BIN": helm4, **SECRET_ENV,
           "LLM_FINETUNE_TERMINATION_LOG": str(tmp_path / "tlog")}
    proc = subprocess.run([sys.executable, "-m", "llm_finetune", "run-local", "-f", str(DEMO), "--workdir",
                           str(tmp_path / "w"), "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert [p["name"] for p in plan["pods"]] == ["local-llm-finetune-demo-worker-0", "local-llm-finetune-demo-worker-1"]
    assert "s3cr3t-value" not in proc.stdout + proc.stderr
    assert plan["pods"][0]["processes"][1]["env"]["AWS_SECRET_ACCESS_KEY"] == "***"
    assert not (tmp_path / "w" / "logs").exists()  # nothing ran
