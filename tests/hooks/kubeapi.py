"""A small HTTP fixture serving the few Kubernetes API routes the hooks call.

No API server can run here (no kind/k3s/kube-apiserver), so this stands in for one:
real HTTP, real ``kubernetes`` client, real kubeconfig. It answers like the API server
(JSON objects, ``Status`` errors with 401/403/404) and can enforce RBAC from a rendered
``Role`` (``resourceNames``), so tests also prove the chart's Role lets the hook read what
it reads. Every request is recorded.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "test-token"

_ROUTES = [
    (re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)$"), "discovery"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>secrets|persistentvolumeclaims)/(?P<name>[^/]+)$"), "core"),
    (re.compile(r"^/apis/storage.k8s.io/v1/storageclasses/(?P<name>[^/]+)$"), "storageclass"),
    (re.compile(r"^/apis/kubeflow.org/v1/namespaces/(?P<ns>[^/]+)/pytorchjobs/(?P<name>[^/]+)$"), "pytorchjob"),
    (re.compile(r"^/apis/trainer.kubeflow.org/v1alpha1/namespaces/(?P<ns>[^/]+)/(?P<resource>trainjobs|trainingruntimes)/(?P<name>[^/]+)$"), "trainer"),
    (re.compile(r"^/apis/trainer.kubeflow.org/v1alpha1/(?P<resource>clustertrainingruntimes)/(?P<name>[^/]+)$"), "trainer"),
    (re.compile(r"^/api/v1/namespaces/(?P<name>[^/]+)$"), "namespace"),
    (re.compile(r"^/apis/kueue.x-k8s.io/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/localqueues/(?P<name>[^/]+)$"), "localqueue"),
]
_POST_ROUTES = [(re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$"), "create_event")]
_DELETE_ROUTES = [
    (re.compile(r"^/apis/rbac.authorization.k8s.io/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>rolebindings|roles)/(?P<name>[^/]+)$"), "delete_rbac"),
    (re.compile(r"^/apis/rbac.authorization.k8s.io/v1/(?P<resource>clusterrolebindings|clusterroles)/(?P<name>[^/]+)$"), "delete_rbac"),
]


@dataclass
class Cluster:
    """What the fake API server holds. Mutate it in a test before calling the hook."""

    served: dict[str, list[str]] = field(default_factory=lambda: {"kubeflow.org/v1": ["pytorchjobs", "pytorchjobs/status"]})
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (ns, name) -> {key: plain value}
    pvcs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (ns, name) -> PVC object
    storageclasses: dict[str, dict[str, Any]] = field(default_factory=dict)
    pytorchjobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    trainer: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (resource, ns or "", name) -> object
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    localqueues: set[tuple[str, str]] = field(default_factory=set)  # (ns, name); served as kueue.x-k8s.io/v1beta1
    events: list[dict[str, Any]] = field(default_factory=list)  # Events created (POST)
    rbac_objects: set[tuple[str, str]] = field(default_factory=set)  # (resource, name) that DELETE may remove
    rbac: list[dict[str, Any]] | None = None  # Role rules; None = everything allowed
    cluster_rbac: list[dict[str, Any]] = field(default_factory=list)  # rules for cluster-scoped reads
    fail_with: int | None = None  # answer every request with this status (e.g. 503)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def add_secret(self, ns: str, name: str, data: dict[str, str]) -> None:
        self.secrets[(ns, name)] = data

    def add_pvc(self, ns: str, name: str, *, phase: str = "Bound", modes=("ReadWriteOnce",), storage_class: str = "standard") -> None:
        self.pvcs[(ns, name)] = {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": ns},
            "spec": {"accessModes": list(modes), "storageClassName": storage_class, "resources": {"requests": {"storage": "10Gi"}}},
            "status": {"phase": phase, **({"accessModes": list(modes)} if phase == "Bound" else {})},
        }

    def add_trainjob(self, ns: str, name: str, conditions: list[tuple[str, str, str]], spec: dict[str, Any] | None = None) -> None:
        """A TrainJob as kubeflow/trainer v2.3.0 reports it (conditions Complete / Failed / Suspended)."""
        self.trainer[("trainjobs", ns, name)] = {
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": name, "namespace": ns},
            "spec": spec or {}, "status": {"conditions": [{"type": t, "status": s, "reason": t, "message": m} for t, s, m in conditions]}}

    def add_runtime(self, obj: dict[str, Any]) -> None:
        """A (Cluster)TrainingRuntime, e.g. the one the chart renders."""
        resource = obj["kind"].lower() + "s"
        self.trainer[(resource, obj["metadata"].get("namespace", "") if resource == "trainingruntimes" else "", obj["metadata"]["name"])] = obj

    def add_storageclass(self, name: str, binding: str) -> None:
        self.storageclasses[name] = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
                                     "provisioner": "example.com/csi", "volumeBindingMode": binding}

    def add_pytorchjob(self, ns: str, name: str, conditions: list[tuple[str, str, str]], *,
                       manifest: dict[str, Any] | None = None) -> None:
        """A live job: ``manifest`` (a rendered PyTorchJob) or an empty spec, with a uid and the given conditions."""
        job = json.loads(json.dumps(manifest)) if manifest else {
            "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name}, "spec": {"pytorchReplicaSpecs": {}}}
        job["metadata"].update({"namespace": ns, "uid": f"uid-{name}"})
        job["status"] = {"conditions": [{"type": t, "status": s, "message": m, "reason": f"PyTorchJob{t}"} for t, s, m in conditions]}
        self.pytorchjobs[(ns, name)] = job

    def allowed(self, group: str, resource: str, name: str, rules: list[dict[str, Any]] | None, verb: str = "get") -> bool:
        if rules is None:
            return True
        for rule in rules:
            if (group in rule.get("apiGroups", []) and resource in rule.get("resources", []) and verb in rule.get("verbs", [])
                    and (not rule.get("resourceNames") or name in rule["resourceNames"])):
                return True
        return False


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


class _Handler(BaseHTTPRequestHandler):
    cluster: Cluster

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        c = self.cluster
        path = self.path.split("?")[0]
        c.requests.append(("GET", path))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
        if c.fail_with:
            return self._send(c.fail_with, _status(c.fail_with, "ServiceUnavailable", "the server is currently unable to handle the request"))
        for rx, kind in _ROUTES:
            m = rx.match(path)
            if m:
                return getattr(self, f"_{kind}")(**m.groupdict())
        return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))

    def _forbidden(self, resource: str, name: str, ns: str | None) -> None:
        where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
        self._send(403, _status(403, "Forbidden", f'{resource} "{name}" is forbidden: User "system:serviceaccount:{ns}:hook" cannot get resource "{resource}"{where}'))

    def _discovery(self, group: str, version: str) -> None:
        names = self.cluster.served.get(f"{group}/{version}")
        if names is None:
            return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
        self._send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}",
                         "resources": [{"name": n, "singularName": "", "namespaced": True, "kind": "PyTorchJob",
                                        "verbs": ["get", "list", "create"]} for n in names]})

    def _core(self, ns: str, resource: str, name: str) -> None:
        c = self.cluster
        if not c.allowed("", resource, name, c.rbac):
            return self._forbidden(resource, name, ns)
        if resource == "secrets":
            data = c.secrets.get((ns, name))
            if data is None:
                return self._send(404, _status(404, "NotFound", f'secrets "{name}" not found'))
            return self._send(200, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": ns},
                                    "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
        pvc = c.pvcs.get((ns, name))
        if pvc is None:
            return self._send(404, _status(404, "NotFound", f'persistentvolumeclaims "{name}" not found'))
        return self._send(200, pvc)

    def _storageclass(self, name: str) -> None:
        c = self.cluster
        if not c.allowed("storage.k8s.io", "storageclasses", name, c.cluster_rbac):
            return self._forbidden("storageclasses", name, None)
        sc = c.storageclasses.get(name)
        if sc is None:
            return self._send(404, _status(404, "NotFound", f'storageclasses.storage.k8s.io "{name}" not found'))
        self._send(200, sc)

    def _pytorchjob(self, ns: str, name: str) -> None:
        c = self.cluster
        if not c.allowed("kubeflow.org", "pytorchjobs", name, c.rbac):
            return self._forbidden("pytorchjobs.kubeflow.org", name, ns)
        job = c.pytorchjobs.get((ns, name))
        if job is None:
            return self._send(404, _status(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found'))
        self._send(200, job)


    def _trainer(self, resource: str, name: str, ns: str | None = None) -> None:
        c = self.cluster
        if not c.allowed("trainer.kubeflow.org", resource, name, c.rbac if ns else c.cluster_rbac):
            return self._forbidden(f"{resource}.trainer.kubeflow.org", name, ns)
        obj = c.trainer.get((resource, ns or "", name))
        if obj is None:
            return self._send(404, _status(404, "NotFound", f'{resource}.trainer.kubeflow.org "{name}" not found'))
        self._send(200, obj)
    def _namespace(self, name: str) -> None:
        c = self.cluster
        if not c.allowed("", "namespaces", name, c.cluster_rbac):
            return self._forbidden("namespaces", name, None)
        if name not in c.namespaces:
            return self._send(404, _status(404, "NotFound", f'namespaces "{name}" not found'))
        self._send(200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": c.namespaces[name]}})

    def _localqueue(self, version: str, ns: str, name: str) -> None:
        c = self.cluster
        if not c.allowed("kueue.x-k8s.io", "localqueues", name, c.rbac):
            return self._forbidden("localqueues.kueue.x-k8s.io", name, ns)
        if version != "v1beta1" or (ns, name) not in c.localqueues:
            return self._send(404, _status(404, "NotFound", f'localqueues.kueue.x-k8s.io "{name}" not found'))
        self._send(200, {"apiVersion": f"kueue.x-k8s.io/{version}", "kind": "LocalQueue", "metadata": {"name": name, "namespace": ns}})

    def _body(self) -> dict[str, Any]:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

    def _dispatch(self, method: str, routes) -> None:
        c = self.cluster
        path = self.path.split("?")[0]
        c.requests.append((method, path))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
        for rx, kind in routes:
            m = rx.match(path)
            if m:
                return getattr(self, f"_{kind}")(**m.groupdict())
        return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST", _POST_ROUTES)

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE", _DELETE_ROUTES)

    def _create_event(self, ns: str) -> None:
        c, body = self.cluster, self._body()
        if not c.allowed("", "events", "", c.rbac, "create"):
            return self._forbidden("events", "", ns)
        body.setdefault("metadata", {})["name"] = body["metadata"].get("generateName", "e.") + str(len(c.events))
        c.events.append(body)
        self._send(201, body)

    def _delete_rbac(self, resource: str, name: str, ns: str | None = None) -> None:
        c = self.cluster
        rules = c.rbac if ns else c.cluster_rbac
        if not c.allowed("rbac.authorization.k8s.io", resource, name, rules, "delete"):
            return self._forbidden(resource, name, ns)
        if (resource, name) not in c.rbac_objects:
            return self._send(404, _status(404, "NotFound", f'{resource}.rbac.authorization.k8s.io "{name}" not found'))
        c.rbac_objects.discard((resource, name))
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


class KubeAPI:
    """The fixture server on 127.0.0.1 and a kubeconfig pointing at it."""

    def __init__(self, workdir) -> None:
        self.cluster = Cluster()
        handler = type("Handler", (_Handler,), {"cluster": self.cluster})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "hook", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "hook", "namespace": "kubeconfig-ns"}}],
        }))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
