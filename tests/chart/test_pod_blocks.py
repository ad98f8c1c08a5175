"""The blocks every pod shares (chart/templates/_pod.tpl) are written once and reach every pod:
the PyTorchJob's Master and Workers, the preflight Job's pod and the helm-test Pod."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from fixtures.render import CHART, container, env, find, job_config, mounts, one, pod_spec, render, volumes

TEMPLATES = CHART / "templates"
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
SECRETS = {"secrets": {"hf": {"existingSecret": "hf-token"},
                       "s3": {"existingSecret": "s3-creds", "sessionTokenKey": "session"}}}
CUSTOM = {
    **SECRETS,
    "job": {"numWorkers": 2, "podAnnotations": {"team": "ml"}},
    "storage": {"mode": "perPod"},  # Master + Worker templates
    "imagePullSecrets": ["regcred"],
    "images": {"initializer": {"pullPolicy": "Always"}, "trainer": {"pullPolicy": "Never"}},
    "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 4242, "fsGroup": 4242,
                           "seccompProfile": {"type": "RuntimeDefault"}},
    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                        "capabilities": {"drop": ["ALL"]}, "privileged": False},
}


def pods(docs):
    """(where, pod metadata, pod spec) of every pod the chart renders."""
    job = one(docs, "PyTorchJob")
    out = [(f"job/{role}", r["template"]["metadata"], r["template"]["spec"])
           for role, r in job["spec"]["pytorchReplicaSpecs"].items()]
    out += [(f"Job/{j['metadata']['name']}", j["spec"]["template"]["metadata"], j["spec"]["template"]["spec"])
            for j in find(docs, "Job")]
    out += [(f"Pod/{p['metadata']['name']}", p["metadata"], p["spec"]) for p in find(docs, "Pod")]
    return out


def test_every_pod_gets_the_common_pod_and_container_blocks(helm):
    docs = render(helm, CUSTOM)
    found = pods(docs)
    assert [w for w, _, _ in found] == ["job/Master", "job/Worker", "Job/ft-llm-finetune-preflight", "Pod/ft-llm-finetune-test"]
    for where, meta, spec in found:
        assert meta["annotations"]["sidecar.istio.io/inject"] == "false", where
        assert spec["imagePullSecrets"] == [{"name": "regcred"}], where
        assert spec["securityContext"] == {**DEFAULTS["podSecurityContext"], **CUSTOM["podSecurityContext"]}, where
        assert "automountServiceAccountToken" in spec, where
        vols = volumes(spec)
        # the job's pods bound their /tmp (job.tmpSizeLimit); the hooks' scratch is tiny
        assert vols["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"} if where.startswith("job/") else {}}, where
        for c in list(spec.get("initContainers") or []) + spec["containers"]:
            what = f"{where}/{c['name']}"
            image = "trainer" if c["name"] in ("pytorch", "verify") else "initializer"
            assert c["image"].startswith(f"ghcr.io/llm-finetune/{image}:"), what
            assert c["imagePullPolicy"] == CUSTOM["images"][image]["pullPolicy"], what
            assert c["securityContext"] == {**DEFAULTS["securityContext"], **CUSTOM["securityContext"]}, what
            assert c["terminationMessagePolicy"] == "FallbackToLogsOnError", what
            assert mounts(c)["/tmp"] == {"name": "tmp", "mountPath": "/tmp"}, what
            assert env(c)["HOME"]["value"] == "/tmp", what
            # llm-finetune <command> --config <the config mount>/config.yaml
            config_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
            assert config_mount["readOnly"] is True, what
            assert c["command"][0] == "llm-finetune" and c["command"][2:4] == [
                "--config", f"{config_mount['mountPath']}/config.yaml"], what
            assert vols["config"]["configMap"]["name"], what
    # a pod's own annotations stay, under the Istio opt-out
    assert pods(docs)[0][1]["annotations"]["team"] == "ml"
    overridden = render(helm, {"job": {"podAnnotations": {"sidecar.istio.io/inject": "true"}}})
    assert pods(overridden)[0][1]["annotations"]["sidecar.istio.io/inject"] == "true"


def secret_key_refs(spec):
    return [(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"], e["name"])
            for c in list(spec.get("initContainers") or []) + spec["containers"]
            for e in c.get("env") or [] if "secretKeyRef" in (e.get("valueFrom") or {})]


@pytest.mark.parametrize("values, refs", [
    ({}, []),
    ({"secrets": {"hf": {"existingSecret": "hf-token", "tokenKey": "t"}}}, [("hf-token", "t", "HF_TOKEN")]),
    ({"secrets": {"s3": {"existingSecret": "s3"}}},
     [("s3", "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("s3", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")]),
    (SECRETS, [("hf-token", "token", "HF_TOKEN"), ("s3-creds", "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
               ("s3-creds", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"), ("s3-creds", "session", "AWS_SESSION_TOKEN")]),
])
def test_one_secret_list_feeds_the_pods_and_the_preflight(helm, values, refs):
    docs = render(helm, {**values, "job": {"numWorkers": 2}, "storage": {"mode": "perPod"}})
    for role in ("Master", "Worker"):
        spec = pod_spec(docs, role)
        assert secret_key_refs(spec) == refs * 2, role  # the initializer's, then the trainer's
    preflight = one(docs, "Job", hook="pre-install,pre-upgrade")["spec"]["template"]["spec"]["containers"][0]
    assert env(preflight)["PREFLIGHT_SECRETS"]["value"] == ",".join(f"{s}:{k}" for s, k, _ in refs)
    rules = one(docs, "Role", hook="pre-install,pre-upgrade")["rules"]
    names = [r["resourceNames"] for r in rules if r["resources"] == ["secrets"]]
    assert names == ([list(dict.fromkeys(s for s, _, _ in refs))] if refs else [])
    for hook_pod in [one(docs, "Pod", hook="test")["spec"], one(docs, "Job", hook="pre-install,pre-upgrade")["spec"]["template"]["spec"]]:
        assert secret_key_refs(hook_pod) == []  # the hooks read names, never the Secrets' values


@pytest.mark.parametrize("values, claim_at", [
    ({}, "/workspace"),
    ({"storage": {"mode": "perPod"}, "job": {"numWorkers": 2}}, "/output"),
    ({"storage": {"mode": "perPod", "perPod": {"outputToClaim": False}}, "output": {"export": {"uri": "s3://bucket/out"}}}, None),
])
def test_the_claim_mount_path_is_one_decision(helm4, values, claim_at):
    """The Master's claim mount, the run path, the helm-test pod's mount and NOTES.txt agree."""
    docs = render(helm4, values)
    spec = pod_spec(docs)
    claim_volumes = {v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    master = [m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"] if m["name"] in claim_volumes]
    test_pod = one(docs, "Pod", hook="test")["spec"]
    test_mounts = [m["mountPath"] for m in container(test_pod, "verify")["volumeMounts"] if m["name"] == "claim"]
    run = job_config(docs).paths.run
    sets = [f"--set-json={k}={json.dumps(v)}" for k, v in values.items()]
    notes = subprocess.run([helm4, "install", "ft", str(CHART), "--dry-run=client", *sets],
                           capture_output=True, text=True, check=True).stdout.split("NOTES:", 1)[1]
    if claim_at is None:
        assert master == [] and test_mounts == [] and run.startswith("/workspace/runs/")
        assert "mountPath" not in notes
        return
    assert master == [claim_at] and test_mounts == [claim_at] and run.startswith(f"{claim_at}/runs/")
    assert f'"mountPath":"{claim_at}"' in notes and f":{run}/output " in notes


# Fields of the common blocks: each is written in _pod.tpl only, so a change reaches every pod.
WRITTEN_ONCE = {
    "pod securityContext": r"podSecurityContext",
    "imagePullSecrets": r"imagePullSecrets:",
    "container securityContext": r"\.Values\.securityContext",
    "imagePullPolicy": r"imagePullPolicy:",
    "terminationMessagePolicy": r"terminationMessagePolicy:",
    "the /tmp mount": r"mountPath: /tmp|\"/tmp\"\)",
    "the tmp volume": r"name: tmp\s+(\{\{-[^}]*\}\}\s+)?emptyDir",
    "the Istio opt-out": r"sidecar\.istio\.io/inject",
    "Secret references": r"existingSecret",
}


@pytest.mark.parametrize("what", sorted(WRITTEN_ONCE))
def test_common_fields_are_written_in_one_named_template(what):
    where = sorted(str(f.relative_to(TEMPLATES)) for f in TEMPLATES.rglob("*")
                   if f.is_file() and f.name != "NOTES.txt" and re.search(WRITTEN_ONCE[what], f.read_text()))
    assert where == ["_pod.tpl"], f"{what}: {where}"


def test_the_claim_mount_path_is_decided_once():
    where = sorted(str(f.relative_to(TEMPLATES)) for f in TEMPLATES.rglob("*")
                   if f.is_file() and re.search(r'"/output"', f.read_text()))
    assert where == ["_helpers.tpl"], where
