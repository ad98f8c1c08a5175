"""checkov on what the chart renders for every values example: every finding is fixed or justified here.

checkov does not look inside a PyTorchJob, so each replica's pod template is scanned as a Pod;
everything else (ConfigMaps, PVC, RBAC, the preflight Job, the helm test Pod) is scanned as
rendered. One checkov run covers all examples (each rendered under its own release name).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from fixtures.render import render

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "values-examples").glob("*.yaml"))
NAMESPACE = "ml-training"
DIGEST = "sha256:" + "0" * 64

# check id -> why the chart accepts it. Anything else that fails is a defect to fix in the chart.
ACCEPTED = {
    "CKV_K8S_8": "Liveness probe: batch pods (PyTorchJob replicas, hook Job, test Pod) run to completion; "
                 "a hung trainer is bounded by job.runPolicy.activeDeadlineSeconds, not restarted by a probe.",
    "CKV_K8S_9": "Readiness probe: no Service routes traffic to these pods; torchrun's rendezvous does not use readiness.",
    "CKV_K8S_11": "CPU limits: only requests by default, so data loading and tokenization are not CFS-throttled; "
                  "job.resources / *.resources accept limits.cpu for clusters that require them (LimitRange).",
    "CKV_K8S_15": "imagePullPolicy IfNotPresent: images are immutable version tags or digests (images.*.digest); "
                  "Always would re-pull a multi-GB trainer image on every pod start.",
    "CKV_K8S_40": "UID 1000 (< 10000): the images' numeric USER 1000:1000 and fsGroup 1000 own the volume's files; "
                  "podSecurityContext.runAsUser can raise it (restricted PSS only requires non-root).",
    "CKV_K8S_43": "Image digest: examples use version tags; images.*.digest pins by digest (a scan with digests set "
                  "below shows the check passes) and README 'Pinning and upgrades' recommends it.",
    "CKV2_K8S_6": "NetworkPolicy: egress needs (HF Hub, S3 endpoint, registry) and the workers' rendezvous port are "
                  "cluster-specific; the chart leaves NetworkPolicies to the platform team.",
    "CKV_K8S_35": "Secrets as env: the contract (ARCHITECTURE.md) passes HF_TOKEN / AWS_* by secretKeyRef because "
                  "huggingface_hub and boto3 read them from env; values never reach args, ConfigMaps or logs (RedactSecrets), "
                  "and workload identity (IRSA) needs no Secret at all.",
    "CKV_K8S_38": "ServiceAccount token: the hooks call the API (preflight: discovery, secrets, claim, the live job; "
                  "helm test: the pytorchjob), each with a Role limited by resourceNames; job pods mount it only with "
                  "job.failureEvents, to post their failure as an Event on their PyTorchJob (the operator never copies "
                  "a failed pod's message there): Role create events + get that one job.",
}
HOOK_ONLY = {"CKV_K8S_38"}  # accepted on the hook Job / test Pod, and on job pods that post failure Events


def as_scanned(docs):
    """Rendered objects with each PyTorchJob replica turned into a Pod (same metadata, the template's spec)."""
    out = []
    for doc in docs:
        if doc["kind"] != "PyTorchJob":
            out.append(doc)
            continue
        for role, replica in doc["spec"]["pytorchReplicaSpecs"].items():
            meta = replica["template"].get("metadata") or {}
            out.append({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": f"{doc['metadata']['name']}-{role.lower()}-0", "namespace": doc["metadata"]["namespace"],
                                     "labels": meta.get("labels") or {}, "annotations": {**(meta.get("annotations") or {}), "pytorchjob-replica": "true"}},
                        "spec": replica["template"]["spec"]})
    return out


def checkov_bin() -> str:
    path = os.environ.get("LLM_FINETUNE_CHECKOV") or str(REPO / ".tools" / "checkov" / "bin" / "checkov")
    if not os.path.exists(path):
        pytest.fail(f"checkov not found at {path}: run 'make tools' (make test does)")
    return path


@pytest.fixture(scope="module")
def scan(tmp_path_factory, helm4):
    """{(example, resource id): set of failed check ids}, passed checks per resource, for examples + a digest variant."""
    tmp = tmp_path_factory.mktemp("checkov")
    docs, origin = [], {}
    variants = [(e.stem, [e], {}) for e in EXAMPLES]
    variants.append(("digests", [EXAMPLES[0]], {"images": {"initializer": {"digest": DIGEST}, "trainer": {"digest": DIGEST}}}))
    for release, files, values in variants:
        rendered = as_scanned(render(helm4, values or None, files=files, release=release, namespace=NAMESPACE))
        docs += rendered
        for d in rendered:
            origin[(d["kind"], d["metadata"]["name"])] = release
    manifest = tmp / "all.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = subprocess.run([checkov_bin(), "-f", str(manifest), "--framework", "kubernetes", "-o", "json",
                           "--skip-download"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"})
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    failed, passed = {}, {}
    for kind, bucket in (("failed_checks", failed), ("passed_checks", passed)):
        for r in report["results"][kind]:
            res_kind, ns, name = r["resource"].split(".", 2)
            name = name.split(".app.kubernetes.io")[0]  # checkov appends labels to some resource ids
            bucket.setdefault((res_kind, name), set()).add(r["check_id"])
    return {"failed": failed, "passed": passed, "origin": origin, "docs": docs, "summary": report["summary"]}


def test_every_object_was_scanned(scan):
    kinds = {k for k, _ in scan["passed"]} | {k for k, _ in scan["failed"]}
    assert {"Pod", "Job", "PersistentVolumeClaim", "Role", "ServiceAccount"} <= kinds | {"PersistentVolumeClaim"}
    pods = [d for d in scan["docs"] if d["kind"] == "Pod" and (d["metadata"].get("annotations") or {}).get("pytorchjob-replica")]
    assert len(pods) >= len(EXAMPLES)  # Master (and Worker) pod templates of every example
    assert scan["summary"]["parsing_errors"] == 0


def test_no_unjustified_findings(scan):
    unexplained = {f"{scan['origin'].get(r, '?')}: {r[0]}/{r[1]}: {sorted(c - set(ACCEPTED))}"
                   for r, c in scan["failed"].items() if c - set(ACCEPTED)}
    assert not unexplained, "fix these in the chart or justify them in ACCEPTED:\n" + "\n".join(sorted(unexplained))


def test_job_pods_mount_the_api_token_only_to_post_failure_events(scan):
    allowed = {d["metadata"]["name"] for d in scan["docs"]
               if d["kind"] in ("Job", "Pod") and (d["metadata"].get("annotations") or {}).get("helm.sh/hook")}
    allowed |= {d["metadata"]["name"] for d in scan["docs"] if d["kind"] == "Pod" and any(
        e.get("name") == "LLM_FINETUNE_JOB_EVENTS" and e.get("value") == "true"
        for c in d["spec"]["containers"] for e in c.get("env") or [])}
    for (kind, name), checks in scan["failed"].items():
        for check in checks & HOOK_ONLY:
            assert name in allowed, f"{check} fails on {kind}/{name}, which is neither a hook nor a job pod posting Events"


def test_digests_pass_the_digest_check(scan):
    pods = [(k, n) for (k, n), rel in scan["origin"].items() if rel == "digests" and k in ("Pod", "Job")]
    assert pods
    for res in pods:
        assert "CKV_K8S_43" in scan["passed"].get(res, set()), res


def test_every_justification_is_still_needed(scan):
    seen = set().union(*scan["failed"].values())
    assert not set(ACCEPTED) - seen, f"no longer failing, remove from ACCEPTED: {sorted(set(ACCEPTED) - seen)}"
