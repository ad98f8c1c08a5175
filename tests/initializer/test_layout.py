"""Dataset layouts (what the trainer loads), path safety, request identity and retries."""

from __future__ import annotations

import errno
import json

import pytest

from llm_finetune.core.config import S3Settings
from llm_finetune.core.errors import ExternalError, UserError
from llm_finetune.initializer.base import Request, matches, prune, safe_relpath
from llm_finetune.core.layout import dataset_load_spec, load_dataset_dict, split_of
from llm_finetune.core.retry import RetryPolicy


@pytest.mark.parametrize("path,split", [
    ("train.jsonl", "train"),
    ("test.jsonl", "test"),
    ("data/train-00000-of-00002.parquet", "train"),
    ("data/validation-00001-of-00002.parquet", "validation"),
    ("data/holdout-00000-of-00001.parquet", "holdout"),  # any name in the sharded convention
    ("dev.csv", "validation"),
    ("my_valid_set.json", "validation"),
    ("eval/part-1.jsonl", "test"),
    ("training/shard_3.arrow", "train"),
    ("en/train_0.jsonl", "train"),
    ("trainer_notes.jsonl", None),
    ("data.jsonl", None),
])
def test_split_names_follow_datasets_conventions(path, split):
    assert split_of(path) == split


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_local_layouts_load_as_the_trainer_loads_them(tmp_path):
    import datasets

    rows = [{"text": f"row {i}"} for i in range(10)]
    files = tmp_path / "files"
    _write(files / "train.jsonl", rows)
    _write(files / "validation.jsonl", rows[:3])
    (files / "README.md").write_text("# not data")
    spec = dataset_load_spec(files)
    assert spec["layout"] == "files" and spec["builder"] == "json" and spec["fileType"] == "jsonl"
    assert spec["dataFiles"] == {"train": [str(files / "train.jsonl")], "validation": [str(files / "validation.jsonl")]}
    loaded = load_dataset_dict(files, cache_dir=str(tmp_path / "cache"))
    assert {k: v.num_rows for k, v in loaded.items()} == {"train": 10, "validation": 3}

    single = tmp_path / "one" / "data.json"
    _write(single, rows)
    assert dataset_load_spec(single)["dataFiles"] == {"train": [str(single)]}  # a single file is train
    assert load_dataset_dict(single, cache_dir=str(tmp_path / "cache"))["train"].num_rows == 10

    untyped = tmp_path / "untyped"
    _write(untyped / "part-0000", rows)
    with pytest.raises(UserError, match="no data files"):
        dataset_load_spec(untyped)
    assert dataset_load_spec(untyped, file_type="jsonl")["dataFiles"] == {"train": [str(untyped / "part-0000")]}

    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    assert dataset_load_spec(saved)["layout"] == "save_to_disk"
    assert load_dataset_dict(saved)["train"].num_rows == 10  # one Dataset = the train split

    saved_dict = tmp_path / "saved-dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:2])}).save_to_disk(str(saved_dict))
    assert dataset_load_spec(saved_dict)["splits"] == {"test": ["test"], "train": ["train"]}
    assert load_dataset_dict(saved_dict)["test"].num_rows == 2


def test_unusable_datasets_are_user_errors(tmp_path):
    mixed = tmp_path / "mixed"
    _write(mixed / "train.jsonl", [{"a": 1}])
    (mixed / "test.csv").write_text("a\n1\n")
    with pytest.raises(UserError, match=r"mixed data file types \(csv, jsonl\)"):
        dataset_load_spec(mixed)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no data files"):
        dataset_load_spec(tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        dataset_load_spec(tmp_path / "missing")
    with pytest.raises(UserError, match="dataset.fileType"):
        dataset_load_spec(mixed, file_type="xml")


def test_layout_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, llm_finetune.core.layout, llm_finetune.initializer.command; "
            "print(sorted(m for m in ('boto3', 'huggingface_hub', 'datasets', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "a\\..\\x", "a//b", "./a", "a/.", "",
                                  ".llm-finetune-manifest.json", "model.safetensors.part", "a\0b"])
