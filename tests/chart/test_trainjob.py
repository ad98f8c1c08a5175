"""The Kubeflow Trainer v2 backend (``backend: trainjob``): what the chart renders.

Every values example renders on both backends with both Helms; the TrainJob and the
TrainingRuntime validate against the v2.3.0 CRD schemas (../shared) and round-trip through the
``kubeflow-trainer-api`` models; the pods run the same containers as the PyTorchJob's; failure
handling, names, install order (Helm and Argo CD) and the spec checksum are asserted here.
Upstream files the assertions follow are cited next to them.
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from fixtures import crds
from fixtures.render import argocd_values_file, container, env, find, one, pod_spec, pytorchjob, rank0_role, render

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "values-examples"
CRDS = REPO.parent / "shared" / "kubeflow" / "trainer-v2.3.0"
K8S_VERSION = "1.30.0"
V1, V2 = {"backend": "pytorchjob"}, {"backend": "trainjob"}


def v1(files) -> dict | None:
    """backend pytorchjob for these files: as test_examples.py renders them (no values: one render cache) unless a
    file chooses trainjob."""
    chosen = [(yaml.safe_load(Path(f).read_text()) or {}).get("backend") for f in files]
    return V1 if "trainjob" in chosen else None
CASES = ["defaults", *(p.name for p in sorted(EXAMPLES_DIR.glob("*.yaml"))), "argocd-application"]


@pytest.fixture(scope="module")
def example_files():
    argocd = argocd_values_file()

    def files(case: str) -> list[Path]:
        return [] if case == "defaults" else [argocd] if case == "argocd-application" else [EXAMPLES_DIR / case]
    return files


def trainjob(docs):
    return one(docs, "TrainJob")


def runtime(docs):
    return one(docs, "TrainingRuntime", hook="pre-install,pre-upgrade")


def rjobs(docs) -> dict[str, dict]:
    return {r["name"]: r for r in runtime(docs)["spec"]["template"]["spec"]["replicatedJobs"]}


def rjob_pod(docs, name: str) -> dict:
    return rjobs(docs)[name]["template"]["spec"]["template"]["spec"]


# --------------------------------------------------------------------------- every example, both backends
@pytest.mark.parametrize("case", CASES)
def test_every_example_renders_on_both_backends_with_both_helms(helm3, helm4, case, example_files):
    files = example_files(case)
    for backend, values in (("pytorchjob", v1(files)), ("trainjob", V2)):
        docs = render(helm4, values, files=files)
        assert docs == render(helm3, values, files=files), (case, backend)
        kinds = [d["kind"] for d in docs]
        if backend == "pytorchjob":
            assert "PyTorchJob" in kinds and "TrainJob" not in kinds and "TrainingRuntime" not in kinds
        else:
            assert "PyTorchJob" not in kinds and kinds.count("TrainJob") == 1 and kinds.count("TrainingRuntime") == 1
            assert trainjob(docs)["spec"]["runtimeRef"]["name"] == runtime(docs)["metadata"]["name"]
            # the same ConfigMap, PVC and hooks as the PyTorchJob backend renders
            v1_docs = render(helm4, v1(files), files=files)
            for kind in ("ConfigMap", "PersistentVolumeClaim", "ServiceAccount"):
                assert find(docs, kind, hook="") == find(v1_docs, kind, hook=""), (case, kind)


@pytest.mark.parametrize("case", CASES)
def test_runtime_pod_templates_validate_against_kubernetes(helm4, case, example_files):
    docs = render(helm4, V2, files=example_files(case))
    for name, rjob in rjobs(docs).items():
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"x-{name}"},
               "spec": {**rjob["template"]["spec"], "completionMode": "Indexed", "completions": 1, "parallelism": 1}}
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------- CRD schemas and models
@pytest.fixture(scope="module")
def crd_validators():
    return {"TrainJob": crds.crd_validator(CRDS / "trainer.kubeflow.org_trainjobs.yaml", "v1alpha1"),
            "TrainingRuntime": crds.crd_validator(CRDS / "trainer.kubeflow.org_trainingruntimes.yaml", "v1alpha1")}


VARIANTS = {
    "defaults": {},
    "perpod-queue-deadline": {"storage": {"mode": "perPod"}, "job": {"numWorkers": 3, "queueName": "team-a",
                              "runPolicy": {"activeDeadlineSeconds": 7200, "ttlSecondsAfterFinished": 600}}},
    "never-auto": {"job": {"restartPolicy": "Never", "nprocPerNode": "auto"}},
    "onfailure": {"job": {"restartPolicy": "OnFailure", "env": [{"name": "X", "value": "1"}]}},
}


CASE_VARIANTS = [(case, "defaults") for case in CASES] + [("defaults", v) for v in VARIANTS if v != "defaults"]


@pytest.mark.parametrize("case, variant", CASE_VARIANTS)
def test_trainjob_and_runtime_match_the_v2_crd_schemas(helm4, case, variant, example_files, crd_validators):
    docs = render(helm4, {**V2, **VARIANTS[variant]}, files=example_files(case))
    for doc in (trainjob(docs), runtime(docs)):
        errors = sorted(crd_validators[doc["kind"]].iter_errors(doc), key=str)
        assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("case, variant", CASE_VARIANTS)
def test_trainjob_and_runtime_round_trip_through_the_trainer_api_models(helm4, case, variant, example_files):
    from kubeflow_trainer_api import models

    docs = render(helm4, {**V2, **VARIANTS[variant]}, files=example_files(case))
    for doc, model in ((trainjob(docs), models.TrainerV1alpha1TrainJob),
                       (runtime(docs), models.TrainerV1alpha1TrainingRuntime)):
        again = json.loads(json.dumps(model.from_dict(doc).to_dict()))
        assert crds.json_diff(doc, again) == [], doc["kind"]  # a model drops unknown fields and adds defaults


# --------------------------------------------------------------------------- install order
# helm v3.17.3 pkg/releaseutil/kind_sorter.go InstallOrder (v4.1.4 pkg/release/v1/util/kind_sorter.go
# appends Mutating/ValidatingWebhookConfiguration): known kinds in this order, then unknown kinds
# sorted alphabetically by kind.
HELM_INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList",
    "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList",
    "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]


def _annotations(doc) -> dict:
    return doc["metadata"].get("annotations") or {}


def _by_kind(docs):
    """kind_sorter.go lessByKind: known kinds by InstallOrder, unknown ones last and alphabetically (stable)."""
    known = {k: i for i, k in enumerate(HELM_INSTALL_ORDER)}
    return sorted(docs, key=lambda d: (0, known[d["kind"]], "") if d["kind"] in known else (1, 0, d["kind"]))


def helm_install_sequence(docs, event="pre-install"):
    """The order `helm install` creates objects: the event's hooks, sorted by kind and then (stable)
    by weight and name (helm pkg/action/hooks.go hookByWeight), each created and waited for; then
    the release's manifests by kind."""
    hooks = [d for d in docs if event in _annotations(d).get("helm.sh/hook", "").split(",")]
    hooks = sorted(_by_kind(hooks), key=lambda d: (int(_annotations(d).get("helm.sh/hook-weight", "0")), d["metadata"]["name"]))
    manifests = [d for d in docs if "helm.sh/hook" not in _annotations(d)]
    return [(d["kind"], d["metadata"]["name"]) for d in hooks + _by_kind(manifests)]


