"""Targeted tests of each chart feature, on real `helm template` output of Helm 3 and Helm 4."""

from __future__ import annotations

import re

import pytest
import yaml

from fixtures.render import (CHART, container, env, find, job_config, job_configmap, mounts, one, pod_spec,
                             pytorchjob, render, volumes)
from llm_finetune.core.errors import UserError
from llm_finetune.core.helm import template

INIT_CMD = ["llm-finetune", "initialize", "--config", "/etc/llm-finetune/config.yaml"]
OUTCOME = "/tmp/llm-finetune/initializer-outcome.json"
TRAIN_CMD = ["llm-finetune", "launch", "--config", "/etc/llm-finetune/config.yaml", "--initializer-outcome", OUTCOME]
SECRET_ENV = {"HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
SECRETS = {"secrets": {"hf": {"existingSecret": "hf-token"},
                       "s3": {"existingSecret": "s3-creds", "sessionTokenKey": "session"}}}


def all_pod_specs(docs):
    """(where, pod spec) of every pod the chart can create: replicas, preflight Job, test Pod."""
    out = [(f"job/{role}", r["template"]["spec"]) for role, r in pytorchjob(docs)["spec"]["pytorchReplicaSpecs"].items()]
    out += [(f"Job/{j['metadata']['name']}", j["spec"]["template"]["spec"]) for j in find(docs, "Job")]
    out += [(f"Pod/{p['metadata']['name']}", p["spec"]) for p in find(docs, "Pod")]
    return out


def all_containers(spec):
    return list(spec.get("initContainers") or []) + list(spec["containers"])


# --------------------------------------------------------------------------- replicas
@pytest.mark.parametrize("workers, nproc, want_nproc", [(1, 1, "1"), (2, "auto", "auto"), (5, 4, "4")])
def test_replicas_and_nproc_per_node(helm, workers, nproc, want_nproc):
    """Shared mode: Workers only (no Master, so the operator injects no init-pytorch); perPod with the
    claim and several pods: Master + Workers (the claim at /output on the Master alone)."""
    values = {"job": {"numWorkers": workers, "nprocPerNode": nproc}, "storage": {"accessModes": ["ReadWriteMany"]}}
    job = pytorchjob(render(helm, values))
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert list(specs) == ["Worker"] and specs["Worker"]["replicas"] == workers
    assert job["spec"]["nprocPerNode"] == want_nproc  # a string, as the SDK sets it
    assert {s["restartPolicy"] for s in specs.values()} == {"ExitCode"}
    per_pod = pytorchjob(render(helm, {**values, "storage": {"mode": "perPod"}}))["spec"]["pytorchReplicaSpecs"]
    if workers == 1:
        assert list(per_pod) == ["Worker"] and per_pod["Worker"]["replicas"] == 1
    else:
        assert per_pod["Master"]["replicas"] == 1 and per_pod["Worker"]["replicas"] == workers - 1


def test_run_policy_restart_policy_and_scheduling(helm):
    values = {"job": {"numWorkers": 2, "restartPolicy": "OnFailure",
                      "runPolicy": {"cleanPodPolicy": "All", "ttlSecondsAfterFinished": 0,
                                    "activeDeadlineSeconds": 3600, "backoffLimit": 1},
                      "nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
                      "affinity": {"nodeAffinity": {}}, "priorityClassName": "high", "schedulerName": "volcano",
                      "terminationGracePeriodSeconds": 600}}
    docs = render(helm, {**values, "storage": {"mode": "perPod"}})
    job = pytorchjob(docs)
    assert job["spec"]["runPolicy"] == {"cleanPodPolicy": "All", "ttlSecondsAfterFinished": 0,
                                        "activeDeadlineSeconds": 3600, "backoffLimit": 1}
    assert job_config(docs).run.backoff_limit == 1  # the pods count their own retries against it
    for role in ("Master", "Worker"):
        assert job["spec"]["pytorchReplicaSpecs"][role]["restartPolicy"] == "OnFailure"
        spec = pod_spec(docs, role)
        assert spec["nodeSelector"] == {"pool": "gpu"} and spec["tolerations"][0]["key"] == "gpu"
        assert spec["affinity"] == {"nodeAffinity": {}}
        assert (spec["priorityClassName"], spec["schedulerName"]) == ("high", "volcano")
        assert spec["terminationGracePeriodSeconds"] == 600
        # torchrun gives the workers the grace period, less a margin, to checkpoint after SIGTERM
        assert env(container(spec, "pytorch"))["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]["value"] == "590"
    for grace, want in ((12, "5"), (3, "3"), (0, "0")):  # never longer than the grace period
        assert env(container(pod_spec(render(helm, {"job": {"terminationGracePeriodSeconds": grace}})),
                             "pytorch"))["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]["value"] == want
    # nulls (the defaults) are left out rather than rendered as null; pods still running when the job
    # ends are deleted (their GPUs freed), finished ones stay for their logs
    assert pytorchjob(render(helm))["spec"]["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3}


# --------------------------------------------------------------------------- containers & storage
def test_shared_mode_every_pod_mounts_the_claim_and_pod_0_fills_it(helm):
    docs = render(helm, {"job": {"numWorkers": 3}, "storage": {"accessModes": ["ReadWriteMany"]}})
    spec = pod_spec(docs, "Worker")  # the one template of every pod
    claim = "ft-llm-finetune-workspace"
    assert [c["name"] for c in spec["initContainers"]] == ["storage-initializer"]
    assert [c["name"] for c in spec["containers"]] == ["pytorch"]
    assert volumes(spec)["workspace"]["persistentVolumeClaim"] == {"claimName": claim}
    assert container(spec, "pytorch")["command"] == TRAIN_CMD
    # the pod with replica index 0 fills the claim, the others wait; the outcome goes to the pytorch container
    assert container(spec, "storage-initializer")["command"] == INIT_CMD + ["--shared", "--outcome", OUTCOME]
    e = env(container(spec, "storage-initializer"))
    assert e["LLM_FINETUNE_POD_INDEX"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.labels['training.kubeflow.org/replica-index']"}}
    for c in all_containers(spec):
        assert not mounts(c)["/workspace"].get("readOnly")
        assert mounts(c)["/etc/llm-finetune"]["readOnly"] is True
    assert "output" not in volumes(spec)
    cfg = job_config(docs)
    assert (cfg.storage.mode, cfg.paths.run) == ("shared", "/workspace/runs/ft-llm-finetune")
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}}


def test_a_kept_claim_survives_helm_uninstall_and_argo_cd_pruning(helm):
    """Argo CD honours helm.sh/resource-policy only when the Application is deleted
    (argo-cd@v3.5.1:controller/appcontroller.go:1252-1261); a sync prunes by sync-options only
    (gitops-engine/pkg/sync/sync_context.go:1454-1459)."""
    pvc = one(render(helm), "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep",
                                              "argocd.argoproj.io/sync-options": "Prune=false,Delete=false"}
    assert "annotations" not in one(render(helm, {"storage": {"keep": False}}), "PersistentVolumeClaim")["metadata"]


def test_created_claim_settings(helm):
    docs = render(helm, {"storage": {"size": "50Gi", "storageClassName": "nfs", "keep": False,
                                     "accessModes": ["ReadWriteMany"], "annotations": {"team": "ml"}}})
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"] == {"team": "ml"}
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs",
                           "resources": {"requests": {"storage": "50Gi"}}}


def test_existing_claim(helm):
    docs = render(helm, {"storage": {"existingClaim": "models"}, "job": {"numWorkers": 2}})
    assert find(docs, "PersistentVolumeClaim") == []
    assert volumes(pod_spec(docs, "Worker"))["workspace"]["persistentVolumeClaim"]["claimName"] == "models"
    test_pod = one(docs, "Pod", hook="test")
    assert volumes(test_pod["spec"])["claim"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    preflight = one(docs, "Role", hook="pre-install,pre-upgrade")
    assert {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames": ["models"],
            "verbs": ["get"]} in preflight["rules"]


def test_per_pod_storage_mode(helm):
    docs = render(helm, {"storage": {"mode": "perPod", "perPod": {"size": "30Gi", "storageClassName": "local"}},
                         "job": {"numWorkers": 3}})
    master, worker = pod_spec(docs, "Master"), pod_spec(docs, "Worker")
    for spec in (master, worker):
        template = volumes(spec)["workspace"]["ephemeral"]["volumeClaimTemplate"]
        assert template["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                                    "resources": {"requests": {"storage": "30Gi"}}}
        # every pod fills its own volume: same command, nothing read-only, no waiting
        assert container(spec, "storage-initializer")["command"] == INIT_CMD + ["--outcome", OUTCOME]
        assert not any(mounts(c)["/workspace"].get("readOnly") for c in all_containers(spec))
    # the claim only on the Master, at /output (its initializer counts the pod's attempts there)
    assert volumes(master)["output"]["persistentVolumeClaim"] == {"claimName": "ft-llm-finetune-workspace"}
    assert "/output" in mounts(container(master, "pytorch"))
    assert "/output" in mounts(container(master, "storage-initializer"))
    assert "output" not in volumes(worker)
    cfg = job_config(docs)
    assert (cfg.storage.mode, cfg.paths.run) == ("perPod", "/output/runs/ft-llm-finetune")
    assert cfg.paths.model == "/workspace/model"
    assert one(docs, "PersistentVolumeClaim")["metadata"]["name"] == "ft-llm-finetune-workspace"
    test_pod = one(docs, "Pod", hook="test")
    assert mounts(container(test_pod["spec"], "verify"))["/output"]["readOnly"] is True


def test_per_pod_without_claim_needs_an_export(helm):
    # The rule is the schema's if/then (one place): Helm names the field to set; the
    # validator's wording of the same rule is in tests/validate/test_rules.py.
    values = {"storage": {"mode": "perPod", "perPod": {"outputToClaim": False}}}
    with pytest.raises(UserError) as exc:
        render(helm, values)
    assert "schema" in str(exc.value) and re.search(r"(^|\s)output\.export\.uri:|'/output/export/uri'", str(exc.value), re.M)
    assert render(helm, {"storage": {"mode": "perPod", "perPod": {"outputToClaim": True}}})
    assert render(helm, {"storage": {"perPod": {"outputToClaim": False}}})  # shared mode: the claim keeps it
    values["output"] = {"export": {"uri": "s3://bucket/out"}}
    docs = render(helm, values)
    assert find(docs, "PersistentVolumeClaim") == []
    assert "output" not in volumes(pod_spec(docs))
    assert job_config(docs).paths.run == "/workspace/runs/ft-llm-finetune"
    assert "claim" not in volumes(one(docs, "Pod", hook="test")["spec"])


def test_volumes_tmp_shm_and_config(helm):
    docs = render(helm, {"job": {"shmSizeLimit": "16Gi"}})
    spec = pod_spec(docs)
    vols = volumes(spec)
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    # /tmp is bounded (eviction instead of a full node disk) and requested as ephemeral storage
    assert vols["tmp"]["emptyDir"] == {"sizeLimit": "10Gi"}
    assert container(spec, "pytorch")["resources"]["requests"]["ephemeral-storage"] == "10Gi"
    spec2 = pod_spec(render(helm, {"job": {"tmpSizeLimit": "50Gi", "resources": {"requests": {"ephemeral-storage": "60Gi"}}}}))
    assert volumes(spec2)["tmp"]["emptyDir"] == {"sizeLimit": "50Gi"}
    assert container(spec2, "pytorch")["resources"] == {"requests": {"ephemeral-storage": "60Gi"}}
    assert vols["config"]["configMap"]["name"] == job_configmap(docs)["metadata"]["name"]
    assert mounts(container(spec, "pytorch"))["/dev/shm"]["name"] == "dshm"
    for c in all_containers(spec):
        assert mounts(c)["/tmp"]["name"] == "tmp"
        assert mounts(c)["/etc/llm-finetune"] == {"name": "config", "mountPath": "/etc/llm-finetune", "readOnly": True}


# --------------------------------------------------------------------------- config map
def test_configmap_is_immutable_named_by_its_checksum(helm):
    docs = render(helm)
    cm = job_configmap(docs)
    assert cm["immutable"] is True
    checksum = cm["metadata"]["name"].rsplit("-", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{10}", checksum) and cm["metadata"]["name"] == f"ft-llm-finetune-config-{checksum}"
    for role in ("Worker",):
        template = pytorchjob(docs)["spec"]["pytorchReplicaSpecs"][role]["template"]
        assert template["metadata"]["annotations"]["checksum/config"] == checksum
    changed = job_configmap(render(helm, {"training": {"args": {"num_train_epochs": 2}}}))
    assert changed["metadata"]["name"] != cm["metadata"]["name"]
    # a change outside the config (resources) keeps the same ConfigMap
    same = job_configmap(render(helm, {"job": {"resources": {"cpu": 2}}}))
    assert same["metadata"]["name"] == cm["metadata"]["name"]


def test_config_holds_no_secrets_and_null_removes_a_default(helm):
    docs = render(helm, {**SECRETS, "training": {"args": {"warmup_steps": None}}})
    text = job_configmap(docs)["data"]["config.yaml"]
    assert "hf-token" not in text and "s3-creds" not in text
    # Only the user's keys, their null included: the trainer drops that default (tests/chart/test_v1_defaults.py).
    assert job_config(docs).training.args == {"warmup_steps": None}


# --------------------------------------------------------------------------- secrets & env
def test_secrets_only_by_reference(helm):
    docs = render(helm, {**SECRETS, "job": {"numWorkers": 2}, "storage": {"mode": "perPod"}})
    for where, spec in all_pod_specs(docs):
        for c in all_containers(spec):
            for var in c.get("env") or []:
                if var["name"] in SECRET_ENV or re.search("(TOKEN|SECRET_ACCESS_KEY|PASSWORD)$", var["name"]):
                    assert "value" not in var and set(var["valueFrom"]) == {"secretKeyRef"}, (where, var)
    for role in ("Master", "Worker"):
        for c in all_containers(pod_spec(docs, role)):
            e = env(c)
            assert e["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
            assert e["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
            assert e["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
                "name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
            assert e["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "session"}
    # the hooks never get secret values
    for where, spec in all_pod_specs(docs):
        if not where.startswith("job/"):
            assert not SECRET_ENV & set(env(spec["containers"][0])), where


def test_no_secret_env_without_secrets_and_no_session_token_without_key(helm):
    spec = pod_spec(render(helm))
    assert not SECRET_ENV & set(env(container(spec, "pytorch")))
    spec = pod_spec(render(helm, {"secrets": {"s3": {"existingSecret": "s3"}}}))
    names = set(env(container(spec, "storage-initializer")))
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names and "AWS_SESSION_TOKEN" not in names


def test_common_env_and_extra_env_per_container(helm):
    values = {"job": {"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]},
              "initializer": {"env": [{"name": "HF_HUB_ENABLE_HF_TRANSFER", "value": "1"}]}}
    spec = pod_spec(render(helm, values))
    trainer, init = env(container(spec, "pytorch")), env(container(spec, "storage-initializer"))
    want = {"HOME": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache", "HF_HOME": "/tmp/hf-home", "TRITON_CACHE_DIR": "/tmp/.triton",
            "MPLCONFIGDIR": "/tmp/.mpl", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1"}
    for e in (trainer, init):
        assert {k: e[k]["value"] for k in want} == want
    assert trainer["NCCL_DEBUG"]["value"] == "INFO" and "NCCL_DEBUG" not in init
    assert init["HF_HUB_ENABLE_HF_TRANSFER"]["value"] == "1" and "HF_HUB_ENABLE_HF_TRANSFER" not in trainer


# --------------------------------------------------------------------------- resources
@pytest.mark.parametrize("given, want", [
    ({"cpu": 4, "memory": "16Gi", "gpu": 1},
     {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
      "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}}),
    ({"requests": {"cpu": "500m", "amd.com/gpu": 2}, "limits": {"memory": "8Gi"}},
     {"requests": {"cpu": "500m", "amd.com/gpu": "2"}, "limits": {"memory": "8Gi"}}),
    ({}, {}),
])
def test_trainer_resources_shorthand_and_full_form(helm, given, want):
    spec = pod_spec(render(helm, {"job": {"resources": given}}))
    want = {**want, "requests": {**want.get("requests", {}), "ephemeral-storage": "10Gi"}}  # job.tmpSizeLimit
    assert container(spec, "pytorch")["resources"] == want
    assert container(spec, "storage-initializer")["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}


# --------------------------------------------------------------------------- security
def as_created_by_the_operator(docs):
    """(where, pod spec) of every job pod with what Training Operator v1.9 adds: init-pytorch on Workers
    when a Master exists (the local model of pkg/controller.v1/pytorch/initcontainer.go)."""
    from llm_finetune.local import operator_v1 as op

    job = op.JobSpec.from_manifest(pytorchjob(docs))
    out = []
    for role, replica in job.replicas.items():
        spec = dict(replica.template["spec"])
        spec["initContainers"] = list(spec.get("initContainers") or []) + op.injected_init_containers(job, role)
        out.append((f"job/{role}", spec))
    return out


PSS_RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@pytest.mark.parametrize("values", [
    {"job": {"numWorkers": 4}, "storage": {"accessModes": ["ReadWriteMany"]}},  # shared: Workers only
    {"job": {"numWorkers": 4}, "storage": {"mode": "perPod", "perPod": {"outputToClaim": False}},
     "output": {"export": {"uri": "s3://bucket/out"}}},
    {"job": {"numWorkers": 1}, "storage": {"mode": "perPod"}},
], ids=["shared", "perpod-export", "perpod-1-pod"])
def test_multinode_pods_are_pss_restricted_and_pull_only_from_the_registry_as_the_operator_creates_them(helm, values):
    """No Master replica, so the operator injects nothing: every container of every pod the operator
    creates passes Pod Security "restricted" and comes from global.imageRegistry."""
    docs = render(helm, {**values, "global": {"imageRegistry": "mirror.local:5000"}})
    for where, spec in as_created_by_the_operator(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in all_containers(spec):
            assert PSS_RESTRICTED_CONTAINER.items() <= (c.get("securityContext") or {}).items(), (where, c["name"])
            assert c["image"].startswith("mirror.local:5000/"), (where, c["name"], c["image"])


def test_only_a_per_pod_master_topology_gets_the_operators_init_container_and_the_chart_says_so(helm):
    docs = render(helm, {"job": {"numWorkers": 3}, "storage": {"mode": "perPod"}})
    injected = [c for _, spec in as_created_by_the_operator(docs) for c in spec["initContainers"] if c["name"] == "init-pytorch"]
    assert injected and all(c["image"] == "alpine:3.10" and "securityContext" not in c for c in injected)
    # so the preflight reads the namespace's Pod Security level (and the validator warns)
    assert env(one(docs, "Job", hook=PREFLIGHT)["spec"]["template"]["spec"]["containers"][0])["PREFLIGHT_POD_SECURITY"]["value"] == "true"


def test_restricted_security_everywhere(helm):
    docs = render(helm, {"job": {"numWorkers": 2}, "storage": {"mode": "perPod"}})
    for where, spec in all_pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in all_containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True, where
            assert c["terminationMessagePolicy"] == "FallbackToLogsOnError", where
            assert mounts(c)["/tmp"]["name"] == "tmp", where  # something writable for HOME and caches
        if where.startswith("job/"):
            # the token only to post a failure Event on the job (job.failureEvents; Role: create events, get the job)
            assert spec["automountServiceAccountToken"] is True and spec["serviceAccountName"] == "ft-llm-finetune"
    for hook in ("Job", "Pod"):  # the hooks call the API
        assert all(d["spec"].get("automountServiceAccountToken", d["spec"].get("template", {}).get("spec", {})
                                 .get("automountServiceAccountToken")) for d in find(docs, hook))
    quiet = render(helm, {"job": {"failureEvents": False}})
    assert pod_spec(quiet)["automountServiceAccountToken"] is False
    assert env(container(pod_spec(quiet), "pytorch"))["LLM_FINETUNE_JOB_EVENTS"]["value"] == "false"
    assert not [d for d in quiet if d["kind"] in ("Role", "RoleBinding") and not (d["metadata"].get("annotations") or {}).get("helm.sh/hook")]


def test_service_account(helm):
    docs = render(helm, {"serviceAccount": {"create": True, "annotations": {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}}})
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == "ft-llm-finetune"
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}
    assert sa["automountServiceAccountToken"] is False
    assert pod_spec(docs)["serviceAccountName"] == "ft-llm-finetune"
    docs = render(helm, {"serviceAccount": {"create": False, "name": "existing"}})
    assert find(docs, "ServiceAccount", hook="") == []
    assert pod_spec(docs)["serviceAccountName"] == "existing"
    # the failure-Event Role is bound to whichever account the pods use
    assert one(docs, "RoleBinding")["subjects"][0]["name"] == "existing"


# --------------------------------------------------------------------------- names
def test_run_id_suffixes_the_job_name(helm):
    docs = render(helm, sets=["runId=2"])  # --set infers an integer
    job = pytorchjob(docs)
    assert job["metadata"]["name"] == "ft-llm-finetune-2"
    cfg = job_config(docs)
    assert (cfg.run.name, cfg.run.id, cfg.paths.run) == ("ft-llm-finetune-2", "2", "/workspace/runs/ft-llm-finetune-2")
    # the claim is per release: a new run reuses the downloads
    assert volumes(pod_spec(docs))["workspace"]["persistentVolumeClaim"]["claimName"] == "ft-llm-finetune-workspace"
    assert one(docs, "Role", hook="test")["rules"][0]["resourceNames"] == ["ft-llm-finetune-2"]
    assert env(one(docs, "Pod", hook="test")["spec"]["containers"][0])["JOB_NAME"]["value"] == "ft-llm-finetune-2"


def test_long_names_truncate_the_release_never_the_run_id(helm):
    release = "a" * 53
    run_id = "r" * 40
    docs = render(helm, {"runId": run_id}, release=release)
    name = pytorchjob(docs)["metadata"]["name"]
    assert name.endswith("-" + run_id) and len(name) <= 52
    assert len(f"{name}-worker-999") <= 63
    for doc in docs:
        limit = 63 if doc["kind"] in ("PyTorchJob", "Job", "Pod") else 253  # Job names end up in labels
        assert len(doc["metadata"]["name"]) <= limit, doc["metadata"]["name"]
        for value in (doc["metadata"].get("labels") or {}).values():
            assert len(value) <= 63
    assert len(pytorchjob(render(helm, release="b" * 53))["metadata"]["name"]) == 52
    assert len(pytorchjob(render(helm, {"fullnameOverride": "c" * 63}))["metadata"]["name"]) == 52


def test_job_name_must_start_with_a_letter(helm):
    # runId itself is checked by the schema alone (tests/chart/test_schema.py); the name's
    # first character comes from the release or fullnameOverride.
    with pytest.raises(UserError, match="fullnameOverride"):  # the schema: a DNS-1035 label
        render(helm, {"fullnameOverride": "1abc"})
    with pytest.raises(UserError, match="must start with a letter"):  # a release name starting with a digit
        render(helm, release="1abc")


def test_labels(helm):
    docs = render(helm, {"job": {"labels": {"team": "ml"}, "annotations": {"owner": "me"}, "queueName": "gpu-q",
                                 "podLabels": {"cost-center": "42"}, "podAnnotations": {"x/y": "z"}}})
    job = pytorchjob(docs)
    want = {"app.kubernetes.io/name": "llm-finetune", "app.kubernetes.io/instance": "ft",
            "app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/version": "0.1.0",
            "helm.sh/chart": "llm-finetune-0.1.0"}
    for doc in docs:
        assert want.items() <= doc["metadata"]["labels"].items(), doc["kind"]
    assert job["metadata"]["labels"]["team"] == "ml"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-q"
    assert job["metadata"]["annotations"] == {"owner": "me", "llm-finetune.io/spec-checksum": job["metadata"]["annotations"]["llm-finetune.io/spec-checksum"]}
    meta = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["metadata"]
    assert want.items() <= meta["labels"].items() and meta["labels"]["cost-center"] == "42"
    assert meta["labels"]["app.kubernetes.io/component"] == "trainer"
    assert meta["annotations"]["sidecar.istio.io/inject"] == "false" and meta["annotations"]["x/y"] == "z"
    assert "kueue.x-k8s.io/queue-name" not in pytorchjob(render(helm))["metadata"]["labels"]


# --------------------------------------------------------------------------- images
@pytest.mark.parametrize("values, trainer, initializer", [
    ({}, "ghcr.io/llm-finetune/trainer:0.1.0", "ghcr.io/llm-finetune/initializer:0.1.0"),
    ({"images": {"trainer": {"tag": "1.2.3"}, "initializer": {"digest": "sha256:" + "a" * 64, "tag": "9"}}},
     "ghcr.io/llm-finetune/trainer:1.2.3", "ghcr.io/llm-finetune/initializer@sha256:" + "a" * 64),
    ({"global": {"imageRegistry": "mirror.local:5000"}, "images": {"trainer": {"registry": "", "tag": 2}}},
     "mirror.local:5000/llm-finetune/trainer:2", "mirror.local:5000/llm-finetune/initializer:0.1.0"),
])
def test_images(helm, values, trainer, initializer):
    docs = render(helm, {**values, "images": {**values.get("images", {}),
                                              "trainer": {"pullPolicy": "Always",
                                                          **values.get("images", {}).get("trainer", {})}}})
    spec = pod_spec(docs)
    assert container(spec, "pytorch")["image"] == trainer
    assert container(spec, "pytorch")["imagePullPolicy"] == "Always"
    assert container(spec, "storage-initializer")["image"] == initializer
    assert one(docs, "Job", hook="pre-install,pre-upgrade")["spec"]["template"]["spec"]["containers"][0]["image"] == initializer
    assert one(docs, "Pod", hook="test")["spec"]["containers"][0]["image"] == trainer


def test_image_pull_secrets(helm):
    docs = render(helm, {"global": {"imagePullSecrets": ["a", {"name": "b"}]}, "imagePullSecrets": [{"name": "a"}, "c"]})
    for where, spec in all_pod_specs(docs):
        assert spec["imagePullSecrets"] == [{"name": "a"}, {"name": "b"}, {"name": "c"}], where
    assert "imagePullSecrets" not in pod_spec(render(helm))


# --------------------------------------------------------------------------- hooks
PREFLIGHT = "pre-install,pre-upgrade"


def test_preflight_hook(helm):
    docs = render(helm, {**SECRETS, "storage": {"existingClaim": "models", "mode": "perPod"}, "job": {"numWorkers": 3},
                         "preflight": {"annotations": {"argocd.argoproj.io/hook": "PreSync"}}})
    hooks = [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == PREFLIGHT]
    # a Master topology (perPod, claim, 3 pods): the namespace's Pod Security label is read (a ClusterRole)
    assert sorted(d["kind"] for d in hooks) == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Job", "Role",
                                                "RoleBinding", "ServiceAccount"]
    weight = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in hooks}
    assert weight["ConfigMap"] < weight["RoleBinding"] < weight["Job"] and weight["ServiceAccount"] < weight["RoleBinding"]
    assert weight["ClusterRole"] < weight["ClusterRoleBinding"] < weight["Job"]
    for d in hooks:
        ann = d["metadata"]["annotations"]
        assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        assert ann["argocd.argoproj.io/hook"] == "PreSync"
    name = "ft-llm-finetune-preflight"
    job = one(docs, "Job", hook=PREFLIGHT)
    assert job["spec"]["backoffLimit"] == 0 and 0 < job["spec"]["activeDeadlineSeconds"] <= 600
    spec = job["spec"]["template"]["spec"]
    assert (spec["serviceAccountName"], spec["automountServiceAccountToken"], spec["restartPolicy"]) == (name, True, "Never")
    c = spec["containers"][0]
    assert c["command"] == ["llm-finetune", "preflight", "--config", "/etc/llm-finetune-preflight/config.yaml"]
    assert c["image"].startswith("ghcr.io/llm-finetune/initializer:")
    e = env(c)
    assert e["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert e["PREFLIGHT_SECRETS"]["value"] == ("hf-token:token,s3-creds:AWS_ACCESS_KEY_ID,"
                                               "s3-creds:AWS_SECRET_ACCESS_KEY,s3-creds:session")
    # preflight checks exactly the Secret keys the job's pods read
    refs = {(x["valueFrom"]["secretKeyRef"]["name"], x["valueFrom"]["secretKeyRef"]["key"])
            for role in ("Master", "Worker") for cont in all_containers(pod_spec(docs, role))
            for x in cont.get("env") or [] if "secretKeyRef" in x.get("valueFrom", {})}
    assert {tuple(p.split(":")) for p in e["PREFLIGHT_SECRETS"]["value"].split(",")} == refs
    assert e["PREFLIGHT_CLAIM"]["value"] == "models" and e["PREFLIGHT_NUM_WORKERS"]["value"] == "3"
    assert volumes(spec)["config"]["configMap"]["name"] == name
    assert mounts(c)["/etc/llm-finetune-preflight"]["readOnly"] is True
    assert one(docs, "ConfigMap", hook=PREFLIGHT)["data"] == job_configmap(docs)["data"]
    role = one(docs, "Role", hook=PREFLIGHT)
    job_rule = {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "resourceNames": ["ft-llm-finetune"], "verbs": ["get"]}
    own_binding = {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "resourceNames": [name],
                   "verbs": ["delete"]}
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hf-token", "s3-creds"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames": ["models"], "verbs": ["get"]},
        job_rule, own_binding]
    binding = one(docs, "RoleBinding", hook=PREFLIGHT)
    assert binding["roleRef"]["name"] == name and binding["subjects"][0]["name"] == name
    assert e["PREFLIGHT_RBAC"]["value"] == f"{name} default-{name}" and e["PREFLIGHT_POD_SECURITY"]["value"] == "true"
    assert e["PREFLIGHT_SPEC_CHECKSUM"]["value"] == pytorchjob(docs)["metadata"]["annotations"]["llm-finetune.io/spec-checksum"]
    # nothing referenced: only the live job's spec and its own cleanup
    assert one(render(helm), "Role", hook=PREFLIGHT)["rules"] == [job_rule, own_binding]
    assert find(render(helm, {"preflight": {"enabled": False}}), "Job") == []


def test_helm_test_hook(helm):
    docs = render(helm)
    pod = one(docs, "Pod", hook="test")
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
    spec = pod["spec"]
    c = spec["containers"][0]
    assert c["command"] == ["llm-finetune", "verify", "--config", "/etc/llm-finetune/config.yaml"]
    assert c["image"].startswith("ghcr.io/llm-finetune/trainer:")
    assert env(c)["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert mounts(c)["/workspace"]["readOnly"] is True
    assert volumes(spec)["config"]["configMap"]["name"] == job_configmap(docs)["metadata"]["name"]
    assert spec["serviceAccountName"] == "ft-llm-finetune-test" and spec["restartPolicy"] == "Never"
    role = one(docs, "Role", hook="test")
    assert role["rules"] == [{"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"],
                              "resourceNames": ["ft-llm-finetune"], "verbs": ["get"]}]
    assert [d["kind"] for d in find(docs, "RoleBinding", hook="test")] == ["RoleBinding"]
    assert [d["kind"] for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"
            and d["kind"] != "Pod"] and find(render(helm, {"tests": {"enabled": False}}), "Pod") == []



def test_argo_cd_runs_the_test_pod_only_through_tests_annotations(helm):
    """Argo CD never runs helm.sh/hook: test (argoproj/gitops-engine pkg/sync/hook/helm/type.go maps only
    pre/post-install/upgrade), and an argocd.argoproj.io/hook annotation wins over Helm's
    (pkg/sync/hook/hook.go): tests.annotations puts it on every resource of the test hook."""
    argo = {"argocd.argoproj.io/hook": "PostSync", "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation"}
    plain = [d for d in render(helm) if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    assert sorted(d["kind"] for d in plain) == ["Pod", "Role", "RoleBinding", "ServiceAccount"]
    assert not [d for d in plain if "argocd.argoproj.io/hook" in d["metadata"]["annotations"]]
    tests = [d for d in render(helm, {"tests": {"annotations": argo}})
             if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    assert sorted(d["kind"] for d in tests) == sorted(d["kind"] for d in plain)
    for d in tests:
        assert argo.items() <= d["metadata"]["annotations"].items(), d["kind"]

def test_notes(helm4):
    """NOTES.txt (rendered by a client-only install; Helm 3.17's dry run needs a cluster)."""
    import subprocess

    proc = subprocess.run([helm4, "install", "ft", str(CHART), "--dry-run=client", "-n", "ml", "--set", "runId=7"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    for line in ("kubectl -n ml logs -f ft-llm-finetune-7-worker-0 -c storage-initializer",
                 "kubectl -n ml logs -f ft-llm-finetune-7-worker-0 -c pytorch",
                 "kubectl -n ml get pytorchjob ft-llm-finetune-7",
                 "/workspace/runs/ft-llm-finetune-7/output",
                 "kubectl -n ml cp ft-llm-finetune-7-fetch:/workspace/runs/ft-llm-finetune-7/output ./ft-llm-finetune-7-output",
                 "--set runId=", "helm test ft -n ml --logs"):
        assert line in notes, line
    overrides = re.search(r"--overrides='(.*?)'", notes).group(1)
    pod = yaml.safe_load(overrides)  # valid JSON, mounting the claim where the run path is
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "ft-llm-finetune-workspace"
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/workspace"
