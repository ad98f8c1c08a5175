"""The preflight's checks of what the cluster's controllers will do with this release.

* **A changed run** (:func:`check_existing_job`, both backends): the Training Operator v1.9's webhook makes no
  field of a live PyTorchJob immutable (``ValidateUpdate`` even reads the new object twice:
  kubeflow/training-operator@v1.9.0:pkg/webhooks/pytorch/pytorchjob_webhook.go:63-70), so an
  upgrade with the same ``runId`` and other values would patch the live job: pods recreated later
  run the new config beside ranks on the old one, a changed ``numWorkers`` breaks a fixed-size
  rendezvous, and Helm/Argo CD delete the old ConfigMap under running pods. The PyTorchJob of
  this release carries ``llm-finetune.io/spec-checksum`` (its rendered spec) and its pods
  ``checksum/config``; a live job with other checksums is refused. A TrainJob carries the same two
  annotations: its ``trainer``/``initializer``/``runtimeRef`` are immutable (an upgrade that
  changes them fails with the API server's terse CEL error) and it runs from its own snapshot of
  the runtime (kubeflow/trainer v2.3.0 pkg/runtime/core/snapshot.go: a changed runtime never reaches
  it), so the check says what changed and what to do first. No ``lookup``: Argo CD renders
  with ``helm template``, so the hook reads the live object through the API.
* **Kueue** (:func:`check_queue`): the LocalQueue named by ``job.queueName`` must exist (else the
  job waits forever once Kueue manages it); and Kueue >= v0.19 no longer enables the
  ``kubeflow.org/pytorchjob`` integration by default
  (kubernetes-sigs/kueue@v0.19.2:config/components/manager/controller_manager_config.yaml:53-57),
  in which case the label is ignored — a warning, since a namespaced hook cannot read Kueue's
  configuration.
* **Pod Security** (:func:`check_pod_security`): with a Master replica the operator appends
  ``init-pytorch`` (no securityContext) to every Worker
  (pkg/controller.v1/pytorch/initcontainer.go:35-46,116-134); a namespace labelled
  ``pod-security.kubernetes.io/enforce: restricted`` rejects those pods — only an operator
  setting fixes that.
* **Cleanup** (:func:`delete_own_rbac`): Helm deletes a failed hook's resources by
  ``hook-failed`` only for the failing hook itself (helm/helm pkg/action/hooks.go ``execHook``),
  never the ServiceAccount/Role/RoleBinding created before it; a Role that may read Secrets
  would outlive the release. A failed check deletes its own RoleBinding (and
  ClusterRoleBinding) before it exits.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.kube import Forbidden, NotFound
from ..core.problems import ERROR, WARNING, Problem

log = logging.getLogger(__name__)

SPEC_CHECKSUM = "llm-finetune.io/spec-checksum"
CONFIG_CHECKSUM = "checksum/config"
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
KUEUE_GROUP, KUEUE_VERSIONS = "kueue.x-k8s.io", ("v1beta1", "v1beta2")


# (group, version, plural, kind) of the job each backend renders
JOB_APIS = {"pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
            "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")}
WHY = {"pytorchjob": "pods recreated later would run the new values beside ranks on the old ones",
       # kubeflow/trainer v2.3.0 pkg/apis/trainer/v1alpha1/trainjob_types.go (CEL self == oldSelf) and
       # pkg/runtime/core/snapshot.go: the TrainJob keeps running its copy of the old runtime
       "trainjob": "its trainer, initializer and runtimeRef are immutable and it runs from its snapshot of the old runtime"}


def _config_checksums(job: dict[str, Any]) -> set[str]:
    """The config checksum a live job runs with: its pod templates' (PyTorchJob) or its own annotation (TrainJob)."""
    own = ((job.get("metadata") or {}).get("annotations") or {}).get(CONFIG_CHECKSUM)
    specs = ((job.get("spec") or {}).get("pytorchReplicaSpecs") or {}).values()
    return {str((((s or {}).get("template") or {}).get("metadata") or {}).get("annotations", {}).get(CONFIG_CHECKSUM))
            for s in specs} | ({str(own)} if own else set())


def check_existing_job(kube, name: str, spec_checksum: str, config_checksum: str, run_id: str,
                       backend: str = "pytorchjob") -> list[Problem]:
    """A live job (PyTorchJob or TrainJob) of this name must be the same run (same spec), or the upgrade is refused."""
    if not name or not spec_checksum:
        return []
    group, version, plural, kind = JOB_APIS[backend]
    custom = kube.client.CustomObjectsApi(kube.api)
    try:
        job = kube.call(f"GET {kind.lower()} {name}", custom.get_namespaced_custom_object, group, version,
                        kube.namespace, plural, name)
    except NotFound:
        log.info("no %s %s yet: a new run", kind, name)
        return []
    except Forbidden:
        return [Problem("runId", f"reading {kind} {name!r} is forbidden: cannot tell whether this upgrade changes a live run",
                        f"the preflight Role must allow get on {plural} with resourceNames [{name}]", WARNING, "run")]
    live = ((job.get("metadata") or {}).get("annotations") or {}).get(SPEC_CHECKSUM)
    if live == spec_checksum:
        log.info("%s %s exists with the same spec: nothing of the run changes", kind, name)
        return []
    what = "config (model, dataset, data, training, output, download)" if config_checksum not in _config_checksums(job) \
        else "job spec (pods, resources, images, run policy)"
    state = next((c.get("type") for c in reversed((job.get("status") or {}).get("conditions") or []) if c.get("status") == "True"), "")
    run = f"runId {run_id!r}" if run_id else "this release (no runId)"
    return [Problem("runId", f"{kind} {name!r} ({run}{', ' + state if state else ''}) already exists with a different {what}: "
                    f"a run is never changed in place ({WHY[backend]})",
                    f"set a new runId (--set runId=...) for a new run that reuses the downloads, or delete the job "
                    f"(kubectl -n {kube.namespace} delete {kind.lower()} {name}) to re-run {run} with the new values", ERROR, "run")]


