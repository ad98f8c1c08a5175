import pytest

from hooks.kubeapi import KubeAPI


@pytest.fixture
def kube_api(tmp_path, monkeypatch):
    """A fresh fake API (empty cluster that serves kubeflow.org/v1) and the env that points the hooks at it."""
    api = KubeAPI(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("POD_NAMESPACE", "ml")
    monkeypatch.setenv("LLM_FINETUNE_KUBE_BACKOFF", "0")
    yield api
    api.stop()
