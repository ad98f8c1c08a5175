"""``llm-finetune run-local --runtime container``: the rendered pods as real containers from the built images.

The demo runs twice, as processes and as containers, and must end the same way; small pods
made for the purpose check what the kubelet would do with volumes and limits (fsGroup, read-only
configMap, tmpfs size, emptyDir eviction, OOM kill).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llm_finetune.local.containers import ENGINE_ENV, ContainerExecutor
from llm_finetune.local.plan import build_plan
from llm_finetune.local.runner import Runner, StepFailed

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "values-examples" / "local-demo.yaml"
LLM_FINETUNE = str(Path(sys.executable).parent / "llm-finetune")
SHORT = {"training": {"args": {"max_steps": 4, "save_steps": 2, "logging_steps": 1, "eval_steps": 2}},
         "data": {"maxSeqLength": 96, "maxTrainSamples": 64, "maxEvalSamples": 8}}
CLAIM = Path("claims") / "local-llm-finetune-workspace"
OUTPUT = CLAIM / "runs" / "local-llm-finetune-demo" / "output"


def image_sets(images: dict) -> list[str]:
    """Point the chart at the exact images this session built (localhost/llm-finetune-build/<name>:<hash>)."""
    out = []
    for name, info in images["images"].items():
        repo, tag = info["ref"].rsplit(":", 1)
        registry, repository = repo.split("/", 1)
        out += ["--set", f"images.{name}.registry={registry}", "--set", f"images.{name}.repository={repository}",
                "--set", f"images.{name}.tag={tag}"]
    return out


def run_local(tmp_path: Path, helm: str, workdir: str, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(SHORT))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_TOKEN", "LLM_FINETUNE_"))}
    env[ENGINE_ENV] = os.environ.get(ENGINE_ENV, "podman")  # the engine that holds the built images (conftest)
    env.update({"HELM_BIN": helm, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
                "LLM_FINETUNE_TERMINATION_LOG": str(tmp_path / f"{workdir}.termination-log")})
    started = time.monotonic()
    proc = subprocess.run([LLM_FINETUNE, "run-local", "--demo", "-f", str(DEMO), "-f", str(tmp_path / "short.yaml"),
                           "--workdir", str(tmp_path / workdir), *extra], env=env, capture_output=True, text=True,
                          timeout=1800)
    return proc, time.monotonic() - started


def summary(proc: subprocess.CompletedProcess, workdir: Path) -> list[str]:
    """The closing report, paths relative to the workdir and the eval losses cut to 2 decimals."""
    block = proc.stdout[proc.stdout.index("run-local finished"):].splitlines()
    block = block[:next((i for i, line in enumerate(block) if i and not line.startswith("  ")), len(block))]
    return [re.sub(r"(\d+\.\d\d)\d+", r"\1", line.replace(str(workdir), "WORKDIR")) for line in block]


def test_container_demo_ends_as_the_process_demo(images, engine, demo_assets, tmp_path, helm4):
    if demo_assets is not None and demo_assets.is_dir():  # built in the background while the suite ran (conftest.DemoAssets)
        shutil.copytree(demo_assets, tmp_path / "container" / "demo-assets")
    ctr, ctr_s = run_local(tmp_path, helm4, "container", "--runtime", "container", *image_sets(images))
    assert ctr.returncode == 0, (ctr.stdout + ctr.stderr)[-8000:]
    # the same deterministic demo assets (built once per workdir): the second run does not build them again
    shutil.copytree(tmp_path / "container" / "demo-assets", tmp_path / "process" / "demo-assets")
    proc, proc_s = run_local(tmp_path, helm4, "process")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]
    print(f"\ndemo wall time: containers {ctr_s:.0f}s, processes {proc_s:.0f}s")

    c_out, p_out = tmp_path / "container" / OUTPUT, tmp_path / "process" / OUTPUT
    # the adapter is on the claim, written by the pods' user with the fsGroup the kubelet gives the volume
    assert (c_out / "adapter_model.safetensors").is_file() and (c_out / "adapter_config.json").is_file()
    assert sorted(p.name for p in c_out.iterdir()) == sorted(p.name for p in p_out.iterdir())
    st = (c_out / "adapter_model.safetensors").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    c_manifest, p_manifest = (json.loads((d / "manifest.json").read_text()) for d in (c_out, p_out))
    for key in ("worldSize", "globalStep", "method", "baseModel"):
        assert c_manifest[key] == p_manifest[key], key
    assert c_manifest["worldSize"] == 2
    # the same report: same lines, same eval losses (same model, data, seed and torch build)
    assert summary(ctr, tmp_path / "container") == summary(proc, tmp_path / "process")
    for name in ("loss-curve.png", "samples.md"):
        assert (tmp_path / "container" / "results" / name).stat().st_size > 0
    # both pods ran their init container and trainer, as containers (a non-zero rank's trainer logs nothing)
    text = ctr.stdout + ctr.stderr
    assert "runtime container" in text and "[worker-0/pytorch]" in text
    for pod in ("worker-0", "worker-1"):
        assert f"[{pod}/storage-initializer]" in text
        for container in ("storage-initializer", "pytorch"):
            assert (tmp_path / "container" / "logs" / f"local-llm-finetune-demo-{pod}.{container}.log").is_file()
    from llm_finetune.local.containers import RUN_LABEL, workdir_key

    label = f"label={RUN_LABEL}={workdir_key(tmp_path / 'container')}"  # this run's only (other runs may be going on)
    left = subprocess.run([*engine, "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout.split()
    assert left == []  # nothing of the run keeps running or lingers


# ---------------------------------------------------------------------------
# Kubelet semantics on pods made for the purpose (one container each, the initializer image)
# ---------------------------------------------------------------------------
def small_job(image: str, script: str, *, memory: str = "256Mi") -> list[dict]:
    pod = {
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000, "runAsNonRoot": True,
                            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "pytorch", "image": image, "command": ["python3", "-c", script],
            "resources": {"limits": {"cpu": "1", "memory": memory}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"},
                             {"name": "config", "mountPath": "/etc/cfg", "readOnly": True},
                             {"name": "data", "mountPath": "/data"},
                             {"name": "scratch", "mountPath": "/scratch"}]}],
        "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": "claim"}},
                    {"name": "config", "configMap": {"name": "cfg"}},
                    {"name": "data", "emptyDir": {"sizeLimit": "1Mi"}},
                    {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "2Mi"}}]}
    return [{"kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": "v"}},
            {"kind": "PyTorchJob", "metadata": {"name": "probe", "namespace": "default"},
             "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": pod}}}}}]


PROBE = r"""
import json, os, time
out = {"groups": sorted(os.getgroups()), "scratch": os.statvfs("/scratch").f_blocks * os.statvfs("/scratch").f_bsize}
open("/workspace/made-by-pod", "w").write("x")
out["claim_gid"] = os.stat("/workspace/made-by-pod").st_gid
out["mounts"] = {f[1]: f[3].split(",") for f in (line.split() for line in open("/proc/self/mounts"))}
out["config_value"] = open("/etc/cfg/k").read()
print(json.dumps(out), flush=True)
with open("/data/big", "wb") as fh:  # 3 MiB into an emptyDir limited to 1Mi: the kubelet evicts the pod
    fh.write(os.urandom(3 << 20))