# gitops-engine@HEAD pkg/sync/sync_tasks.go: phase, then wave, then kind (known kinds first, every
# custom kind 0), then name; a Helm pre-install/pre-upgrade hook is a PreSync hook
# (pkg/sync/hook/helm/type.go) whose wave is its hook weight unless argocd.argoproj.io/sync-wave
# is set (pkg/sync/syncwaves/waves.go).
ARGO_KINDS = HELM_INSTALL_ORDER[1:HELM_INSTALL_ORDER.index("APIService") + 1]


def argocd_sync_sequence(docs):
    def key(d):
        ann = _annotations(d)
        hook = ann.get("argocd.argoproj.io/hook") or ann.get("helm.sh/hook", "")
        phase = -1 if ("PreSync" in hook or "pre-install" in hook or "pre-upgrade" in hook) else 0
        wave = int(ann.get("argocd.argoproj.io/sync-wave", ann.get("helm.sh/hook-weight", "0")))
        kind = ARGO_KINDS.index(d["kind"]) - len(ARGO_KINDS) if d["kind"] in ARGO_KINDS else 0
        return phase, wave, kind, d["metadata"]["name"]
    synced = [d for d in docs if _annotations(d).get("helm.sh/hook") != "test"]
    return [(d["kind"], d["metadata"]["name"]) for d in sorted(synced, key=key)]


def _position(sequence, kind, name=None):
    return next(i for i, (k, n) in enumerate(sequence) if k == kind and (name is None or n == name))