def check_queue(kube, queue: str, *, pytorchjob: bool = True) -> list[Problem]:
    """The LocalQueue exists; and, for a PyTorchJob, the integration caveat (Kueue >= v0.19) as a warning."""
    if not queue:
        return []
    problems = [] if not pytorchjob else [Problem("job.queueName", f"Kueue >= v0.19 ignores the queue label of a PyTorchJob unless its Configuration "
                        "lists kubeflow.org/pytorchjob in integrations.frameworks (off by default since v0.19): the job would "
                        "then start at once, outside the queue's quota",
                        "check with the cluster admin; once created, a managed job shows spec.runPolicy.suspend: true until admitted",
                        WARNING, "kueue")]
    custom = kube.client.CustomObjectsApi(kube.api)
    for version in KUEUE_VERSIONS:
        try:
            kube.call(f"GET localqueue {queue}", custom.get_namespaced_custom_object, KUEUE_GROUP, version,
                      kube.namespace, "localqueues", queue)
            log.info("Kueue LocalQueue %s exists", queue)
            return problems
        except NotFound:
            continue
        except Forbidden:
            return problems + [Problem("job.queueName", f"reading LocalQueue {queue!r} is forbidden",
                                       f"the preflight Role must allow get on localqueues with resourceNames [{queue}]", WARNING, "kueue")]
    return problems + [Problem("job.queueName", f"LocalQueue {queue!r} not found in namespace {kube.namespace!r} (or Kueue is not installed)",
                               "create the LocalQueue, or leave job.queueName empty", ERROR, "kueue")]


def check_pod_security(kube) -> list[Problem]:
    """A Master topology in a namespace enforcing "restricted": the operator's init container is rejected."""
    core = kube.client.CoreV1Api(kube.api)
    flags = ("start the Training Operator with --pytorch-init-container-template-file pointing at a template whose "
             "init-pytorch has securityContext {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, runAsNonRoot: true, "
             "seccompProfile: {type: RuntimeDefault}} (and --pytorch-init-container-image for a mirror of alpine:3.10); or use "
             "shared mode with a ReadWriteMany claim (no Master replica)")
    try:
        ns = kube.call(f"GET namespace {kube.namespace}", core.read_namespace, kube.namespace)
    except (Forbidden, NotFound):
        return [Problem("storage.mode", f"cannot read namespace {kube.namespace!r} to check its Pod Security level; the Workers "
                        "get the operator's init-pytorch container (no securityContext), which \"restricted\" rejects",
                        "if the namespace enforces restricted: " + flags, WARNING, "pod-security")]
    level = ((ns.metadata.labels if ns.metadata else None) or {}).get(ENFORCE_LABEL, "")
    if level == "restricted":
        return [Problem("storage.mode", f"namespace {kube.namespace!r} enforces Pod Security \"restricted\": the Training "
                        "Operator adds init-pytorch without a securityContext to every Worker pod (a Master replica exists in "
                        "perPod mode with the claim and several pods), so the API server rejects them and the job never runs",
                        flags, ERROR, "pod-security")]
    log.info("namespace %s: Pod Security enforce=%s", kube.namespace, level or "(none)")
    return []


def delete_own_rbac(kube, names: list[str]) -> None:
    """Delete this hook's RoleBinding (and ClusterRoleBinding) so that no permission outlives a failed check.

    Only the bindings: each delete needs the permission the binding grants, so the first one
    deleted would take away the right to delete the other object of its pair. A Role without a
    binding grants nothing (binding it again needs its permissions: RBAC escalation prevention);
    the next install deletes it (before-hook-creation).
    """
    rbac = kube.client.RbacAuthorizationV1Api(kube.api)
    calls = []
    if len(names) > 1:
        calls.append((rbac.delete_cluster_role_binding, "clusterrolebinding", (names[1],)))
    if names:
        calls.append((rbac.delete_namespaced_role_binding, "rolebinding", (names[0], kube.namespace)))
    for fn, kind, args in calls:
        try:
            kube.call(f"DELETE {kind} {args[0]}", fn, *args)
            log.info("deleted %s %s: the check failed, none of its permissions stay", kind, args[0])
        except (Forbidden, NotFound) as exc:
            log.warning("could not delete %s %s: %s", kind, args[0], type(exc).__name__)
