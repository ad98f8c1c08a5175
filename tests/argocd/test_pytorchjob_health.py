"""The Argo CD health check for PyTorchJob, run by a real Lua 5.1 interpreter (lupa; Argo CD's gopher-lua is 5.1)."""

import pytest
import yaml

from . import lua_health

HERE = lua_health.SCRIPTS
SCRIPT = (HERE / "pytorchjob-health.lua").read_text()


def job(*conditions, replicas=None):
    status = {"conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions]}
    if replicas is not None:
        status["replicaStatuses"] = replicas
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "ft"}, "status": status}


CREATED = ("Created", "True", "PyTorchJobCreated", "PyTorchJob ft is created.")
RUNNING = ("Running", "True", "PyTorchJobRunning", "PyTorchJob ft is running.")
NOT_RUNNING = ("Running", "False", "PyTorchJobRunning", "PyTorchJob ft is running.")


@pytest.mark.parametrize("obj, status, words", [
    ({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "ft"}}, "Progressing", "Waiting for the training operator"),
    (job(), "Progressing", "Waiting for the training operator"),
    (job(CREATED), "Progressing", "Created: PyTorchJob ft is created."),
    (job(CREATED, RUNNING, replicas={"Worker": {"active": 3}, "Master": {"active": 1}}),
     "Progressing", "Running: PyTorchJob ft is running. (Master 1 active, Worker 3 active)"),
    (job(CREATED, NOT_RUNNING, ("Restarting", "True", "PyTorchJobRestarting", "PyTorchJob ft is restarting because 1 Worker replica(s) failed."),
         replicas={"Master": {"active": 1}, "Worker": {"active": 0, "failed": 1}}),
     "Progressing", "Restarting: PyTorchJob ft is restarting because 1 Worker replica(s) failed. (Master 1 active, Worker 1 failed)"),
    (job(CREATED, NOT_RUNNING, ("Succeeded", "True", "PyTorchJobSucceeded", "PyTorchJob ft is successfully completed."),
         replicas={"Master": {"succeeded": 1}}),
     "Healthy", "Succeeded: PyTorchJob ft is successfully completed. (Master 1 succeeded)"),
    (job(CREATED, NOT_RUNNING, ("Failed", "True", "PyTorchJobFailed", "PyTorchJob ft is failed because 1 Master replica(s) failed.")),
     "Degraded", "Failed: PyTorchJob ft is failed because 1 Master replica(s) failed."),
    # Failed wins over a stale Succeeded/Running, and a reason stands in for a missing message.
    (job(CREATED, RUNNING, ("Failed", "True", "BackoffLimitExceeded", "")), "Degraded", "Failed: BackoffLimitExceeded"),
    (job(CREATED, ("Suspended", "True", "PyTorchJobSuspended", "PyTorchJob ft is suspended.")), "Suspended", "Suspended: PyTorchJob ft is suspended."),
    # A condition with status False never counts.
    (job(CREATED, ("Failed", "False", "", "")), "Progressing", "Created:"),
    (job(("Succeeded", "True", None, None)), "Healthy", "Succeeded: the PyTorchJob completed"),
])
def test_health_of_sample_statuses(obj, status, words):
    hs = lua_health.health(SCRIPT, obj)
    assert hs["status"] == status
    assert words in hs["message"]


def test_argocd_cm_snippet_embeds_the_same_script():
    cm = yaml.safe_load((HERE / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"]["resource.customizations.health.kubeflow.org_PyTorchJob"] == SCRIPT
