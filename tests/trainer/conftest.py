"""Fixtures of the trainer tests: datasets in every format and the tiny model with their manifests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llm_finetune.core.volume import write_manifest
from trainer.helpers import dataset_dir


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trainer-datasets")


@pytest.fixture(scope="session")
def alpaca_dir(datasets_root) -> Path:
    return dataset_dir(datasets_root, "alpaca")


@pytest.fixture(scope="session")
def text_dir(datasets_root) -> Path:
    return dataset_dir(datasets_root, "text")


@pytest.fixture(scope="session")
def chat_dir(datasets_root) -> Path:
    return dataset_dir(datasets_root, "chat")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir, tmp_path_factory) -> Path:
    """A copy of the session's tiny Llama with a model completion manifest, as the initializer leaves it."""
    d = tmp_path_factory.mktemp("trainer-model") / "model"
    shutil.copytree(tiny_model_dir, d)
    write_manifest(d, {"kind": "model", "source": "hf://demo/tiny-llama", "revision": "abc123", "sourceKey": "tiny",
                       "files": []})
    return d
