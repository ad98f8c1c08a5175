"""What a pod knows about itself: the downward-API env the chart sets on every job container.

=========================  ==================================================================
``LLM_FINETUNE_POD_NAME``  ``metadata.name`` (``<job>-worker-3``): names the pod in the attempt
                           ledger and in the Events it posts
``LLM_FINETUNE_POD_INDEX`` ``metadata.labels['training.kubeflow.org/replica-index']``, the label
                           the Training Operator puts on every pod it creates
                           (kubeflow/training-operator@v1.9.0:pkg/controller.v1/common/pod.go:401-404)
``POD_NAMESPACE``          ``metadata.namespace``
=========================  ==================================================================

Outside a pod (a plain ``llm-finetune initialize``): the host name, index 0, ``default``.
"""

from __future__ import annotations

import os
import socket

POD_NAME_ENV = "LLM_FINETUNE_POD_NAME"
POD_INDEX_ENV = "LLM_FINETUNE_POD_INDEX"
NAMESPACE_ENV = "POD_NAMESPACE"


def pod_name() -> str:
    return os.environ.get(POD_NAME_ENV) or socket.gethostname()


def pod_index() -> int:
    raw = os.environ.get(POD_INDEX_ENV, "") or "0"
    return int(raw) if raw.isdigit() else 0


def namespace() -> str:
    return os.environ.get(NAMESPACE_ENV) or "default"