def test_paths_that_could_escape_are_refused(name):
    with pytest.raises(UserError, match="refusing"):
        safe_relpath(name, source="s3://b/p")


def test_plain_relative_paths_pass():
    assert safe_relpath("sub/dir/model-00001.safetensors", source="x") == "sub/dir/model-00001.safetensors"
    assert safe_relpath("...weird/..name", source="x") == "...weird/..name"


def test_patterns_use_hub_semantics():
    assert matches("data/train.parquet", ["*.parquet"], [])
    assert matches("original/params.json", ["*.json"], []) and not matches("original/params.json", ["*.json"], ["original/"])
    assert not matches("README.md", ["*.json"], [])


def test_source_key_changes_with_what_lands_on_the_volume():
    base = Request("dataset", "s3://b/p", "main", s3=S3Settings("http://a"))
    assert base.source_key() == Request("dataset", "s3://b/p", "main", s3=S3Settings("http://a", "eu-west-1")).source_key()
    variants = [Request("dataset", "s3://b/q", "main", s3=S3Settings("http://a")),
                Request("dataset", "s3://b/p", "main", split="train", s3=S3Settings("http://a")),
                Request("dataset", "s3://b/p", "main", allow_patterns=("*.csv",), s3=S3Settings("http://a")),
                Request("dataset", "s3://b/p", "main", s3=S3Settings("http://b")),
                Request("model", "s3://b/p", "main", s3=S3Settings("http://a"))]
    assert len({base.source_key(), *(v.source_key() for v in variants)}) == 1 + len(variants)


def test_prune_keeps_listed_files_and_hub_metadata(tmp_path):
    for rel in ("keep.json", "sub/keep.bin", "stale.bin", "sub/old/x.part", ".cache/huggingface/download/a.metadata"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert prune(tmp_path, {"keep.json", "sub/keep.bin"}) == 2
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        ".cache/huggingface/download/a.metadata", "keep.json", "sub/keep.bin"]


def _policy(retries: int) -> RetryPolicy:
    return RetryPolicy(retries, 0.5, "model.uri", sleep=lambda s: None)


def test_retries_transient_errors_then_gives_up_with_exit_202():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert _policy(5).call(flaky, what="GET x", classify=lambda e: None) == "ok" and len(calls) == 3
    with pytest.raises(ExternalError, match="GET x failed after 3 attempt") as exc:
        _policy(2).call(lambda: (_ for _ in ()).throw(TimeoutError("slow")), what="GET x", classify=lambda e: None)
    assert exc.value.exit_code == 202 and exc.value.field == "model.uri"


def test_permanent_errors_are_not_retried():
    calls = []

    def denied():
        calls.append(1)
        raise PermissionError("403")

    with pytest.raises(UserError, match="denied"):
        _policy(5).call(denied, what="GET x", classify=lambda e: UserError("denied"))
    assert len(calls) == 1
    with pytest.raises(KeyError):  # unexpected errors surface as they are (internal error, exit 203)
        _policy(5).call(lambda: {}["x"], what="GET x", classify=lambda e: e)


def test_backoff_doubles_with_jitter():
    p = RetryPolicy(5, 1.0)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0)):
        delays = [p.delay(attempt) for _ in range(50)]
        assert all(0.5 * base <= d <= 1.5 * base for d in delays) and len(set(delays)) > 1


def test_disk_full_from_a_real_write_is_a_user_error():
    def write_to_full_device():
        with open("/dev/full", "wb") as fh:
            fh.write(b"x" * 65536)
            fh.flush()

    with pytest.raises(UserError, match="no space left.*storage.size") as exc:
        _policy(5).call(write_to_full_device, what="writing x", classify=lambda e: None)
    assert isinstance(exc.value.__cause__, OSError) and exc.value.__cause__.errno == errno.ENOSPC