time.sleep(60)
"""


def test_volumes_get_the_kubelets_ownership_and_an_emptydir_over_its_limit_evicts(images, engine, tmp_path):
    plan = build_plan(small_job(images["images"]["initializer"]["ref"], PROBE), tmp_path / "w", local_env={},
                      master_port=1)
    out = []

    class Stream:
        def write(self, s):
            out.append(s)

        def flush(self):
            pass

    started = time.monotonic()
    with pytest.raises(StepFailed) as failed:
        Runner(plan, executor=ContainerExecutor(engine), stream=Stream()).run()
    assert time.monotonic() - started < 45  # evicted within seconds, not after the 60 s sleep
    assert failed.value.exit_code == 137
    assert "Evicted: Usage of EmptyDir volume 'data' exceeds the limit '1Mi'" in str(failed.value)
    probe = json.loads(next(line.split("] ", 1)[1] for line in "".join(out).splitlines() if '"groups"' in line))
    assert probe["groups"] == [1000, 2000]                  # runAsGroup + fsGroup
    assert probe["scratch"] == 2 << 20                      # memory emptyDir: a tmpfs of its sizeLimit
    assert probe["claim_gid"] == 2000                       # setgid claim folder of group fsGroup
    assert "ro" in probe["mounts"]["/etc/cfg"] and probe["config_value"] == "v"  # configMap: read-only
    assert "rw" in probe["mounts"]["/workspace"] and "ro" in probe["mounts"]["/"]
    claim = tmp_path / "w" / "claims" / "claim"
    assert claim.stat().st_gid == 2000 and claim.stat().st_mode & 0o2070 == 0o2070


def test_a_container_over_its_memory_limit_is_oom_killed(images, engine, tmp_path):
    script = "x = bytearray(512 << 20); x[::4096] = b'1' * len(x[::4096]); print('survived')"
    plan = build_plan(small_job(images["images"]["initializer"]["ref"], script, memory="64Mi"), tmp_path / "w",
                      local_env={}, master_port=1)
    with pytest.raises(StepFailed) as failed:
        Runner(plan, executor=ContainerExecutor(engine), stream=open(os.devnull, "w")).run()
    assert failed.value.exit_code == 137
    assert "OOMKilled: the container went over its memory limit of 64Mi" in str(failed.value)


# ---------------------------------------------------------------------------
# Nothing outlives run-local: SIGKILL of it stops and removes its containers (local/reaper.py)
# ---------------------------------------------------------------------------
DRIVER = r"""
import json, sys
from llm_finetune.local.containers import ContainerExecutor
from llm_finetune.local.plan import build_plan
from llm_finetune.local.runner import Runner
manifests, workdir, engine = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
Runner(build_plan(manifests, workdir, local_env={}, master_port=1), executor=ContainerExecutor(engine)).run()
"""

STUBBORN = r"""
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a trainer still saving its checkpoint
print("ready", flush=True)
time.sleep(600)
"""


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(c) for c in children] + [d for c in children for d in _descendants(int(c))]


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
                out.append(pid)
        except (OSError, IndexError):
            pass
    return out


def test_sigkill_of_run_local_stops_and_removes_its_containers_after_the_grace_period(images, engine, tmp_path):
    from llm_finetune.local.containers import RUN_LABEL, workdir_key

    job = small_job(images["images"]["initializer"]["ref"], STUBBORN)
    pod = job[1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    pod["terminationGracePeriodSeconds"] = 3
    pod["volumes"] = [v for v in pod["volumes"] if "emptyDir" not in v]
    pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"]
                                            if m["name"] in ("workspace", "config")]
    workdir = tmp_path / "w"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(job), str(workdir), json.dumps(engine)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in driver.stdout:
        lines.append(line)
        if "ready" in line:
            break
    assert driver.poll() is None, "".join(lines)
    label = ["--filter", f"label={RUN_LABEL}={workdir_key(workdir)}"]
    running = subprocess.run([*engine, "ps", "-q", *label], capture_output=True, text=True).stdout.split()
    assert len(running) == 1
    started = _descendants(driver.pid)  # the engine's client (and the reaper)
    assert started
    driver.kill()  # SIGKILL: run-local cleans up nothing itself
    driver.wait()
    killed_at = time.monotonic()
    while time.monotonic() - killed_at < 60:
        left = subprocess.run([*engine, "ps", "-aq", *label], capture_output=True, text=True).stdout.split()
        if not left and not _alive(started):
            break
        time.sleep(0.5)
    gone_after = time.monotonic() - killed_at
    assert not left, f"containers left after run-local was killed: {left}"
    assert not _alive(started), f"processes left: {_alive(started)}"
    # the container ignored SIGTERM: it was killed once the pod's 3 s grace period had passed, as the kubelet does
    assert 2.5 <= gone_after < 60
