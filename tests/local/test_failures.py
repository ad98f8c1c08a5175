"""Every failure class end to end through run-local, against the Training Operator v1.9 model.

Real parts: the chart rendered by Helm, SeaweedFS S3 (behind a fault proxy where a test needs an
outage), the Hugging Face Hub fixture, the initializer, torchrun and the trainer. What run-local
adds is what the cluster does (llm_finetune.local.operator_v1): pods created, failed, recreated
or not, the job's conditions and Events. Each test asserts the job's final state (what ``kubectl
get pytorchjob`` shows), how many times each pod was created, and the one-line message (the
Event ``kubectl describe pytorchjob`` shows, and run-local's termination message).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fixtures.render import CHART

pytestmark = pytest.mark.slow
REPO = CHART.parent
DEMO = REPO / "values-examples" / "local-demo.yaml"
LLM_FINETUNE = str(Path(sys.executable).parent / "llm-finetune")
BUCKET = "failures-demo"
JOB = "local-llm-finetune-demo"
POD0, POD1 = f"{JOB}-worker-0", f"{JOB}-worker-1"
# One pod, a few steps: the failure tests are about the lifecycle, not about training.
SHORT = {"training": {"args": {"max_steps": 4, "save_steps": 2, "logging_steps": 1, "eval_on_start": False,
                               "num_train_epochs": 1}},
         "data": {"maxSeqLength": 64, "maxTrainSamples": 64, "maxEvalSamples": 8},
         "job": {"numWorkers": 1}, "download": {"retries": 1, "retryBackoffSeconds": 0.05}}


@pytest.fixture(scope="module")
def bucket(s3_server, tiny_model_dir, demo_dataset_dir):
    """The session's tiny model and demo dataset in a bucket of the session's SeaweedFS."""
    server = s3_server
    if BUCKET not in {b["Name"] for b in server.client().list_buckets().get("Buckets", [])}:
        server.create_bucket(BUCKET)
    client = server.client()
    for prefix, folder in (("model", tiny_model_dir), ("dataset", demo_dataset_dir)):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return server


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_local(tmp_path: Path, helm: str, server, values: dict, *, endpoint: str | None = None, env: dict | None = None,
              wait: bool = True, timeout: float = 600):
    """run-local on the demo values pointed at ``endpoint`` (default: the S3 server), plus ``values``."""
    endpoint = endpoint or server.endpoint
    base = {"model": {"uri": f"s3://{BUCKET}/model", "s3": {"endpointUrl": endpoint}},
            "dataset": {"uri": f"s3://{BUCKET}/dataset", "s3": {"endpointUrl": endpoint}}}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(merge(merge(base, SHORT), values)))
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_TOKEN", "LLM_FINETUNE_", "HF_ENDPOINT"))}
    run_env.update({"HELM_BIN": helm, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **server.env(),
                    "LLM_FINETUNE_TERMINATION_LOG": str(tmp_path / "run-local.termination-log"), **(env or {})})
    argv = [LLM_FINETUNE, "run-local", "-f", str(DEMO), "-f", str(tmp_path / "values.yaml"), "--workdir",
            str(tmp_path / "work"), "--no-report", "--max-pod-starts", "6"]
    if not wait:
        return subprocess.Popen(argv, env=run_env, stdout=open(tmp_path / "out.log", "w"), stderr=subprocess.STDOUT)
    return subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=timeout)


def status(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "work" / "status.json").read_text())


def pod_events(st: dict) -> list[dict]:
    return [e for e in st["events"] if e["source"] == "llm-finetune"]


def assert_failed_once(proc, tmp_path: Path, *, reason: str, says: str) -> str:
    """A permanent error: the job Failed after one pod, the message in the Event and in run-local's exit."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    st = status(tmp_path)
    assert st["state"] == "Failed" and st["pods"][POD0]["starts"] == 1 and st["pods"][POD0]["exitCodes"] == [1], st
    assert st["conditions"][-1]["message"] == f'job "{JOB}" is failing because "Worker" replica(s) failed.'
    [event] = pod_events(st)
    assert event["reason"] == reason and event["type"] == "Warning" and says in event["message"], event
    assert event["message"].endswith("(exit 1, permanent: the job fails)")
    assert says in (tmp_path / "run-local.termination-log").read_text()
    assert f"PyTorchJob {JOB}: Failed" in out
    return event["message"]