@pytest.mark.parametrize("event", ["pre-install", "pre-upgrade"])
def test_helm_creates_the_runtime_before_the_preflight_and_the_trainjob(helm4, event):
    docs = render(helm4, V2)
    order = helm_install_sequence(docs, event)
    rt, tj = runtime(docs)["metadata"]["name"], trainjob(docs)["metadata"]["name"]
    assert _position(order, "TrainingRuntime", rt) < _position(order, "Job") < _position(order, "TrainJob", tj)
    # ...and the TrainJob's ConfigMap and claim exist before it does
    assert max(_position(order, "ConfigMap", one(docs, "ConfigMap")["metadata"]["name"]),
               _position(order, "PersistentVolumeClaim")) < _position(order, "TrainJob")
    # Why a hook: as a plain resource Helm would create the TrainJob first (alphabetical custom kinds),
    # and the trainer's webhook rejects a TrainJob whose TrainingRuntime does not exist yet.
    for d in docs:
        if d["kind"] == "TrainingRuntime":
            d["metadata"]["annotations"] = {}
    order = helm_install_sequence(docs, event)
    assert _position(order, "TrainJob") < _position(order, "TrainingRuntime")


def test_argocd_syncs_the_runtime_in_presync_before_the_trainjob(helm4, example_files):
    docs = render(helm4, V2, files=example_files("argocd-application"))
    order = argocd_sync_sequence(docs)
    assert _position(order, "TrainingRuntime") < _position(order, "Job") < _position(order, "TrainJob")
    # without the hook both custom kinds share wave 0 and sort by name: nothing would order them
    docs = [d for d in docs if d["kind"] in ("TrainJob", "TrainingRuntime")]
    for d in docs:
        d["metadata"]["annotations"] = {}
    assert argocd_sync_sequence(docs)[0][1] == min(d["metadata"]["name"] for d in docs)


# --------------------------------------------------------------------------- the same pods as the PyTorchJob's
POD_FIELDS_OWN = {"containers", "initContainers", "volumes", "restartPolicy"}
# What only the PyTorchJob's pods carry (issue 14, docs/ARCHITECTURE "Failures on a cluster"): the
# initializer's outcome handed to the pytorch container (the only one whose exit code the Training
# Operator reads), the attempt ledger's pod identity, torchrun's rendezvous env for a Workers-only
# job, the API token for the failure Event, and the output claim in the Master's initializer (its
# writability check). The TrainJob's JobSet fails the job on the initializer's own exit code, so none
# of it is needed there. /tmp's ephemeral-storage request is on both (the TrainJob's resourcesPerNode).
V1_ONLY_ENV = {"PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NODE_RANK", "PET_RDZV_CONF", "LLM_FINETUNE_JOB_EVENTS",
               "LLM_FINETUNE_POD_NAME", "LLM_FINETUNE_POD_INDEX", "POD_NAMESPACE"}
V1_ONLY_ARGS = {"--shared", "--outcome", "--initializer-outcome"}


def _without_v1_failure_plumbing(spec: dict) -> dict:
    spec = json.loads(json.dumps(spec))
    spec.pop("automountServiceAccountToken", None)
    for c in spec.get("initContainers", []) + spec["containers"]:
        c["env"] = [e for e in c.get("env", []) if e["name"] not in V1_ONLY_ENV]
        args, c["command"] = c["command"], []
        while args:
            arg, args = args[0], args[1:]
            if arg in V1_ONLY_ARGS:
                args = args[1:] if arg != "--shared" else args
            else:
                c["command"].append(arg)
        c.pop("ports", None)  # the operator's pytorchjob-port on rank 0 (common/service.go)
        if c in spec.get("initContainers", []):  # the Master's initializer checks /output is writable
            c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/output"]
    return spec


