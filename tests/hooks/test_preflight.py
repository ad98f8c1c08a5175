"""The preflight hook against a fake Kubernetes API (tests/hooks/kubeapi.py), with the env, config and
Role the chart renders for its hook Job."""

import pytest
import yaml

from fixtures.render import find, render
from llm_finetune.cli import main

SECRET_VALUE = "hf_s3cr3t_value_never_logged"
VALUES = {
    "secrets": {"hf": {"existingSecret": "hf-token"}, "s3": {"existingSecret": "s3-creds", "sessionTokenKey": "AWS_SESSION_TOKEN"}},
    "storage": {"existingClaim": "shared-data"},
    "job": {"numWorkers": 2},
    "dataset": {"uri": "s3://datasets/chat"},
}


def hook_objects(helm, values):
    docs = render(helm, values)
    hook = [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "pre-install,pre-upgrade"]
    job = [d for d in hook if d["kind"] == "Job"][0]
    (cm,) = [d for d in hook if d["kind"] == "ConfigMap"]
    (role,) = [d for d in hook if d["kind"] == "Role"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"] if "value" in e}
    return container, env, cm["data"]["config.yaml"], role["rules"]


@pytest.fixture(autouse=True)
def initializer_image(monkeypatch):
    """The hook runs in the initializer image: no transformers/trl/peft there."""
    import sys

    for name in ("trl", "transformers", "peft"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def hook(helm4, kube_api, tmp_path, monkeypatch):
    """Run `llm-finetune preflight` exactly as the rendered hook Job would, against the fake API."""

    def run(values=VALUES, rbac=True):
        container, env, config_text, rules = hook_objects(helm4, values)
        assert container["command"][:2] == ["llm-finetune", "preflight"]
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        config = tmp_path / "config.yaml"
        config.write_text(config_text)
        kube_api.cluster.rbac = rules if rbac else None
        args = container["command"][1:]
        args[args.index("--config") + 1] = str(config)
        return main(args)

    return run


def healthy(cluster):
    cluster.add_secret("ml", "hf-token", {"token": SECRET_VALUE})
    cluster.add_secret("ml", "s3-creds", {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": SECRET_VALUE, "AWS_SESSION_TOKEN": "tok"})
    cluster.add_pvc("ml", "shared-data", modes=("ReadWriteMany",))


def test_all_good(hook, kube_api, termination_log, caplog):
    healthy(kube_api.cluster)
    assert hook() == 0
    assert not termination_log.exists()
    # Only the reads the Role allows (it is enforced by the fixture) plus discovery.
    assert sorted(set(kube_api.cluster.requests)) == sorted({
        ("GET", "/apis/kubeflow.org/v1"),
        ("GET", "/api/v1/namespaces/ml/secrets/hf-token"),
        ("GET", "/api/v1/namespaces/ml/secrets/s3-creds"),
        ("GET", "/api/v1/namespaces/ml/persistentvolumeclaims/shared-data"),
        ("GET", "/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs/ft-llm-finetune"),  # not there yet: a new run
    })
    assert "preflight passed" in caplog.text
    assert "not checked" not in caplog.text  # training.args/lora checked with the shipped field lists
    assert SECRET_VALUE not in caplog.text


def test_crd_not_served(hook, kube_api, termination_log):
    healthy(kube_api.cluster)
    kube_api.cluster.served = {}
    assert hook() == 1
    msg = termination_log.read_text()
    assert msg.startswith("preflight: 1 problem(s): the API kubeflow.org/v1 is not served")
    assert "install the Kubeflow Training Operator v1" in msg


def test_group_served_without_pytorchjobs(hook, kube_api, termination_log):
    healthy(kube_api.cluster)
    kube_api.cluster.served = {"kubeflow.org/v1": ["tfjobs", "tfjobs/status"]}
    assert hook() == 1
    assert "has no pytorchjobs (it has: tfjobs, tfjobs/status)" in termination_log.read_text()


def test_missing_secret_and_missing_key_reported_together(hook, kube_api, termination_log, caplog):
    healthy(kube_api.cluster)
    del kube_api.cluster.secrets[("ml", "hf-token")]
    kube_api.cluster.add_secret("ml", "s3-creds", {"AWS_ACCESS_KEY_ID": "AKIA", "aws_secret": SECRET_VALUE})
    assert hook() == 1
    msg = termination_log.read_text()
    assert "preflight: 3 problem(s)" in msg
    assert "Secret 'hf-token' not found in namespace 'ml'" in msg and "create secret generic hf-token --from-literal=token=" in msg
    assert "Secret 's3-creds' has no key 'AWS_SECRET_ACCESS_KEY' (its keys: AWS_ACCESS_KEY_ID, aws_secret)" in msg
    assert "Secret 's3-creds' has no key 'AWS_SESSION_TOKEN'" in msg
    assert SECRET_VALUE not in msg + caplog.text


def test_forbidden_names_the_missing_rbac(hook, kube_api, termination_log):
    healthy(kube_api.cluster)
    # A Role without the secrets rule (e.g. edited by hand): the API answers 403.
    assert hook(rbac=True) == 0
    kube_api.cluster.rbac = [r for r in kube_api.cluster.rbac if "secrets" not in r["resources"]]
    from llm_finetune.hooks.preflight import Request, check_secrets
    from llm_finetune.core.kube import Kube

    problems = check_secrets(Kube(), Request.from_env())
    assert [p.message for p in problems] == ["reading Secret 'hf-token' is forbidden", "reading Secret 's3-creds' is forbidden"]
    assert "get on secrets with resourceNames [hf-token]" in problems[0].hint


def test_claim_missing(hook, kube_api, termination_log):
    healthy(kube_api.cluster)
    kube_api.cluster.pvcs.clear()
    assert hook() == 1
    assert "storage.existingClaim: PersistentVolumeClaim 'shared-data' not found in namespace 'ml'" in termination_log.read_text()


def test_claim_access_modes_must_fit_shared_mode(hook, kube_api, termination_log):
    healthy(kube_api.cluster)
    kube_api.cluster.add_pvc("ml", "shared-data", modes=("ReadWriteOnce",))
    assert hook() == 1
    msg = termination_log.read_text()
    assert "storage.existingClaim: claim 'shared-data' has access modes ['ReadWriteOnce']: 2 pods" in msg
    assert "storage.mode=perPod" in msg
    # the v1 SDK's default (read-only Workers) is refused too: every pod mounts the claim read-write,
    # and aws-ebs-csi-driver / local-path-provisioner refuse ReadOnlyMany
    kube_api.cluster.add_pvc("ml", "shared-data", modes=("ReadWriteOnce", "ReadOnlyMany"))
    assert hook() == 1
    assert "has access modes ['ReadWriteOnce', 'ReadOnlyMany']: 2 pods on different nodes mount it read-write" \
        in termination_log.read_text()
    # The same claim is fine for one pod, and for perPod mode (mounted on the Master only).
    assert hook({**VALUES, "job": {"numWorkers": 1}}) == 0
    assert hook({**VALUES, "storage": {"existingClaim": "shared-data", "mode": "perPod"}}) == 0


@pytest.mark.parametrize("binding, sc_rbac, code, words", [
    ("WaitForFirstConsumer", True, 0, "Pending until its first pod"),
    ("Immediate", True, 1, "binds immediately: no volume could be provisioned"),
    ("Immediate", False, 0, "cannot read StorageClass 'standard'"),
])
def test_pending_claim(hook, kube_api, termination_log, caplog, binding, sc_rbac, code, words):
    healthy(kube_api.cluster)
    kube_api.cluster.add_pvc("ml", "shared-data", phase="Pending", modes=("ReadWriteMany",))
    kube_api.cluster.add_storageclass("standard", binding)
    if sc_rbac:
        kube_api.cluster.cluster_rbac = [{"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get"]}]
    assert hook() == code
    assert words in caplog.text + (termination_log.read_text() if termination_log.exists() else "")


def test_config_problems_and_cluster_problems_at_once(hook, kube_api, termination_log, helm4, tmp_path, monkeypatch):
    healthy(kube_api.cluster)
    kube_api.cluster.served = {}
    container, env, config_text, rules = hook_objects(helm4, VALUES)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = yaml.safe_load(config_text)
    config["training"]["method"] = "prefix-tuning"
    config["model"]["uri"] = "gs://bucket/model"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["preflight", "--config", str(path)]) == 1
    msg = termination_log.read_text()
    assert "training.method: 'prefix-tuning' is not allowed" in msg
    assert "model.uri: unsupported source 'gs://'" in msg
    assert "kubeflow.org/v1 is not served" in msg


def test_unreachable_api_is_an_external_error(hook, kube_api, termination_log):
    healthy(kube_api.cluster)
    kube_api.cluster.fail_with = 503
    assert hook() == 202
    msg = termination_log.read_text()
    assert "the Kubernetes API failed after 3 attempts (HTTP 503" in msg


def test_bad_env_contract(kube_api, tmp_path, monkeypatch, termination_log):
    monkeypatch.setenv("PREFLIGHT_SECRETS", "hf-token")
    assert main(["preflight", "--config", str(tmp_path / "none.yaml")]) == 1
    assert "PREFLIGHT_SECRETS: bad entry 'hf-token'" in termination_log.read_text()


def test_rendered_hook_env_is_the_contract(helm4):
    """The chart sets exactly the variables the hook reads, from values, with names only."""
    container, env, _, rules = hook_objects(helm4, VALUES)
    assert env["PREFLIGHT_SECRETS"] == "hf-token:token,s3-creds:AWS_ACCESS_KEY_ID,s3-creds:AWS_SECRET_ACCESS_KEY,s3-creds:AWS_SESSION_TOKEN"
    assert env["PREFLIGHT_CLAIM"] == "shared-data" and env["PREFLIGHT_NUM_WORKERS"] == "2"
    names = {e["name"]: e for e in container["env"]}
    assert names["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert not any("secretKeyRef" in (e.get("valueFrom") or {}) for e in container["env"])  # no secret values in the hook
    from llm_finetune.hooks.preflight import Request

    req = Request.from_env(env)
    assert req.secrets == {"hf-token": ["token"], "s3-creds": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]}
    secret_rule = [r for r in rules if r["resources"] == ["secrets"]][0]
    assert sorted(secret_rule["resourceNames"]) == sorted(req.secrets)


# --------------------------------------------------------------------------- backend trainjob (Kubeflow Trainer v2)
V2 = {**VALUES, "backend": "trainjob", "storage": {"existingClaim": "shared-data"}}
TRAINER_APIS = {"trainer.kubeflow.org/v1alpha1": ["trainjobs", "trainjobs/status", "trainingruntimes", "clustertrainingruntimes"],
                "jobset.x-k8s.io/v1alpha2": ["jobsets", "jobsets/status"]}


def trainer_cluster(cluster, helm4, values=V2):
    healthy(cluster)
    cluster.served = dict(TRAINER_APIS)
    for runtime in find(render(helm4, values), "TrainingRuntime"):  # the chart's hook, created before the preflight
        cluster.add_runtime({**runtime, "metadata": {**runtime["metadata"], "namespace": "ml"}})


def test_trainjob_all_good_with_the_charts_role(hook, kube_api, helm4, termination_log, caplog):
    trainer_cluster(kube_api.cluster, helm4)
    assert hook(V2) == 0, termination_log.read_text() if termination_log.exists() else ""
    assert sorted(set(kube_api.cluster.requests)) == sorted({
        ("GET", "/apis/trainer.kubeflow.org/v1alpha1"),
        ("GET", "/apis/jobset.x-k8s.io/v1alpha2"),
        ("GET", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainingruntimes/ft-llm-finetune"),
        ("GET", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs/ft-llm-finetune"),  # same runId, changed values?
        ("GET", "/api/v1/namespaces/ml/secrets/hf-token"),
        ("GET", "/api/v1/namespaces/ml/secrets/s3-creds"),
        ("GET", "/api/v1/namespaces/ml/persistentvolumeclaims/shared-data"),
    })
    assert "preflight passed: config, TrainJob API" in caplog.text


def test_trainjob_needs_the_trainer_jobset_and_the_runtime(hook, kube_api, helm4, termination_log):
    trainer_cluster(kube_api.cluster, helm4)
    kube_api.cluster.served = {"kubeflow.org/v1": ["pytorchjobs"]}  # a Training Operator v1 cluster
    kube_api.cluster.trainer.clear()
    assert hook(V2) == 1
    msg = termination_log.read_text()
    assert "the API trainer.kubeflow.org/v1alpha1 is not served" in msg and "the API jobset.x-k8s.io/v1alpha2 is not served" in msg
    assert "install Kubeflow Trainer v2" in msg
    assert "TrainingRuntime 'ft-llm-finetune' not found in namespace 'ml': the trainer rejects a TrainJob" in msg


def test_trainjob_claim_must_be_read_write_many(hook, kube_api, helm4, termination_log):
    trainer_cluster(kube_api.cluster, helm4)
    kube_api.cluster.add_pvc("ml", "shared-data", modes=("ReadWriteOnce", "ReadOnlyMany"))
    assert hook(V2) == 1
    assert "backend trainjob mounts it read-write in all 2 node pods" in termination_log.read_text()


def test_trainjob_given_cluster_runtime(hook, kube_api, helm4, termination_log, caplog):
    values = {**V2, "trainjob": {"runtimeRef": {"name": "llm-gpu", "kind": "ClusterTrainingRuntime"}}}
    trainer_cluster(kube_api.cluster, helm4)
    assert hook(values) == 0  # the hook's Role cannot grant a cluster-scoped read: a warning
    assert "reading ClusterTrainingRuntime 'llm-gpu' is forbidden: not checked" in caplog.text
    kube_api.cluster.cluster_rbac = [{"apiGroups": ["trainer.kubeflow.org"], "resources": ["clustertrainingruntimes"], "verbs": ["get"]}]
    kube_api.cluster.add_runtime({"kind": "ClusterTrainingRuntime", "metadata": {"name": "llm-gpu"},
                                  "spec": {"template": {"spec": {"replicatedJobs": [{"name": "trainer"}]}}}})
    assert hook(values) == 1
    assert "ClusterTrainingRuntime 'llm-gpu' has no replicated job 'node' with a container 'node' (it has: trainer)" in termination_log.read_text()


def _as_cluster_runtime(helm4, values, name="llm-gpu"):
    """The chart's runtime for ``values``, installed by a platform team as a ClusterTrainingRuntime."""
    (rt,) = find(render(helm4, values), "TrainingRuntime")
    return {**rt, "kind": "ClusterTrainingRuntime", "metadata": {"name": name}}


def test_trainjob_given_cluster_runtime_must_mount_this_releases_config(hook, kube_api, helm4, termination_log):
    """A user runtime is the chart's runtime rendered for the release; its ConfigMap's name changes with the
    config, so one rendered for other values would leave the node pods without theirs."""
    values = {**V2, "trainjob": {"runtimeRef": {"name": "llm-gpu", "kind": "ClusterTrainingRuntime"}}}
    trainer_cluster(kube_api.cluster, helm4)
    kube_api.cluster.cluster_rbac = [{"apiGroups": ["trainer.kubeflow.org"], "resources": ["clustertrainingruntimes"], "verbs": ["get"]}]
    kube_api.cluster.add_runtime(_as_cluster_runtime(helm4, {**V2, "training": {"args": {"learning_rate": 0.001}}}))
    assert hook(values) == 1
    msg = termination_log.read_text()
    assert "ClusterTrainingRuntime 'llm-gpu' runs its node pods with ConfigMap ft-llm-finetune-config-" in msg
    assert "not this release's config 'ft-llm-finetune-config-" in msg and "--show-only templates/trainingruntime.yaml" in msg
    kube_api.cluster.add_runtime(_as_cluster_runtime(helm4, V2))  # rendered for these values: fine
    assert hook(values) == 0


def test_trainjob_hook_env_is_the_contract(helm4):
    _, env, _, rules = hook_objects(helm4, V2)
    assert env["PREFLIGHT_BACKEND"] == "trainjob" and env["PREFLIGHT_RUNTIME"] == "TrainingRuntime/ft-llm-finetune"
    assert {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainingruntimes"], "resourceNames": ["ft-llm-finetune"],
            "verbs": ["get"]} in rules
    assert {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "resourceNames": ["ft-llm-finetune"],
            "verbs": ["get"]} in rules and not [r for r in rules if r["resources"] == ["pytorchjobs"]]
    from llm_finetune.hooks.preflight import Request

    assert Request.from_env(env).runtime == ("TrainingRuntime", "ft-llm-finetune")
    (cm,) = find(render(helm4, V2), "ConfigMap", hook="")
    assert Request.from_env(env).config_map == env["PREFLIGHT_CONFIGMAP"] == cm["metadata"]["name"]
    _, env, _, _ = hook_objects(helm4, VALUES)
    assert env["PREFLIGHT_BACKEND"] == "pytorchjob" and "PREFLIGHT_RUNTIME" not in env