def test_bad_model_uri_fails_the_job_at_once_with_the_initializers_message(tmp_path, helm4, bucket, hf_hub):
    proc = run_local(tmp_path, helm4, bucket, {"model": {"uri": "hf://no-org/no-such-model"}},
                     env={"HF_ENDPOINT": hf_hub.endpoint})
    message = assert_failed_once(proc, tmp_path, reason="InitializerFailed", says="model.uri")
    assert "no-org/no-such-model" in message and message.startswith(f"{POD0}: initializer: ")


def test_gated_model_without_a_token_is_401_and_fails_the_job_at_once(tmp_path, helm4, bucket, hf_hub, tiny_model_dir):
    hf_hub.add_model_repo("org/gated-tiny", tiny_model_dir, gated_token="hf_failures_test_token")
    proc = run_local(tmp_path, helm4, bucket, {"model": {"uri": "hf://org/gated-tiny"}}, env={"HF_ENDPOINT": hf_hub.endpoint})
    message = assert_failed_once(proc, tmp_path, reason="InitializerFailed", says="model.uri")
    assert "401" in message or "gated" in message.lower(), message


def test_missing_bucket_fails_the_job_at_once(tmp_path, helm4, bucket):
    proc = run_local(tmp_path, helm4, bucket, {"dataset": {"uri": "s3://no-such-bucket-14/data"}})
    message = assert_failed_once(proc, tmp_path, reason="InitializerFailed", says="dataset.uri")
    assert "no-such-bucket-14" in message


