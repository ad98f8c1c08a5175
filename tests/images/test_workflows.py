"""The GitHub workflows (not run here): CI runs `make test`; a release builds both images with the
chart's appVersion, pushes the chart to OCI, and refuses to start unless every version agrees."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
VALUES = yaml.safe_load((REPO / "chart" / "values.yaml").read_text())


def load(name):
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def steps_text(job):
    return "\n".join(str(s.get("run", "")) + str(s.get("with", "")) + str(s.get("uses", "")) for s in job["steps"])


def test_ci_runs_make_test():
    ci = load("ci.yaml")
    assert {"push", "pull_request"} <= set(ci["on"])
    text = steps_text(ci["jobs"]["test"])
    assert "make test" in text and "check_release.py --allow-unreleased" in text
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in text  # CPU torch first: make's pin is then already met


def test_release_builds_every_image_with_the_app_version():
    rel = load("release.yaml")
    assert rel["on"]["push"]["tags"] == ["v*.*.*"]
    jobs = rel["jobs"]
    assert "--tag \"${GITHUB_REF_NAME}\"" in steps_text(jobs["versions"])
    images = jobs["images"]
    assert images["needs"] == "versions"
    assert sorted(images["strategy"]["matrix"]["image"]) == sorted(p.parent.name for p in (REPO / "images").glob("*/Dockerfile"))
    build = next(s for s in images["steps"] if s.get("id") == "build")
    assert build["with"]["file"] == "images/${{ matrix.image }}/Dockerfile" and build["with"]["context"] == "."
    assert build["with"]["build-args"] == "VERSION=${{ needs.versions.outputs.app_version }}"
    assert build["with"]["tags"] == "${{ env.IMAGE_PREFIX }}/${{ matrix.image }}:${{ needs.versions.outputs.app_version }}"
    assert "steps.build.outputs.digest" in steps_text(images)
    # The pushed names are the chart's defaults (for the upstream owner llm-finetune).
    prefix = rel["env"]["IMAGE_PREFIX"].replace("${{ github.repository_owner }}", "llm-finetune")
    for image in ("initializer", "trainer"):
        v = VALUES["images"][image]
        assert f"{v['registry']}/{v['repository']}" == f"{prefix}/{image}"


def test_release_pushes_the_chart_to_oci_after_the_images():
    rel = load("release.yaml")
    chart = rel["jobs"]["chart"]
    assert set(chart["needs"]) == {"versions", "images"}
    text = steps_text(chart)
    assert "helm lint --strict chart" in text and "helm package chart" in text
    assert 'helm push "dist/llm-finetune-${VERSION}.tgz" "${CHART_REPO}"' in text
    repo = rel["env"]["CHART_REPO"].replace("${{ github.repository_owner }}", "llm-finetune")
    app = yaml.safe_load((REPO / "values-examples" / "argocd" / "application.yaml").read_text())
    assert f"oci://{app['spec']['source']['repoURL']}" == repo and app["spec"]["source"]["chart"] == "llm-finetune"


@pytest.fixture
def check_release():
    spec = importlib.util.spec_from_file_location("check_release", REPO / ".github" / "scripts" / "check_release.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def repo_copy(tmp_path):
    for rel in ("chart/Chart.yaml", "python/pyproject.toml", "CHANGELOG.md", "images/initializer/Dockerfile", "images/trainer/Dockerfile"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    return tmp_path


def test_versions_agree_in_the_repo(check_release, capsys):
    assert check_release.main(["--allow-unreleased"]) == 0


def test_release_check_lists_every_mismatch(check_release, repo_copy, capsys):
    chart = repo_copy / "chart" / "Chart.yaml"
    version = check_release.field(chart.read_text(), "version")
    app = check_release.field(chart.read_text(), "appVersion")
    changelog = repo_copy / "CHANGELOG.md"
    changelog.write_text(changelog.read_text().replace("## [Unreleased]", f"## [Unreleased]\n\n## [{version}] - 2026-12-01"))
    assert check_release.main(["--repo", str(repo_copy), "--tag", f"v{version}"]) == 0
    capsys.readouterr()

    chart.write_text(chart.read_text().replace(f'appVersion: "{app}"', 'appVersion: "9.9.9"'))
    dockerfile = repo_copy / "images" / "trainer" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(f"ARG VERSION={app}", "ARG VERSION=9.9.9"))
    assert check_release.main(["--repo", str(repo_copy), "--tag", "v0.0.1"]) == 1
    err = capsys.readouterr().err
    assert f"python/pyproject.toml: version {app} != Chart.yaml appVersion 9.9.9" in err
    assert f"images/initializer/Dockerfile: ARG VERSION={app} != appVersion 9.9.9" in err
    assert "images/trainer/Dockerfile" not in err  # that one was bumped
    assert f"artifacthub.io/images ghcr.io/llm-finetune/trainer:{app} != appVersion 9.9.9" in err
    assert f"release tag v0.0.1 != v{version}" in err


def test_release_needs_a_changelog_section(check_release, repo_copy, capsys):
    version = yaml.safe_load((repo_copy / "chart" / "Chart.yaml").read_text())["version"]
    changelog = repo_copy / "CHANGELOG.md"
    assert f"## [{version}]" in changelog.read_text()
    assert check_release.main(["--repo", str(repo_copy)]) == 0
    changelog.write_text(changelog.read_text().replace(f"## [{version}]", "## [0.0.0-old]"))
    capsys.readouterr()
    assert check_release.main(["--repo", str(repo_copy)]) == 1
    assert "CHANGELOG.md: no '## [" in capsys.readouterr().err
