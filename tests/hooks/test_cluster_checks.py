"""The preflight's checks of what the cluster's controllers will do (llm_finetune.hooks.cluster), and the
Events job pods post (llm_finetune.core.events), against the fake API with the Roles the chart renders."""

import pytest

from fixtures.render import render
from hooks.test_preflight import VALUES, healthy, hook, initializer_image  # noqa: F401 (fixtures)

JOB = "ft-llm-finetune"


def live_job(helm, values):
    """The PyTorchJob the chart renders for ``values``, as it would be live in the cluster."""
    return next(d for d in render(helm, values) if d["kind"] == "PyTorchJob")


def hook_bindings(helm, values):
    docs = render(helm, values)
    return {(d["kind"].lower() + "s", d["metadata"]["name"]) for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
            and (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "pre-install,pre-upgrade"}


def test_an_upgrade_of_the_same_run_with_the_same_values_passes(hook, kube_api, helm4):
    healthy(kube_api.cluster)
    kube_api.cluster.add_pytorchjob("ml", JOB, [("Running", "True", "")], manifest=live_job(helm4, VALUES))
    assert hook() == 0


@pytest.mark.parametrize("change, what", [
    ({"training": {"args": {"learning_rate": 0.001}}}, "different config (model, dataset, data, training"),
    ({"job": {"numWorkers": 3}}, "different job spec (pods, resources, images, run policy)"),
    ({"images": {"trainer": {"tag": "0.2.0"}}}, "different job spec"),
])
def test_changed_values_for_a_live_run_are_refused_and_the_hook_drops_its_permissions(hook, kube_api, helm4, termination_log,
                                                                                    change, what):
    """The v1.9 webhook makes nothing immutable: without this check the live job would be patched."""
    healthy(kube_api.cluster)
    kube_api.cluster.add_pytorchjob("ml", JOB, [("Running", "True", "")], manifest=live_job(helm4, VALUES))
    changed = {**VALUES, **{k: {**VALUES.get(k, {}), **v} for k, v in change.items()}}
    kube_api.cluster.rbac_objects |= hook_bindings(helm4, changed)
    assert hook(changed) == 1
    msg = termination_log.read_text()
    assert f"runId: PyTorchJob '{JOB}' (this release (no runId), Running) already exists with a {what}" in msg
    assert "set a new runId (--set runId=...)" in msg and f"delete pytorchjob {JOB}" in msg
    # Helm's hook-failed policy would only delete the Job: the check removed its own binding (no Secret access left)
    assert kube_api.cluster.rbac_objects == set()
    assert ("DELETE", f"/apis/rbac.authorization.k8s.io/v1/namespaces/ml/rolebindings/{JOB}-preflight") in kube_api.cluster.requests


@pytest.mark.parametrize("change, what", [
    (None, ""),
    ({"training": {"args": {"learning_rate": 0.001}}}, "different config (model, dataset, data, training"),
    ({"job": {"numWorkers": 3}}, "different job spec (pods, resources, images, run policy)"),
    ({"job": {"tmpSizeLimit": "20Gi"}}, "different job spec"),  # only the runtime changes: the TrainJob would run its snapshot
])
def test_a_live_trainjob_of_the_same_run_is_compared_too(hook, kube_api, helm4, termination_log, change, what):
    """backend trainjob: the same check on trainjobs/<job>, whose trainer is immutable and whose runtime is a snapshot."""
    from hooks.test_preflight import V2, trainer_cluster

    trainer_cluster(kube_api.cluster, helm4)
    live = next(d for d in render(helm4, V2) if d["kind"] == "TrainJob")
    kube_api.cluster.trainer[("trainjobs", "ml", JOB)] = {**live, "status": {"conditions": [
        {"type": "Suspended", "status": "False", "reason": "Resumed", "message": ""}]}}
    changed = {**V2, **{k: {**V2.get(k, {}), **v} for k, v in (change or {}).items()}}
    kube_api.cluster.rbac_objects |= hook_bindings(helm4, changed)
    assert hook(changed) == (1 if change else 0)
    if change:
        msg = termination_log.read_text()
        assert f"runId: TrainJob '{JOB}' (this release (no runId)) already exists with a {what}" in msg
        assert "immutable and it runs from its snapshot of the old runtime" in msg and f"delete trainjob {JOB}" in msg
        assert kube_api.cluster.rbac_objects == set()


def test_kueue_queue_must_exist_and_the_v0_19_default_is_a_warning(hook, kube_api, termination_log, caplog):
    healthy(kube_api.cluster)
    values = {**VALUES, "job": {**VALUES["job"], "queueName": "team-a"}}
    assert hook(values) == 1
    assert "job.queueName: LocalQueue 'team-a' not found in namespace 'ml' (or Kueue is not installed)" in termination_log.read_text()
    kube_api.cluster.localqueues.add(("ml", "team-a"))
    assert hook(values) == 0
    assert "Kueue >= v0.19 ignores the queue label of a PyTorchJob unless" in caplog.text


PERPOD = {**VALUES, "storage": {"existingClaim": "shared-data", "mode": "perPod"}, "job": {"numWorkers": 3}}


def test_a_master_topology_in_a_restricted_namespace_fails_naming_the_operator_flags(hook, kube_api, helm4, termination_log):
    healthy(kube_api.cluster)
    docs = render(helm4, PERPOD)
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert cluster_role["rules"][0] == {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["default"], "verbs": ["get"]}
    kube_api.cluster.cluster_rbac = [{**cluster_role["rules"][0], "resourceNames": ["ml"]}, *cluster_role["rules"][1:]]
    kube_api.cluster.namespaces["ml"] = {"pod-security.kubernetes.io/enforce": "restricted"}
    assert hook(PERPOD) == 1
    msg = termination_log.read_text()
    assert "namespace 'ml' enforces Pod Security \"restricted\"" in msg and "--pytorch-init-container-template-file" in msg
    kube_api.cluster.namespaces["ml"] = {"pod-security.kubernetes.io/enforce": "baseline"}
    assert hook(PERPOD) == 0


def test_without_a_master_there_is_no_pod_security_check_and_no_cluster_role(helm4):
    assert not [d for d in render(helm4, VALUES) if d["kind"].startswith("Cluster")]
    assert not [d for d in render(helm4, {**PERPOD, "preflight": {"podSecurityCheck": False}}) if d["kind"].startswith("Cluster")]


def test_a_failing_pod_posts_its_message_as_an_event_on_its_pytorchjob(kube_api, helm4, monkeypatch):
    """What `kubectl describe pytorchjob` lists: events whose involvedObject is the job, with its uid.
    The Role the chart binds to the job's ServiceAccount allows exactly that."""
    from llm_finetune.core import events

    docs = render(helm4, VALUES)
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == f"{JOB}-job"]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == f"{JOB}-job"]
    (sa,) = [d for d in docs if d["kind"] == "ServiceAccount" and not (d["metadata"].get("annotations") or {}).get("helm.sh/hook")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "default"}]
    pod = live_job(helm4, VALUES)["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"] and pod["automountServiceAccountToken"] is True
    kube_api.cluster.rbac = role["rules"]
    kube_api.cluster.add_pytorchjob("ml", JOB, [])
    monkeypatch.setenv(events.EVENTS_ENV, "true")
    monkeypatch.delenv(events.EVENTS_FILE_ENV, raising=False)
    monkeypatch.setenv("LLM_FINETUNE_POD_NAME", f"{JOB}-worker-0")
    assert events.report(JOB, "InitializerFailed", "initializer: model.uri: not found (exit 1, permanent: the job fails)")
    [event] = kube_api.cluster.events
    assert event["involvedObject"] == {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": JOB, "namespace": "ml",
                                       "uid": f"uid-{JOB}"}
    assert (event["type"], event["reason"], event["source"]) == ("Warning", "InitializerFailed",
                                                                 {"component": "llm-finetune", "host": f"{JOB}-worker-0"})
    # without the Role (or the API) nothing is raised: the exit code and termination log still tell
    kube_api.cluster.rbac = []
    assert events.report(JOB, "TrainerFailed", "x") is False