def test_unwritable_volume_fails_the_job_at_once_naming_fsgroup(tmp_path, helm4, bucket):
    """A ReadWriteMany volume whose driver ignored fsGroup: its root is not writable by the pod's user."""
    claim = tmp_path / "work" / "claims" / "local-llm-finetune-workspace"
    claim.mkdir(parents=True)
    if os.geteuid() == 0:  # root writes through modes: make the folder immutable instead (EPERM for root too)
        if subprocess.run(["chattr", "+i", str(claim)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported here (needed to make a folder unwritable for root)")
    else:
        claim.chmod(0o555)
    try:
        proc = run_local(tmp_path, helm4, bucket, {})
    finally:
        subprocess.run(["chattr", "-i", str(claim)], capture_output=True)
        claim.chmod(0o755)
    message = assert_failed_once(proc, tmp_path, reason="InitializerFailed", says="not writable by this pod")
    assert "fsGroup" in message and "uid" in message


def test_a_transient_s3_outage_is_retried_by_a_new_pod_and_the_job_succeeds(tmp_path, helm4, bucket):
    """download.retries=1: the first pod's two list requests fail (503), it exits 202 through the
    pytorch container, the operator recreates it, the second pod finds S3 back and trains."""
    from initializer.faultproxy import FaultProxy

    with FaultProxy(bucket.endpoint, outage=2) as proxy:
        proc = run_local(tmp_path, helm4, bucket, {}, endpoint=proxy.endpoint)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    st = status(tmp_path)
    assert st["state"] == "Succeeded" and st["pods"][POD0]["starts"] == 2 and st["pods"][POD0]["exitCodes"] == [202, 0], st
    assert proxy.faults["outage"] == 2
    [event] = pod_events(st)
    assert event["reason"] == "InitializerFailed" and "(exit 202, retried: the pod is recreated)" in event["message"]
    assert any(e["reason"] == "PyTorchJobRestarting" for e in st["events"])
    output = tmp_path / "work" / "claims" / "local-llm-finetune-workspace" / "runs" / JOB / "output"
    assert json.loads((output / "manifest.json").read_text())["globalStep"] == 4


def test_an_outage_longer_than_the_backoff_limit_gives_up_after_bounded_attempts(tmp_path, helm4, bucket):
    """The operator would recreate the pod forever (202 >= 128); the attempt ledger on the claim stops
    it after job.runPolicy.backoffLimit retries: the last attempt exits 1 with 'gave up'."""
    from initializer.faultproxy import FaultProxy

    with FaultProxy(bucket.endpoint, outage=10_000) as proxy:
        proc = run_local(tmp_path, helm4, bucket, {"job": {"runPolicy": {"backoffLimit": 1}}}, endpoint=proxy.endpoint)
    st = status(tmp_path)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-4000:]
    assert st["state"] == "Failed" and st["pods"][POD0]["starts"] == 2 and st["pods"][POD0]["exitCodes"] == [202, 1], st
    retried, gave_up = pod_events(st)
    assert retried["reason"] == "InitializerFailed" and "(exit 202, retried" in retried["message"]
    assert gave_up["reason"] == "GaveUp" and "gave up after 2 attempt(s) of this pod without a new checkpoint " \
        "(job.runPolicy.backoffLimit=1); last failure: initializer: " in gave_up["message"]
    assert "gave up after 2 attempt(s)" in (tmp_path / "run-local.termination-log").read_text()


def _pids(tmp_path: Path, pod: str, *, trainer: bool) -> list[int]:
    """Processes of a local pod of this test's run-local (their termination logs lie in the pod's folder):
    its launcher (trainer=False) or its torchrun worker processes."""
    folder = str(tmp_path / "work" / "pods" / pod) + "/"
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = dict(kv.split("=", 1) for kv in environ.read_bytes().decode(errors="replace").split("\0") if "=" in kv)
            cmd = (environ.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not env.get("LLM_FINETUNE_TERMINATION_LOG", "").startswith(folder):
            continue
        if trainer and "LOCAL_RANK" in env and b"train" in cmd:
            found.append(int(environ.parent.name))
        elif not trainer and b"launch" in cmd and "LOCAL_RANK" not in env:
            found.append(int(environ.parent.name))
    return found


def _after_first_checkpoint(tmp_path: Path, proc, pod: str, *, trainer: bool) -> list[int]:
    checkpoints = tmp_path / "work" / "claims" / "local-llm-finetune-workspace" / "runs" / JOB / "checkpoints"
    deadline = time.monotonic() + 400
    while not (checkpoints.is_dir() and any((c / ".llm-finetune-complete.json").exists() for c in checkpoints.iterdir())):
        assert proc.poll() is None, (tmp_path / "out.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.1)
    pids = _pids(tmp_path, pod, trainer=trainer)
    assert pids, f"no {'trainer' if trainer else 'launch'} process of {pod}"
    return pids


LONGER = {"training": {"args": {"max_steps": 30, "save_steps": 3}}}


def _finished(tmp_path: Path, proc) -> dict:
    assert proc.wait(600) == 0, (tmp_path / "out.log").read_text()[-6000:]
    output = tmp_path / "work" / "claims" / "local-llm-finetune-workspace" / "runs" / JOB / "output"
    assert json.loads((output / "manifest.json").read_text())["globalStep"] == 30
    return status(tmp_path)


def test_a_worker_killed_with_sigkill_137_is_recreated_and_the_job_resumes(tmp_path, helm4, bucket):
    """Two pods. SIGKILL (the OOM killer) takes worker-1's trainer process: its pod exits 137, the
    peer on worker-0 loses its collective and exits >= 128 too; both pods are recreated and resume."""
    proc = run_local(tmp_path, helm4, bucket, merge(LONGER, {"job": {"numWorkers": 2}}), wait=False)
    for pid in _after_first_checkpoint(tmp_path, proc, POD1, trainer=True):
        os.kill(pid, signal.SIGKILL)
    st = _finished(tmp_path, proc)
    assert st["state"] == "Succeeded", st
    assert st["pods"][POD1]["starts"] == 2 and st["pods"][POD1]["exitCodes"] == [137, 0], st
    assert st["pods"][POD0]["starts"] == 2 and st["pods"][POD0]["exitCodes"][0] >= 128, st
    assert any("(exit 137, retried: the pod is recreated)" in e["message"] for e in pod_events(st))
    log = (tmp_path / "out.log").read_text()
    assert "resuming from" in log.lower() and "checkpoint-" in log


def test_sigterm_143_saves_a_checkpoint_and_the_recreated_pod_resumes(tmp_path, helm4, bucket):
    """The kubelet's SIGTERM (preemption, drain) reaches the launcher: the trainer saves a checkpoint,
    the pod exits 143 (retried), the new pod resumes from it and the job succeeds."""
    proc = run_local(tmp_path, helm4, bucket, LONGER, wait=False)
    for pid in _after_first_checkpoint(tmp_path, proc, POD0, trainer=False):
        os.kill(pid, signal.SIGTERM)
    st = _finished(tmp_path, proc)
    assert st["state"] == "Succeeded" and st["pods"][POD0]["starts"] == 2 and st["pods"][POD0]["exitCodes"] == [143, 0], st
    assert any("(exit 143, retried: the pod is recreated)" in e["message"] for e in pod_events(st))
    assert "resuming from" in (tmp_path / "out.log").read_text().lower()


# --------------------------------------------------------------------------- backend: trainjob
# The same failure classes on the Trainer v2 backend, against run-local's trainer + JobSet + Job controller
# model (llm_finetune.local.operator_v2): the initializer is its own Job (init) before the node Job; exit
# codes 1-127 fail the TrainJob at once (podFailurePolicy FailJob -> JobSet rule FailJobSet), others restart
# the whole JobSet (RestartJobSet) up to job.runPolicy.backoffLimit (maxRestarts). No attempt ledger and no
# pod Events on this backend: JobSet counts the restarts itself.
V2 = {"backend": "trainjob"}
INIT, NODE0 = f"{JOB}-init-0-0", f"{JOB}-node-0-0"


def test_trainjob_missing_bucket_fails_at_once_in_the_initializer_job(tmp_path, helm4, bucket):
    proc = run_local(tmp_path, helm4, bucket, {**V2, "dataset": {"uri": "s3://no-such-bucket-13/data"}})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    st = status(tmp_path)
    assert st["state"] == "Failed" and st["restarts"] == 0, st
    assert st["conditions"][-1]["reason"] == "FailJobSetFailurePolicyAction"
    assert st["pods"][INIT]["starts"] == 1 and st["pods"][INIT]["exitCodes"] == [1], st
    assert st["pods"][NODE0]["starts"] == 0  # dependsOn: the node Job is never created
    assert not [e for e in st["events"] if e["source"] == "llm-finetune"]  # no pod Events on v2
    assert "no-such-bucket-13" in (tmp_path / "run-local.termination-log").read_text()
    assert f"TrainJob {JOB}: Failed" in out


def test_trainjob_outage_restarts_the_jobset_until_max_restarts(tmp_path, helm4, bucket):
    """202 (retried): the JobSet is recreated, job.runPolicy.backoffLimit times, then ReachedMaxRestarts."""
    from initializer.faultproxy import FaultProxy

    with FaultProxy(bucket.endpoint, outage=10_000) as proxy:
        proc = run_local(tmp_path, helm4, bucket, {**V2, "job": {"runPolicy": {"backoffLimit": 1}}}, endpoint=proxy.endpoint)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 202, out[-4000:]
    st = status(tmp_path)
    assert st["state"] == "Failed" and st["conditions"][-1]["reason"] == "ReachedMaxRestarts" and st["restarts"] == 1, st
    assert st["pods"][INIT]["starts"] == 2 and st["pods"][INIT]["exitCodes"] == [202, 202], st
    assert [e["reason"] for e in st["events"]] == ["RestartJobSetFailurePolicyAction", "ReachedMaxRestarts"]
    assert "JobSet restarts: 1 (DefaultFailurePolicy)" in out


def test_trainjob_sigterm_143_restarts_the_jobset_and_the_node_resumes(tmp_path, helm4, bucket):
    """The kubelet's SIGTERM reaches node-0's launcher after a checkpoint: exit 143, RestartJobSet (the
    initializer Job runs again and finds everything in place), the new node pod resumes; Complete."""
    proc = run_local(tmp_path, helm4, bucket, {**V2, "training": {"args": {"max_steps": 8, "save_steps": 2}}}, wait=False)
    for pid in _after_first_checkpoint(tmp_path, proc, NODE0, trainer=False):
        os.kill(pid, signal.SIGTERM)
    assert proc.wait(600) == 0, (tmp_path / "out.log").read_text()[-6000:]
    output = tmp_path / "work" / "claims" / "local-llm-finetune-workspace" / "runs" / JOB / "output"
    assert json.loads((output / "manifest.json").read_text())["globalStep"] == 8
    st = status(tmp_path)
    assert st["state"] == "Complete" and st["restarts"] == 1, st
    assert st["pods"][NODE0]["exitCodes"] == [143, 0] and st["pods"][INIT]["exitCodes"] == [0, 0], st
    assert "resuming from" in (tmp_path / "out.log").read_text().lower()