@pytest.mark.parametrize("case", CASES)
def test_the_pods_run_the_same_containers_as_the_pytorchjob_master(helm4, case, example_files):
    files = example_files(case)
    v1_docs, v2 = render(helm4, v1(files), files=files), render(helm4, V2, files=files)
    master, job = _without_v1_failure_plumbing(pod_spec(v1_docs)), trainjob(v2)  # rank 0
    node = rjob_pod(v2, "node")
    per_pod = "init" not in rjobs(v2)
    init_pod = node if per_pod else rjob_pod(v2, "init")
    # pod-level settings: the same helper output; restartPolicy Never (podFailurePolicy needs it)
    for pod in (node, init_pod):
        assert {k: v for k, v in pod.items() if k not in POD_FIELDS_OWN | {"automountServiceAccountToken"}} == \
               {k: v for k, v in master.items() if k not in POD_FIELDS_OWN}
        assert pod["automountServiceAccountToken"] is False
        assert pod["restartPolicy"] == "Never"
    assert rjobs(v2)["node"]["template"]["spec"]["template"]["metadata"] == \
        pytorchjob(v1_docs)["spec"]["pytorchReplicaSpecs"][rank0_role(v1_docs)]["template"]["metadata"]
    # the initializer: the Master's storage-initializer, under its own name
    initializer = container(init_pod, "initializer")
    assert {**initializer, "name": "storage-initializer"} == container(master, "storage-initializer")
    # the trainer: the TrainJob carries image, command, env, resources; the runtime the rest
    pytorch, trainer = container(master, "pytorch"), job["spec"]["trainer"]
    assert trainer["image"] == pytorch["image"] and trainer["command"] == pytorch["command"]
    assert trainer["env"][:-1] == pytorch["env"] and trainer["env"][-1]["name"] == "LLM_FINETUNE_SPEC_CHECKSUM"
    assert trainer.get("resourcesPerNode", {}) == pytorch["resources"]
    node_container = container(node, "node")
    assert {k: v for k, v in node_container.items() if k != "name"} == \
           {k: v for k, v in pytorch.items() if k not in ("name", "command", "env", "resources")}
    assert node["volumes"] == master["volumes"]
    # torchrun's variables are the trainer's to inject (its webhook rejects them in spec.trainer.env)
    assert not [e["name"] for e in trainer["env"] if e["name"].startswith("PET_")]


@pytest.mark.parametrize("mode", ["shared", "perPod"])
def test_no_attempt_ledger_and_no_failure_events_on_trainjob(helm4, mode):
    """JobSet counts restarts itself (maxRestarts): the issue-14 attempt ledger (opened by `initialize --outcome`,
    closed by `launch --initializer-outcome`) and the pods' Events on the PyTorchJob stay off here."""
    docs = render(helm4, {**V2, "storage": {"mode": mode, "accessModes": ["ReadWriteMany"]}, "job": {"numWorkers": 2}})
    pods = [rjob["template"]["spec"]["template"]["spec"] for rjob in rjobs(docs).values()]
    containers = [c for p in pods for c in p.get("initContainers", []) + p["containers"]] + [trainjob(docs)["spec"]["trainer"]]
    for c in containers:
        assert not {"--outcome", "--initializer-outcome", "--shared"} & set(c.get("command", []) + c.get("args", [])), c["command"]
        assert "LLM_FINETUNE_JOB_EVENTS" not in {e["name"] for e in c.get("env", [])}
    assert all(p["automountServiceAccountToken"] is False for p in pods)  # no API token for Events
    assert not find(docs, "Role", hook="")  # the job Role (events, get pytorchjobs) is the PyTorchJob backend's


