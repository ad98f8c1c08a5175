"""A pod's failure as a Kubernetes Event on its PyTorchJob, where ``kubectl describe pytorchjob`` shows it.

The Training Operator v1.9 never copies a failed pod's termination message to the job: it
records ``ExitedWithCode`` ("Pod: ns.pod exited with code 1") and ``PyTorchJobFailed`` ("job
... is failing because "Worker" replica(s) failed."), and container messages only for pods
still active (kubeflow/training-operator@v1.9.0:pkg/controller.v1/common/pod.go:339-373,
pkg/core/job.go:35-79). So ``launch`` posts the one line itself, best effort: a Warning Event
whose ``involvedObject`` is the PyTorchJob with its uid (``kubectl describe`` selects events by
kind, name, namespace and uid), reason ``InitializerFailed``, ``TrainerFailed`` or ``GaveUp``.

Where it goes: ``$LLM_FINETUNE_EVENTS_FILE`` when set (run-local: one JSON object per line),
else the API through the pod's ServiceAccount when ``$LLM_FINETUNE_JOB_EVENTS`` is ``true``
(the chart sets it with ``job.failureEvents``; its Role allows ``create`` on events and ``get``
on this one pytorchjob). It never raises and never changes the exit code.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from typing import Any

from .pod import namespace, pod_name

log = logging.getLogger(__name__)

EVENTS_FILE_ENV = "LLM_FINETUNE_EVENTS_FILE"
EVENTS_ENV = "LLM_FINETUNE_JOB_EVENTS"
COMPONENT = "llm-finetune"
MESSAGE_LIMIT = 1024


def event_body(job: str, ns: str, uid: str, reason: str, message: str, pod: str) -> dict[str, Any]:
    """A core/v1 Event about PyTorchJob ``job`` (``uid`` may be empty when there is no API)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{job}.", "namespace": ns},
        "involvedObject": {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": job,
                           "namespace": ns, "uid": uid},
        "type": "Warning", "reason": reason, "message": message[:MESSAGE_LIMIT],
        "source": {"component": COMPONENT, "host": pod}, "reportingComponent": COMPONENT,
        "reportingInstance": pod, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


def report(job: str, reason: str, message: str) -> bool:
    """Record ``message`` as a Warning Event on PyTorchJob ``job``; whether it was recorded."""
    sink = os.environ.get(EVENTS_FILE_ENV)
    try:
        if sink:
            with open(sink, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(event_body(job, namespace(), "", reason, message, pod_name())) + "\n")
            return True
        if os.environ.get(EVENTS_ENV) == "true":
            _post(job, reason, message)
            return True
    except Exception as exc:  # noqa: BLE001 - best effort: the exit code and the termination log still say it
        log.warning("could not record the failure as an Event on PyTorchJob %s: %s", job, exc)
    return False


def _post(job: str, reason: str, message: str) -> None:
    from .kube import Kube

    kube = Kube()
    custom = kube.client.CustomObjectsApi(kube.api)
    obj = kube.call(f"GET pytorchjob {job}", custom.get_namespaced_custom_object,
                    "kubeflow.org", "v1", kube.namespace, "pytorchjobs", job)
    body = event_body(job, kube.namespace, obj["metadata"]["uid"], reason, message, pod_name())
    core = kube.client.CoreV1Api(kube.api)
    kube.call(f"POST event on pytorchjob {job}", core.create_namespaced_event, kube.namespace, body)
    log.info("recorded as Event %s on PyTorchJob %s", reason, job)
