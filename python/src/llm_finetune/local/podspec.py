"""What a rendered pod spec says about one of its containers, for a runtime that runs it as a real container.

The plan (``plan.py``) calls :func:`container_spec` for every init and main container of every pod
it plans, beside the host-process form (``argv``/``env`` with the mount paths mapped to folders).
Nothing here runs anything; ``containers.py`` applies it. What is modelled, and where from
(kubernetes/kubernetes, pkg/kubelet and pkg/volume):

* securityContext: a container's ``runAsUser``/``runAsGroup``/``runAsNonRoot``/``seccompProfile``
  win over the pod's; ``fsGroup`` and ``supplementalGroups`` are the pod's and become supplementary
  groups of every container (kuberuntime/security_context.go ``determineEffectiveSecurityContext``);
  no ``seccompProfile`` means Unconfined (the kubelet's ``seccompDefault`` is off by default);
* resources: ``limits`` cpu/memory are the container's limits, ``requests.cpu`` its CPU weight;
* volumes: a claim and an ephemeral volume keep their folders (the plan's), an emptyDir is a
  per-pod folder (mode 0777, empty_dir.go ``perm``) or, with ``medium: Memory``, a tmpfs sized
  ``min(sizeLimit, the pod's memory limit)`` (empty_dir.go ``calculateEmptyDirMemorySize``), a
  configMap a read-only folder of its keys; ``fsGroup`` ownership is applied to writable
  folders as volume/volume_linux.go ``changeFilePermission`` does;
* the termination message file is mounted at ``terminationMessagePath``
  (kuberuntime/kuberuntime_container.go ``makeMounts``: a 0666 file per container).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..core.errors import UserError
from ..validate.rules import parse_quantity

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
DEFAULT_GRACE_S = 30  # core/v1 PodSpec terminationGracePeriodSeconds default


@dataclass(frozen=True)
class Mount:
    path: str               # mountPath in the container
    kind: str               # claim | ephemeral | emptyDir | memory | configMap
    volume: str             # the pod's volume name
    host: str               # the local folder (unused for memory: a tmpfs)
    read_only: bool
    size_bytes: int | None = None  # memory: the tmpfs size; emptyDir: its sizeLimit (eviction)


@dataclass
class ContainerSpec:
    pod: str
    name: str
    image: str
    command: list[str]               # as rendered: replaces the image's ENTRYPOINT (and its CMD) when set
    args: list[str]                  # as rendered: replace the image's CMD
    env: dict[str, str]              # as the container sees it (no path mapping)
    secret_env: tuple[str, ...]      # names of env from Secrets: never put on a command line
    mounts: list[Mount]
    user: int | None
    group: int | None
    groups: list[int]                # fsGroup + supplementalGroups
    run_as_non_root: bool
    fs_group: int | None
    fs_group_change_policy: str      # Always | OnRootMismatch
    read_only_root: bool
    no_new_privileges: bool
    cap_add: list[str]
    cap_drop: list[str]
    seccomp: str                     # RuntimeDefault | Unconfined | Localhost/<profile>
    cpu_limit: Decimal | None
    cpu_request: Decimal | None
    memory_limit: int | None
    working_dir: str | None
    termination_message_path: str = DEFAULT_TERMINATION_MESSAGE_PATH
    grace_s: int = DEFAULT_GRACE_S   # the pod's terminationGracePeriodSeconds: SIGTERM, then SIGKILL after it
    init: bool = False
    labels: dict[str, str] = field(default_factory=dict)


def _quantity(value: Any, where: str) -> Decimal | None:
    if value is None:
        return None
    try:
        return parse_quantity(value)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None


def _security(pod_spec: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    psc = pod_spec.get("securityContext") or {}
    csc = container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return csc[key] if key in csc else psc.get(key)

    seccomp = pick("seccompProfile") or {}
    kind = seccomp.get("type") or "Unconfined"
    if kind == "Localhost":
        kind = f"Localhost/{seccomp.get('localhostProfile', '')}"
    caps = csc.get("capabilities") or {}
    groups = ([psc["fsGroup"]] if psc.get("fsGroup") is not None else []) + list(psc.get("supplementalGroups") or [])
    return {
        "user": pick("runAsUser"), "group": pick("runAsGroup"), "groups": groups,
        "run_as_non_root": bool(pick("runAsNonRoot")), "fs_group": psc.get("fsGroup"),
        "fs_group_change_policy": psc.get("fsGroupChangePolicy") or "Always",
        "read_only_root": bool(csc.get("readOnlyRootFilesystem")),
        # allowPrivilegeEscalation defaults to true unless the container is privileged or has CAP_SYS_ADMIN
        "no_new_privileges": csc.get("allowPrivilegeEscalation") is False,
        "cap_add": list(caps.get("add") or []), "cap_drop": list(caps.get("drop") or []), "seccomp": kind,
    }


def pod_memory_limit(pod_spec: dict[str, Any]) -> int | None:
    """The pod's memory limit as the kubelet sets its cgroup: only when every container has one
    (kubelet cm/helpers_linux.go ``ResourceConfigForPod``): max(sum of containers, largest init container)."""
    def limit(c: dict[str, Any]) -> Decimal | None:
        return _quantity(((c.get("resources") or {}).get("limits") or {}).get("memory"), c.get("name", "?"))

    mains = [limit(c) for c in pod_spec.get("containers") or []]
    inits = [limit(c) for c in pod_spec.get("initContainers") or []]
    if not mains or any(v is None for v in mains + inits):
        return None
    return int(max([sum(mains)] + inits))  # type: ignore[arg-type]


def _mounts(pod: str, pod_spec: dict[str, Any], container: dict[str, Any], folders: dict[str, str]) -> list[Mount]:
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    out = []
    for m in container.get("volumeMounts") or []:
        v = volumes.get(m["name"])
        if v is None:
            raise UserError(f"pod {pod}: container {container['name']} mounts volume {m['name']!r}, which the pod "
                            "does not define")
        read_only = bool(m.get("readOnly"))
        size = None
        if "persistentVolumeClaim" in v:
            kind, read_only = "claim", read_only or bool(v["persistentVolumeClaim"].get("readOnly"))
        elif "ephemeral" in v:
            kind = "ephemeral"
        elif "configMap" in v:
            kind, read_only = "configMap", True  # the kubelet mounts configMap volumes read-only
        elif "emptyDir" in v:
            ed = v["emptyDir"] or {}
            limit = _quantity(ed.get("sizeLimit"), f"pod {pod}: volume {m['name']}.emptyDir.sizeLimit")
            kind = "memory" if ed.get("medium") == "Memory" else "emptyDir"
            if kind == "memory":
                pod_limit = pod_memory_limit(pod_spec)
                candidates = [int(x) for x in (limit, pod_limit) if x is not None and x > 0]
                size = min(candidates) if candidates else None
            else:
                size = int(limit) if limit else None
        else:
            raise UserError(f"pod {pod}: volume {m['name']!r} of an unsupported type for run-local",
                            hint="run-local supports persistentVolumeClaim, ephemeral, emptyDir and configMap volumes")
        out.append(Mount(m["mountPath"].rstrip("/") or "/", kind, m["name"], str(folders.get(m["name"], "")),
                         read_only, size))
    return out


def secret_env_names(container: dict[str, Any]) -> tuple[str, ...]:
    return tuple(e["name"] for e in container.get("env") or [] if "secretKeyRef" in (e.get("valueFrom") or {}))


def container_spec(pod: str, pod_spec: dict[str, Any], container: dict[str, Any], *, folders: dict[str, str],
                   env: dict[str, str], init: bool, labels: dict[str, str] | None = None) -> ContainerSpec:
    """The container as the pod spec defines it; ``folders`` are the plan's volume folders, ``env`` its env."""
    name = container["name"]
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    where = f"pod {pod}: container {name}.resources"
    memory = _quantity(limits.get("memory"), f"{where}.limits.memory")
    return ContainerSpec(
        pod=pod, name=name, image=container.get("image") or "",
        command=list(container.get("command") or []), args=list(container.get("args") or []),
        env=dict(env), secret_env=secret_env_names(container), mounts=_mounts(pod, pod_spec, container, folders),
        cpu_limit=_quantity(limits.get("cpu"), f"{where}.limits.cpu"),
        cpu_request=_quantity(requests.get("cpu"), f"{where}.requests.cpu"),
        memory_limit=int(memory) if memory is not None else None,
        working_dir=container.get("workingDir"),
        termination_message_path=container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH,
        grace_s=int(pod_spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)),
        init=init, labels=dict(labels or {}), **_security(pod_spec, container))
