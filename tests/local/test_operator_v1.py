"""The Training Operator v1.9 model run-local executes pods against (llm_finetune.local.operator_v1).

Each test states the upstream rule it checks (kubeflow/training-operator@v1.9.0); the model is
fed pod states the way the kubelet reports them, no processes run here.
"""

from __future__ import annotations

import threading

import pytest

from llm_finetune.local import operator_v1 as op


def job(*, workers=2, master=False, restart="ExitCode", backoff=3, clean="Running", deadline=None, elastic=None,
        nproc="1", port=None):
    container = {"name": "pytorch", **({"ports": [{"name": "pytorchjob-port", "containerPort": port}]} if port else {})}
    template = {"spec": {"containers": [container]}}
    specs = {}
    if master:
        specs["Master"] = {"replicas": 1, "restartPolicy": restart, "template": template}
    if workers:
        specs["Worker"] = {"replicas": workers, "restartPolicy": restart, "template": template}
    run = {"backoffLimit": backoff, "cleanPodPolicy": clean, "activeDeadlineSeconds": deadline}
    manifest = {"metadata": {"name": "j", "namespace": "ns"},
                "spec": {"pytorchReplicaSpecs": specs, "runPolicy": {k: v for k, v in run.items() if v is not None},
                         "nprocPerNode": nproc}}
    if elastic is not None:
        manifest["spec"]["elasticPolicy"] = elastic
    return op.JobSpec.from_manifest(manifest)


def pod(name, phase="Running", code=None, restarts=0, deleting=False):
    rtype, index = name.split("-")[1].capitalize(), int(name.rsplit("-", 1)[1])
    return op.PodStatus(name, rtype, index, phase=phase, pytorch_exit_code=code, restart_count=restarts, deleting=deleting)


def pods(*items):
    return {p.name: p for p in items}


def started(spec):
    r = op.Reconciler(spec)
    actions = r.reconcile({}, 0.0)
    assert [c[0] for c in actions.create] == [n for n, _, _ in spec.pod_names()]
    return r


def test_a_failed_init_container_leaves_0xbeef_and_the_pod_is_recreated_forever():
    """pod.go:339-373 + train_util.go:24: only the pytorch container's code counts; 0xbeef >= 128."""
    spec = job(workers=1, backoff=3)
    r = started(spec)
    for attempt in range(10):  # backoffLimit 3 never ends it: restart counts are 0 (pods have restartPolicy Never)
        actions = r.reconcile(pods(pod("j-worker-0", "Failed")), float(attempt))
        assert actions.delete == ["j-worker-0"] and r.status.state == "Restarting"
        assert r.reconcile({}, float(attempt)).create == [("j-worker-0", "Worker", 0)]
    assert not r.status.finished
    assert op.UNSET_EXIT_CODE == 48879 and op.is_retryable_exit_code(op.UNSET_EXIT_CODE)


@pytest.mark.parametrize("code", [1, 2, 127])
def test_a_permanent_exit_code_fails_the_job_and_clean_pod_policy_running_stops_the_others(code):
    r = started(job(workers=3))
    live = pods(pod("j-worker-0", "Failed", code), pod("j-worker-1"), pod("j-worker-2", "Pending"))
    actions = r.reconcile(live, 1.0)
    assert r.status.state == "Failed" and actions.delete == [] and actions.create == []
    assert r.status.message("Failed") == 'job "j" is failing because "Worker" replica(s) failed.'
    assert any(e.reason == "ExitedWithCode" and e.message == f"Pod: ns.j-worker-0 exited with code {code}" for e in r.events)
    # next pass: finished -> CleanUpResources: Running and Pending pods go, the failed one stays for its logs
    assert sorted(r.reconcile(live, 2.0).delete) == ["j-worker-1", "j-worker-2"]


@pytest.mark.parametrize("policy, deleted", [("None", []), ("All", ["j-worker-0", "j-worker-1"]), ("Running", ["j-worker-1"])])
def test_clean_pod_policy_decides_what_survives_a_finished_job(policy, deleted):
    """job.go:43-69: None deletes nothing (the operator's default), Running keeps finished pods."""
    r = started(job(workers=2, clean=policy))
    live = pods(pod("j-worker-0", "Failed", 1), pod("j-worker-1"))
    r.reconcile(live, 1.0)
    assert sorted(r.reconcile(live, 2.0).delete) == deleted


