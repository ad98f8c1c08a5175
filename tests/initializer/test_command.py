"""The command: --wait (Workers in shared mode), local paths used in place, config errors."""

from __future__ import annotations

import threading
import time

import pytest

from initializer.helpers import run_cli, tree_digest, write_config
from llm_finetune.core.config import load_config
from llm_finetune.initializer.base import Request
from llm_finetune.initializer.command import wait_for_volume
from llm_finetune.core.volume import read_manifest, write_manifest


def _complete(cfg, kind: str, request: Request | None = None) -> None:
    request = request or Request.from_config(cfg, kind)
    write_manifest(getattr(cfg.paths, kind), {"kind": kind, "source": request.uri, "sourceKey": request.source_key(),
                                              "files": [], "revision": "x"})


def test_wait_returns_once_both_manifests_match(tmp_path, demo_dataset_dir):
    config = write_config(tmp_path, model={"uri": "hf://org/model"}, dataset={"uri": "s3://bucket/data/"})
    cfg = load_config(config)
    # A manifest of another request does not count: the Master is still re-downloading.
    _complete(cfg, "model", Request("model", "hf://org/older"))

    def master():
        time.sleep(0.3)
        _complete(cfg, "model")
        time.sleep(0.2)
        _complete(cfg, "dataset")

    writer = threading.Thread(target=master)
    started = time.monotonic()
    writer.start()
    wait_for_volume(cfg, timeout=30, interval=0.05)
    writer.join()
    assert 0.5 <= time.monotonic() - started < 10


def test_wait_times_out_with_exit_202_and_writes_nothing(tmp_path, demo_dataset_dir, termination_log):
    config = write_config(tmp_path, model={"uri": "hf://org/model"}, dataset={"uri": str(demo_dataset_dir)})
    proc = run_cli(config, {}, "--wait", "--wait-timeout", "0.5")
    assert proc.returncode == 202, proc.stderr
    message = termination_log.read_text()
    assert "timed out after 0s waiting for" in message and "hf://org/model" in message
    assert "storage-initializer" in message
    assert not (tmp_path / "ws").exists()  # the read-only volume of a Worker is never written


def test_wait_with_local_sources_needs_no_manifest(tmp_path, tiny_model_dir, demo_dataset_dir):
    config = write_config(tmp_path, model={"uri": str(tiny_model_dir)}, dataset={"uri": f"file://{demo_dataset_dir}"})
    proc = run_cli(config, {}, "--wait", "--wait-timeout", "5")
    assert proc.returncode == 0, proc.stderr


def test_local_paths_are_verified_and_used_in_place(tmp_path, tiny_model_dir, demo_dataset_dir):
    before = tree_digest(tiny_model_dir), tree_digest(demo_dataset_dir)
    config = write_config(tmp_path, model={"uri": f"file://{tiny_model_dir}"}, dataset={"uri": str(demo_dataset_dir)})
    proc = run_cli(config)
    assert proc.returncode == 0, proc.stderr
    assert "used in place (nothing copied)" in proc.stderr
    assert (tree_digest(tiny_model_dir), tree_digest(demo_dataset_dir)) == before
    assert read_manifest(tiny_model_dir) is None and read_manifest(demo_dataset_dir) is None
    cfg = load_config(config)
    assert cfg.model_dir == str(tiny_model_dir) and cfg.dataset_dir == str(demo_dataset_dir)


@pytest.mark.parametrize("case,text", [
    ("missing-model", "model.uri: {missing} does not exist"),
    ("not-a-model", "has no config.json"),
    ("empty-dataset", "no data files (jsonl, json, csv, parquet, arrow) in {empty}"),
    ("no-config", "config file not found"),
])
def test_bad_local_input_exits_1(case, text, tmp_path, tiny_model_dir, demo_dataset_dir, termination_log):
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    model, dataset = str(tiny_model_dir), str(demo_dataset_dir)
    if case == "missing-model":
        model = str(missing)
    elif case == "not-a-model":
        model = str(demo_dataset_dir)
    elif case == "empty-dataset":
        dataset = str(empty)
    config = write_config(tmp_path, model={"uri": model}, dataset={"uri": dataset})
    if case == "no-config":
        config = tmp_path / "nowhere.yaml"
    proc = run_cli(config)
    assert proc.returncode == 1, proc.stderr
    assert text.format(missing=missing, empty=empty) in termination_log.read_text()
    assert "Traceback" not in proc.stderr
