"""The wheel ships the chart's values.yaml and values.schema.json (copied at build time by python/setup.py),
so `llm-finetune validate` and the preflight hook work outside the repository (pip installs, the images)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART_FILES = ("Chart.yaml", "values.yaml", "values.schema.json")


def build_wheel(src: Path, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of python/ and chart/ laid out as in the repo (and in the image's build stage)."""
    root = tmp_path_factory.mktemp("build")
    shutil.copytree(REPO / "python", root / "python", ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    (root / "chart").mkdir()
    for name in CHART_FILES:
        shutil.copy(REPO / "chart" / name, root / "chart" / name)
    proc = build_wheel(root / "python", root / "dist")
    assert proc.returncode == 0, proc.stderr
    (whl,) = (root / "dist").glob("llm_finetune-*.whl")
    return whl


def test_wheel_ships_the_charts_files_unchanged(wheel):
    with zipfile.ZipFile(wheel) as zf:
        for name in CHART_FILES:
            assert zf.read(f"llm_finetune/data/chart/{name}") == (REPO / "chart" / name).read_bytes(), name


def test_installed_validator_uses_the_shipped_schema(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    import jsonschema
    import yaml

    deps = Path(yaml.__file__).parents[1]
    assert Path(jsonschema.__file__).is_relative_to(deps)
    # cwd without a chart/, no LLM_FINETUNE_CHART: the only chart is the packaged one.
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from llm_finetune.validate.values import chart_dir\n"
            "print('CHART', chart_dir())\n"
            "from llm_finetune.cli import main\n"
            "sys.exit(main(['validate', '--set', 'job.numWorkers=2']))")
    env = {"PATH": "/usr/bin:/bin", "LLM_FINETUNE_TERMINATION_LOG": str(tmp_path / "t")}
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(site), str(deps)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert f"CHART {site}/llm_finetune/data/chart" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1  # two pods on the default ReadWriteOnce claim: the rules ran on the shipped defaults
    assert "storage.accessModes: the claim has access modes ['ReadWriteOnce']" in proc.stdout


def test_build_without_the_chart_fails_clearly(tmp_path):
    shutil.copytree(REPO / "python", tmp_path / "python", ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    proc = build_wheel(tmp_path / "python", tmp_path / "dist")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Chart.yaml, values.yaml, values.schema.json missing under" in out and "build from the repository" in out