@pytest.mark.parametrize("code", [130, 137, 143, 202, 203])
def test_retryable_codes_recreate_the_pod_and_backoff_limit_never_counts_them(code):
    r = started(job(workers=2, backoff=1))
    for _ in range(5):
        actions = r.reconcile(pods(pod("j-worker-0", "Failed", code), pod("j-worker-1")), 1.0)
        assert actions.delete == ["j-worker-0"] and not r.status.finished
    assert any(e.reason == "PyTorchJobRestarting" for e in r.events)


def test_backoff_limit_zero_fails_the_job_at_the_first_failed_pod_and_deletes_every_pod():
    """job.go:192-214: NumRequeues is always 0 (FakeWorkQueue), so only backoffLimit 0 trips it."""
    r = started(job(workers=2, backoff=0))
    actions = r.reconcile(pods(pod("j-worker-0", "Failed", 143), pod("j-worker-1")), 1.0)
    assert r.status.state == "Failed" and "reached the specified backoff limit" in r.status.message("Failed")
    assert sorted(actions.delete) == ["j-worker-0", "j-worker-1"]


def test_on_failure_counts_restarts_of_running_pods_only():
    """core/job.go:95-133: an init container crash-looping keeps its pod Pending: never counted."""
    r = started(job(workers=1, restart="OnFailure", backoff=2))
    r.reconcile(pods(pod("j-worker-0", "Pending", restarts=50)), 1.0)
    assert not r.status.finished
    r.reconcile(pods(pod("j-worker-0", "Running", restarts=1)), 2.0)
    assert not r.status.finished
    actions = r.reconcile(pods(pod("j-worker-0", "Running", restarts=2)), 3.0)
    assert r.status.state == "Failed" and actions.delete == ["j-worker-0"]


def test_active_deadline_fails_the_job():
    r = started(job(workers=1, deadline=60))  # StartTime: the first status update (t=0)
    r.reconcile(pods(pod("j-worker-0")), 59.0)
    assert not r.status.finished
    actions = r.reconcile(pods(pod("j-worker-0")), 60.0)
    assert r.status.message("Failed") == "Job j has failed because it was active longer than specified deadline"
    assert actions.delete == ["j-worker-0"]


def test_never_fails_the_job_on_any_failed_pod():
    r = started(job(workers=2, restart="Never"))
    r.reconcile(pods(pod("j-worker-0", "Failed", 203), pod("j-worker-1")), 1.0)
    assert r.status.message("Failed") == "PyTorchJob j is failed because 1 Worker replica(s) failed."


def test_success_rules_with_and_without_a_master():
    """pytorchjob_controller.go:383-426."""
    r = started(job(workers=2))
    r.reconcile(pods(pod("j-worker-0", "Succeeded", 0), pod("j-worker-1")), 1.0)
    assert r.status.state == "Running"
    r.reconcile(pods(pod("j-worker-0", "Succeeded", 0), pod("j-worker-1", "Succeeded", 0)), 2.0)
    assert r.status.state == "Succeeded"
    r = started(job(workers=2, master=True))
    r.reconcile(pods(pod("j-master-0", "Succeeded", 0), pod("j-worker-0"), pod("j-worker-1")), 1.0)
    assert r.status.state == "Succeeded"
    r = started(job(workers=2, elastic={}))
    r.reconcile(pods(pod("j-worker-0", "Succeeded", 0), pod("j-worker-1")), 1.0)
    assert r.status.state == "Succeeded"


def test_conditions_follow_the_operator_set_condition_rules():
    """util/status.go:103-148: Failed is final; Running and Restarting replace each other."""
    s = op.JobStatus()
    s.set_condition("Running", "R", "running")
    s.set_condition("Restarting", "X", "restarting")
    assert [c.type for c in s.conditions] == ["Restarting"]
    s.set_condition("Running", "R", "running")
    s.set_condition("Failed", "F", "failed")
    assert [(c.type, c.status) for c in s.conditions] == [("Running", "False"), ("Failed", "True")]
    s.set_condition("Succeeded", "S", "done")
    assert s.state == "Failed"


