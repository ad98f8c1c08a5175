"""The Argo CD health check for TrainJob, run by a real Lua 5.1 interpreter (lupa; Argo CD's gopher-lua is 5.1).

Statuses are shaped as kubeflow/trainer v2.3.0 writes them: conditions Complete / Failed (copied
from the JobSet, pkg/runtime/framework/plugins/jobset/jobset.go Status) and Suspended
(True/Suspended or False/Resumed), and jobsStatus per replicated job.
"""

import pytest
import yaml

from . import lua_health

HERE = lua_health.SCRIPTS
SCRIPT = (HERE / "trainjob-health.lua").read_text()


def job(*conditions, jobs=None):
    status = {"conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions]}
    if jobs is not None:
        status["jobsStatus"] = [{"name": n, "ready": 0, "succeeded": 0, "failed": 0, "active": 0, "suspended": 0, **c}
                                for n, c in jobs]
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "ft"}, "status": status}


SUSPENDED = ("Suspended", "True", "Suspended", "TrainJob is suspended")
RESUMED = ("Suspended", "False", "Resumed", "TrainJob is resumed")
COMPLETE = ("Complete", "True", "AllJobsCompleted", "jobset completed successfully")
FAILED = ("Failed", "True", "FailJobSetActionReason", "applying FailJobSet failure policy action (first failed job: ft-node-0)")


@pytest.mark.parametrize("obj, status, words", [
    ({"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "ft"}}, "Progressing", "Waiting for the trainer"),
    (job(), "Progressing", "Waiting for the trainer"),
    (job(jobs=[("init", {"active": 1}), ("node", {})]), "Progressing", "Running (init 1 active)"),
    (job(RESUMED, jobs=[("init", {"succeeded": 1}), ("node", {"active": 2, "ready": 2})]),
     "Progressing", "Running (init 1 succeeded, node 2 active 2 ready)"),
    (job(COMPLETE, jobs=[("init", {"succeeded": 1}), ("node", {"succeeded": 1})]),
     "Healthy", "Complete: jobset completed successfully (init 1 succeeded, node 1 succeeded)"),
    (job(FAILED, jobs=[("init", {"succeeded": 1}), ("node", {"failed": 1})]),
     "Degraded", "Failed: applying FailJobSet failure policy action (first failed job: ft-node-0) (init 1 succeeded, node 1 failed)"),
    (job(("Failed", "True", "DeadlineExceeded", "")), "Degraded", "Failed: DeadlineExceeded"),
    (job(("Failed", "True", None, None)), "Degraded", "Failed: the TrainJob failed"),
    # Kueue suspends a TrainJob until it is admitted
    (job(SUSPENDED, jobs=[("init", {"suspended": 1}), ("node", {"suspended": 1})]),
     "Suspended", "Suspended: TrainJob is suspended (init 1 suspended, node 1 suspended)"),
    # Failed wins over a stale Complete; a condition with status False never counts
    (job(COMPLETE, FAILED), "Degraded", "Failed:"),
    (job(("Failed", "False", "", "")), "Progressing", "Waiting for the trainer"),
])
def test_health_of_sample_statuses(obj, status, words):
    hs = lua_health.health(SCRIPT, obj)
    assert hs["status"] == status
    assert words in hs["message"]


def test_argocd_cm_snippet_embeds_the_same_script():
    cm = yaml.safe_load((HERE / "argocd-cm.yaml").read_text())
    assert cm["data"]["resource.customizations.health.trainer.kubeflow.org_TrainJob"] == SCRIPT
