"""The few Kubernetes API calls the chart's commands make, with errors a person can act on.

The hooks (preflight, verify) read what they check; a failing job pod posts its one-line
message as an Event on its PyTorchJob (:mod:`.events`).

In a pod the client uses the in-cluster ServiceAccount; elsewhere ``$KUBECONFIG`` /
``~/.kube/config`` (tests point it at a small HTTP fixture). The namespace is
``$POD_NAMESPACE`` (downward API), else the kubeconfig context's, else ``default``.
Errors: 403 → :class:`Forbidden` naming the missing RBAC rule; 404 → :class:`NotFound`;
no API or 5xx after retries → ExternalError (exit 202).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ExternalError, UserError

log = logging.getLogger(__name__)
ATTEMPTS = 3
BACKOFF_ENV = "LLM_FINETUNE_KUBE_BACKOFF"  # seconds before the first retry (tests set 0)


@dataclass(frozen=True)
class JobApi:
    """The API of the job object a backend renders, and how its conditions read."""

    kind: str
    group: str
    version: str
    plural: str
    done: str  # the condition type of a finished, successful job
    waiting: tuple[str, ...]  # condition types of a job not finished yet, most telling first
    logs: str  # how to read its pods' logs: {ns}, {name}


# Training Operator v1 (kubeflow/training-operator v1.9.0 pkg/apis/kubeflow.org/v1) and Trainer v2
# (kubeflow/trainer v2.3.0 pkg/apis/trainer/v1alpha1/trainjob_types.go: Complete, Failed, Suspended).
JOB_APIS = {
    "PyTorchJob": JobApi("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "Succeeded",
                         ("Suspended", "Restarting", "Running", "Created"),
                         # the pods' label: kubeflow/training-operator@v1.9.0 pkg/apis/kubeflow.org/v1/common_types.go
                         # JobNameLabel (Worker-only by default: no <job>-master-0 pod)
                         "kubectl -n {ns} logs -l training.kubeflow.org/job-name={name} --all-containers --prefix"),
    "TrainJob": JobApi("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete", ("Suspended",),
                       "kubectl -n {ns} logs -l jobset.sigs.k8s.io/jobset-name={name} --all-containers --prefix"),
}


def job_api(kind: str) -> JobApi:
    try:
        return JOB_APIS[kind]
    except KeyError:
        raise UserError(f"unknown job kind {kind!r}", field="JOB_KIND",
                        hint=f"the chart sets one of {', '.join(JOB_APIS)}; re-render the hook") from None


class NotFound(Exception):
    pass


class Forbidden(Exception):
    pass


class Kube:
    """A connected API client and the namespace to work in."""

    def __init__(self) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        namespace = ""
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            try:
                config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
                namespace = config.list_kube_config_contexts(config_file=kubeconfig)[1]["context"].get("namespace", "")
            except (config.ConfigException, OSError, TypeError, KeyError, IndexError) as exc:
                raise ExternalError(f"no Kubernetes API access: not in a pod and no usable kubeconfig ({exc})",
                                    hint="run it in the cluster (the chart's hook) or set KUBECONFIG") from None
        cfg.retries = 0  # retries are ours (call), with a log line each
        self.namespace = os.environ.get("POD_NAMESPACE") or namespace or "default"
        self.api = client.ApiClient(cfg)
        self.client = client

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args)``; 404/403 as NotFound/Forbidden, transient failures retried, then ExternalError."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        for attempt in range(1, ATTEMPTS + 1):
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                if exc.status == 404:
                    raise NotFound(what) from None
                if exc.status == 403:
                    raise Forbidden(what) from None
                if exc.status == 401:
                    raise UserError(f"{what}: unauthorized (401)", hint="the hook's ServiceAccount token was rejected") from None
                if exc.status is not None and exc.status < 500 and exc.status != 429:
                    raise ExternalError(f"{what}: HTTP {exc.status} {exc.reason}") from None
                error = f"HTTP {exc.status} {exc.reason}"
            except (HTTPError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < ATTEMPTS:
                log.warning("%s failed (%s), retrying (%d/%d)", what, error, attempt, ATTEMPTS)
                time.sleep(float(os.environ.get(BACKOFF_ENV, "1.0")) * attempt)
        raise ExternalError(f"{what}: the Kubernetes API failed after {ATTEMPTS} attempts ({error})",
                            hint="check the API server; the hook can be re-run")
