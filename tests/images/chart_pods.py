"""The containers the chart renders, and the engine arguments their securityContext becomes (run-local's own)."""

from __future__ import annotations

from pathlib import Path

from llm_finetune.core.helm import find_chart, load_manifests, template
from llm_finetune.local.containers import is_podman, security_args
from llm_finetune.local.podspec import container_spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "values-examples" / "v1-llm-lora.yaml"


def rendered_containers(helm: str, *sets: str) -> list[tuple[str, dict, dict, bool]]:
    """(workload, pod spec, container, is init) of every container the chart renders for a v1 example:
    the PyTorchJob's replicas, the preflight hook Job and the helm test Pod."""
    docs = load_manifests(template(find_chart(None), values_files=[str(EXAMPLE)], set_values=list(sets),
                                   release="t", helm=helm))
    specs = []
    for d in docs:
        if d["kind"] == "PyTorchJob":
            specs += [(f"PyTorchJob/{r}", s["template"]["spec"]) for r, s in d["spec"]["pytorchReplicaSpecs"].items()]
        elif d["kind"] == "Job":
            specs.append((f"Job/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            specs.append((f"Pod/{d['metadata']['name']}", d["spec"]))
    return [(where, spec, c, init) for where, spec in specs
            for c, init in [(c, True) for c in spec.get("initContainers") or []]
            + [(c, False) for c in spec.get("containers") or []]]


def chart_security_args(engine: list[str], pod_spec: dict, container: dict) -> list[str]:
    """The engine arguments run-local --runtime container derives from a rendered container's (and its pod's)
    securityContext: user/group, fsGroup, read-only root, capabilities, no-new-privileges, seccomp."""
    return security_args(container_spec("p", pod_spec, container, folders={}, env={}, init=False), is_podman(engine))