def test_trainjob_spec_follows_the_values(helm4):
    docs = render(helm4, {**V2, "runId": "7", "job": {
        "numWorkers": 3, "nprocPerNode": 4, "queueName": "team-a", "labels": {"team": "nlp"},
        "annotations": {"note": "x"}, "resources": {"gpu": 4, "cpu": 16, "memory": "64Gi"},
        "runPolicy": {"activeDeadlineSeconds": 7200, "ttlSecondsAfterFinished": 600, "backoffLimit": 5}}})
    job, rt = trainjob(docs), runtime(docs)
    assert job["metadata"]["name"] == "ft-llm-finetune-7"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["metadata"]["labels"]["team"] == "nlp" and job["metadata"]["annotations"]["note"] == "x"
    # what the preflight compares with a live TrainJob of the same runId (as on the PyTorchJob)
    assert set(job["metadata"]["annotations"]) == {"note", "llm-finetune.io/spec-checksum", "checksum/config"}
    assert env({"env": job["spec"]["trainer"]["env"]})["LLM_FINETUNE_SPEC_CHECKSUM"]["value"] == \
        job["metadata"]["annotations"]["llm-finetune.io/spec-checksum"]
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                         "name": rt["metadata"]["name"]}
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 4)
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "4", "cpu": "16", "memory": "64Gi"}
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    # Kueue writes runtimePatches and toggles suspend; the chart never renders them, nor managedBy.
    assert set(job["spec"]) == {"runtimeRef", "trainer", "activeDeadlineSeconds"}
    spec = rt["spec"]
    assert spec["mlPolicy"] == {"numNodes": 3, "torch": {}}
    assert spec["template"]["spec"]["ttlSecondsAfterFinished"] == 600
    assert spec["template"]["spec"]["failurePolicy"]["maxRestarts"] == 5
    assert rt["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"  # the SDK lists it by this label
    # "auto": left to the torch plugin (GPUs, else the CPU request)
    assert "numProcPerNode" not in trainjob(render(helm4, {**V2, "job": {"nprocPerNode": "auto"}}))["spec"]["trainer"]


def test_shared_mode_runs_one_initializer_job_before_the_nodes_and_perpod_an_init_container(helm4):
    shared = rjobs(render(helm4, V2))
    assert list(shared) == ["init", "node"]
    assert "dependsOn" not in shared["init"]  # jobset's webhook: never on the first replicated job
    assert shared["node"]["dependsOn"] == [{"name": "init", "status": "Complete"}]
    assert shared["node"]["template"]["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    assert all(r["replicas"] == 1 for r in shared.values())  # the trainer's runtime webhook
    assert "trainjob-ancestor-step" not in json.dumps(shared["init"])  # no spec.initializer: no webhook rule
    per_pod = render(helm4, {**V2, "storage": {"mode": "perPod"}, "job": {"numWorkers": 2}})
    assert list(rjobs(per_pod)) == ["node"]
    node = rjob_pod(per_pod, "node")
    assert [c["name"] for c in node["initContainers"]] == ["initializer"]
    assert container(node, "initializer")["command"][-1] != "--wait"
    assert {m["mountPath"] for m in container(node, "node")["volumeMounts"]} >= {"/workspace", "/output"}


@pytest.mark.parametrize("policy", ["ExitCode", "OnFailure", "Never"])
def test_failure_handling_follows_restart_policy(helm4, policy):
    docs = render(helm4, {**V2, "job": {"restartPolicy": policy, "runPolicy": {"backoffLimit": 4}}})
    spec = runtime(docs)["spec"]["template"]["spec"]
    for rjob in rjobs(docs).values():
        job_spec = rjob["template"]["spec"]
        assert job_spec["backoffLimit"] == 0 and job_spec["template"]["spec"]["restartPolicy"] == "Never"
        rules = (job_spec.get("podFailurePolicy") or {}).get("rules", [])
        if policy == "Never":
            assert rules == []
            continue
        # evictions, preemption and drains never count: the pod is recreated and resumes
        assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
        if policy == "ExitCode":  # training-operator v1.9.0 IsRetryableExitCode: >= 128 is retried
            assert rules[1] == {"action": "FailJob", "onExitCodes": {"operator": "In", "values": list(range(1, 128))}}
        else:
            assert len(rules) == 1
    if policy == "Never":
        assert "failurePolicy" not in spec  # jobset: the first failed Job fails the JobSet
        return
    failure = spec["failurePolicy"]
    assert failure["maxRestarts"] == 4 and failure["restartStrategy"] == "BlockingRecreate"
    permanent = [{"name": "PermanentError", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]
    assert failure.get("rules", []) == (permanent if policy == "ExitCode" else [])


def test_names_fit_jobsets_pod_name_limit(helm4):
    release = "a-very-long-release-name-for-a-team"
    docs = render(helm4, {**V2, "runId": "r" * 40, "job": {"numWorkers": 1000}}, release=release)
    name = trainjob(docs)["metadata"]["name"]
    assert len(name) <= 46 and name.endswith("-" + "r" * 40)
    for rjob, pods in (("node", 1000), ("init", 1)):
        # jobset v0.12.0 pkg/webhooks/jobset_webhook.go: <jobset>-<rjob>-<job index>-<pod index>-<5 random>
        assert len(f"{name}-{rjob}-0-{pods - 1}-abcde") <= 63
    assert runtime(docs)["metadata"]["name"] == one(docs, "PersistentVolumeClaim")["metadata"]["name"].removesuffix("-workspace")


def test_spec_checksum_changes_with_what_the_pods_run(helm4):
    def checksum(values):
        return env({"env": trainjob(render(helm4, {**V2, **values}))["spec"]["trainer"]["env"]})["LLM_FINETUNE_SPEC_CHECKSUM"]["value"]
    base = checksum({})
    assert checksum({"job": {"nodeSelector": {"pool": "gpu"}}}) != base          # runtime pod spec
    assert checksum({"training": {"args": {"learning_rate": 0.001}}}) != base    # config (ConfigMap name)
    assert checksum({"job": {"labels": {"team": "x"}}}) == base                  # TrainJob metadata only


def test_a_given_runtime_is_referenced_and_not_rendered(helm4):
    docs = render(helm4, {**V2, "trainjob": {"runtimeRef": {"name": "llm-finetune-gpu", "kind": "ClusterTrainingRuntime"}}})
    assert find(docs, "TrainingRuntime") == []
    assert trainjob(docs)["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                                     "name": "llm-finetune-gpu"}