def test_operator_env_with_a_master_without_one_and_with_elastic_policy():
    """envvar.go:43-127, master.go:33-61, elastic.go:68-196."""
    with_master = dict(op.operator_env(job(workers=2, master=True, nproc="4", port=29500), "Worker", 1))
    assert with_master == {"PYTHONUNBUFFERED": "1", "MASTER_PORT": "29500", "PET_MASTER_PORT": "29500",
                           "MASTER_ADDR": "j-master-0", "PET_MASTER_ADDR": "j-master-0", "WORLD_SIZE": "12",
                           "RANK": "2", "PET_NODE_RANK": "2", "PET_NPROC_PER_NODE": "4", "PET_NNODES": "3"}
    workers_only = dict(op.operator_env(job(workers=3, nproc="auto"), "Worker", 1))
    assert workers_only == {"PYTHONUNBUFFERED": "1", "PET_NPROC_PER_NODE": "auto", "PET_NNODES": "3"}
    elastic = dict(op.operator_env(job(workers=3, elastic={"minReplicas": 2, "maxRestarts": 5,
                                                           "rdzvConf": [{"key": "timeout", "value": "900"}]}), "Worker", 0))
    assert elastic["PET_RDZV_ENDPOINT"] == "j-worker-0:23456" and elastic["PET_RDZV_BACKEND"] == "c10d"
    assert (elastic["PET_NNODES"], elastic["PET_MAX_RESTARTS"], elastic["PET_RDZV_CONF"]) == ("2:2", "5", "timeout=900")
    assert "RANK" not in elastic and "MASTER_ADDR" not in elastic


def test_init_pytorch_is_injected_into_workers_only_when_a_master_exists():
    """initcontainer.go:116-134: alpine:3.10, nslookup the Master 100 times, no securityContext."""
    [c] = op.injected_init_containers(job(workers=2, master=True), "Worker")
    assert c["name"] == "init-pytorch" and c["image"] == "alpine:3.10" and "securityContext" not in c
    assert "nslookup j-master-0" in c["command"][2] and "seq 100" in c["command"][2]
    assert op.injected_init_containers(job(workers=2, master=True), "Master") == []
    assert op.injected_init_containers(job(workers=2), "Worker") == []
    assert op.pod_labels(job(workers=2), "Worker", 0)[op.LABEL_ROLE] == "master"  # IsMasterRole without a Master
    assert op.LABEL_ROLE not in op.pod_labels(job(workers=2, master=True), "Worker", 0)
    assert op.pod_restart_policy(job(workers=1).replicas["Worker"]) == "Never"


class FakePod:
    """A pod handle whose fate is scripted: the pytorch exit code of each creation."""

    def __init__(self, name, code):
        rtype, index = name.split("-")[1].capitalize(), int(name.rsplit("-", 1)[1])
        self.status = op.PodStatus(name, rtype, index, phase="Succeeded" if code == 0 else "Failed", pytorch_exit_code=code)
        self.ready = True
        self.gone = threading.Event()

    def delete(self, sig=None):
        self.status.deleting = True
        self.gone.set()


def test_the_loop_recreates_a_retried_pod_until_it_succeeds_and_counts_its_starts():
    fates = {"j-worker-0": [202, 137, 0], "j-worker-1": [0]}
    loop = op.OperatorLoop(job(workers=2), lambda name: FakePod(name, fates[name].pop(0)), poll=0.0)
    result = loop.run_until(threading.Event())
    assert result.state == "Succeeded"
    assert result.pods["j-worker-0"].starts == 3 and result.pods["j-worker-0"].exit_codes == [202, 137, 0]
    assert result.pods["j-worker-1"].starts == 1


def test_the_loop_stops_a_pod_the_operator_would_recreate_forever():
    loop = op.OperatorLoop(job(workers=1), lambda name: FakePod(name, None), max_pod_starts=4, poll=0.0)
    result = loop.run_until(threading.Event())
    assert result.pods["j-worker-0"].starts == 4 and result.state == "Restarting"
    assert "created 4 times; the operator would keep recreating it" in result.stopped
