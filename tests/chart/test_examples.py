"""Every values example (and the chart defaults) lints, renders deterministically, and renders
objects that Kubernetes, the v1 reference SDK, the PyTorchJob CRD and the images accept."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from fixtures import crds
from fixtures.render import CHART, argocd_values_file, find, job_config_text, pytorchjob, render, render_text
from llm_finetune.core import config as C
from llm_finetune.core.helm import template

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "values-examples"
ARGOCD_APP = EXAMPLES_DIR / "argocd" / "application.yaml"
CRD = REPO.parent / "shared" / "kubeflow" / "kubeflow.org_pytorchjobs.yaml"
K8S_VERSION = "1.30.0"
CORE_KINDS = {"PersistentVolumeClaim", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job", "Pod",
              "ClusterRole", "ClusterRoleBinding"}  # the preflight reads the namespace (Master topology only)


@pytest.fixture(scope="module")
def argocd_values() -> Path:
    return argocd_values_file()  # one path for the session: test_trainjob.py's renders of it hit the same cache


EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
# Examples written for backend trainjob are tested in test_trainjob.py (both backends); here the PyTorchJob ones.
EXAMPLES = [p for p in EXAMPLES if (yaml.safe_load(p.read_text()) or {}).get("backend", "pytorchjob") == "pytorchjob"]
CASES = ["defaults", *(p.name for p in EXAMPLES), "argocd-application"]


def _files(case: str, argocd_values: Path) -> list[Path]:
    if case == "defaults":
        return []
    if case == "argocd-application":
        return [argocd_values]
    return [EXAMPLES_DIR / case]


def test_the_examples_the_issue_asks_for_exist():
    names = {p.name for p in EXAMPLES}
    assert {"v1-llm-lora.yaml", "v1-bert-classification-s3.yaml", "multinode-shared-rwx.yaml",
            "multinode-perpod.yaml", "existing-claim.yaml", "gpu-4-procs.yaml"} <= names
    app = yaml.safe_load(ARGOCD_APP.read_text())
    assert app["kind"] == "Application" and app["spec"]["source"]["chart"] == "llm-finetune"


@pytest.mark.parametrize("case", CASES)
def test_lint_strict_and_deterministic_render(helm, case, argocd_values):
    files = _files(case, argocd_values)
    args = [helm, "lint", "--strict", str(CHART)] + [a for f in files for a in ("-f", str(f))]
    lint = subprocess.run(args, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "[WARNING]" not in lint.stdout and "[ERROR]" not in lint.stdout, lint.stdout
    # ArgoCD re-renders on every sync: two fresh renders must be byte-identical.
    first = template(CHART, values_files=[str(f) for f in files], helm=helm)
    second = template(CHART, values_files=[str(f) for f in files], helm=helm)
    assert first == second
    assert "kind: PyTorchJob" in first


def test_helm3_and_helm4_render_the_same(helm3, helm4, argocd_values):
    for case in CASES:
        files = _files(case, argocd_values)
        assert yaml.safe_load_all(render_text(helm3, files=files)) is not None
        assert render(helm3, files=files) == render(helm4, files=files), case


@pytest.mark.parametrize("case", CASES)
def test_core_objects_and_pod_templates_validate_against_kubernetes(helm4, case, argocd_values):
    docs = render(helm4, files=_files(case, argocd_values))
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "PyTorchJob"} <= kinds and kinds - {"PyTorchJob"} <= CORE_KINDS
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for role, replica in pytorchjob(docs)["spec"]["pytorchReplicaSpecs"].items():
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"x-{role.lower()}"},
                        "template": replica["template"]}
        kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_pytorchjob_round_trips_through_the_v1_sdk_models(helm4, case, argocd_values):
    from kubeflow.training.api_client import ApiClient
    from kubeflow.training.utils.utils import FakeResponse

    job = pytorchjob(render(helm4, files=_files(case, argocd_values)))
    client = ApiClient()
    model = client.deserialize(FakeResponse(job), "KubeflowOrgV1PyTorchJob")
    again = client.sanitize_for_serialization(model)
    # The SDK drops fields it does not know and coerces types: any difference is a lost field.
    assert crds.json_diff(job, json.loads(json.dumps(again))) == []


@pytest.fixture(scope="module")
def crd_validator():
    return crds.crd_validator(CRD, "v1")


@pytest.mark.parametrize("case", CASES)
def test_pytorchjob_matches_the_crd_schema(helm4, case, argocd_values, crd_validator):
    job = pytorchjob(render(helm4, files=_files(case, argocd_values)))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator.iter_errors(job)]
    assert not errors, errors


def test_crd_validator_catches_unknown_and_mistyped_fields(helm4, crd_validator):
    job = pytorchjob(render(helm4))
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "one"
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["commnd"] = ["x"]
    messages = " ".join(e.message for e in crd_validator.iter_errors(job))
    assert "'one' is not of type 'integer'" in messages and "commnd" in messages


def _leaves(node, prefix=()):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, prefix + (key,))
    else:
        yield prefix, node


@pytest.mark.parametrize("case", CASES)
def test_job_config_loads_with_the_images_loader(helm4, case, argocd_values, tmp_path):
    """The chart <-> code contract: config.yaml is what llm_finetune.core.config.load_config accepts,
    and every config-section value of the values file reaches it unchanged (types included)."""
    files = _files(case, argocd_values)
    docs = render(helm4, files=files)
    path = tmp_path / "config.yaml"
    path.write_text(job_config_text(docs))
    cfg = C.load_config(path)
    job = pytorchjob(docs)
    assert cfg.run.name == job["metadata"]["name"]
    assert cfg.paths.workspace == "/workspace" and cfg.paths.run.endswith("/runs/" + cfg.run.name)
    as_dict = cfg.to_dict()
    given = yaml.safe_load((files[0] if files else CHART / "values.yaml").read_text())
    checked = 0
    for section in ("model", "dataset", "data", "training", "output", "download"):
        if not given.get(section):
            continue
        for key, value in _leaves(given[section], (section,)):
            got = as_dict
            for part in key:
                got = got[part]
            if isinstance(value, str):  # PyYAML (1.1) reads 2.0e-5 as a float already; Helm may not
                assert got == value, key
            elif isinstance(value, float) and value.is_integer():
                # Helm's toYaml writes a whole float64 as an integer (0.0 -> 0, 3.0 -> 3), in Helm 3 and 4:
                # the value reaches the config, an int where the library's field is a float (which it accepts).
                assert got == value and type(got) in (int, float), (key, got, value)
            else:
                assert got == value and type(got) in (type(value), float), (key, got, value)
            checked += 1
    assert checked
    # The hook ConfigMap of the preflight carries the same config (one named template).
    hook_cm = find(docs, "ConfigMap", hook="pre-install,pre-upgrade")
    assert [c["data"]["config.yaml"] for c in hook_cm] == [job_config_text(docs)]


def test_float_hyperparameters_survive_helm(helm4, tmp_path):
    """Helm writes 2e-5 as 2e-05 (no dot), which plain PyYAML reads as a string."""
    docs = render(helm4, {"training": {"args": {"learning_rate": 2e-5, "weight_decay": 1e-7, "warmup_ratio": 0.1}}})
    text = job_config_text(docs)
    assert "learning_rate: 2e-05" in text
    path = tmp_path / "config.yaml"
    path.write_text(text)
    args = C.load_config(path).training.args
    assert args["learning_rate"] == 2e-5 and args["weight_decay"] == 1e-7 and args["warmup_ratio"] == 0.1
    assert isinstance(yaml.safe_load(text)["training"]["args"]["learning_rate"], str)  # why yaml_load exists
