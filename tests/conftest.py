"""Shared fixtures: repo paths, real Helm 3/4 binaries, a SeaweedFS server, tiny demo assets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "chart"
EXAMPLES = REPO / "values-examples"
SHARED = REPO.parent / "shared"  # ../shared on developer machines and in CI, not in a user's clone

collect_ignore = ["bench"]

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _helm(env: str, version: str) -> str:
    path = os.environ.get(env) or str(REPO / ".tools" / f"helm-{version}" / "helm")
    if not os.path.exists(path):
        pytest.fail(f"Helm {version} not found at {path}: run 'make tools' (make test does)")
    return path


@pytest.fixture(scope="session")
def helm3() -> str:
    return _helm("LLM_FINETUNE_HELM3", "3.17")


@pytest.fixture(scope="session")
def helm4() -> str:
    return _helm("LLM_FINETUNE_HELM4", "4.1")


@pytest.fixture(scope="session", params=["3.17", "4.1"], ids=["helm3", "helm4"])
def helm(request) -> str:
    """Both real Helm binaries: a test using this runs once with each."""
    return _helm("LLM_FINETUNE_HELM3" if request.param == "3.17" else "LLM_FINETUNE_HELM4", request.param)


@pytest.fixture(autouse=True)
def termination_log(tmp_path, monkeypatch) -> Path:
    """Each test gets its own termination log file instead of /dev/termination-log."""
    path = tmp_path / "termination-log"
    monkeypatch.setenv("LLM_FINETUNE_TERMINATION_LOG", str(path))
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server with authentication on, for the whole session."""
    from fixtures.s3server import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hf_hub():
    """A local Hugging Face Hub (tests/fixtures/hfhub.py) for the session: add repos with
    ``hf_hub.add_model_repo(...)`` and point clients at ``hf_hub.endpoint`` via HF_ENDPOINT."""
    from fixtures.hfhub import HubFixture

    with HubFixture() as hub:
        yield hub


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama + BPE tokenizer with a chat template (built once per session, read-only use)."""
    from llm_finetune.local.demo_assets import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def demo_dataset_dir(tmp_path_factory) -> Path:
    """Alpaca-style train.jsonl/test.jsonl (instruction, input, output)."""
    from llm_finetune.local.demo_assets import write_dataset

    return write_dataset(tmp_path_factory.mktemp("demo-dataset") / "dataset", n_train=200, n_eval=20)


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> Path:
    """What ``run-local --demo`` puts in ``<workdir>/demo-assets`` (llm_finetune.local.demo.build_assets: the
    pretrained demo base model and the dataset, copied from this machine's cache, built there first if missing)."""
    from llm_finetune.local.demo import build_assets

    return build_assets(tmp_path_factory.mktemp("demo-assets"))


@pytest.fixture
def demo_workdir(tmp_path, demo_assets) -> Path:
    """``tmp_path/work`` with the session's demo assets in place: ``run-local --demo --workdir`` it reuses them
    (build_assets skips a complete folder; the same bytes it would build)."""
    work = tmp_path / "work"
    shutil.copytree(demo_assets, work / "demo-assets")
    return work


@pytest.fixture
def copy_tree(tmp_path):
    """Copy a read-only session asset into the test's tmp dir when a test needs to modify it."""

    def _copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or src.name)
        shutil.copytree(src, dst)
        return dst

    return _copy
