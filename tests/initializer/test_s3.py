"""S3 provider against a real SeaweedFS server with authentication on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from initializer.conftest import BUCKET
from initializer.faultproxy import FaultProxy
from initializer.helpers import CLI, kill_midway, run_cli, tree_digest, write_config
from llm_finetune.core.config import load_config
from llm_finetune.core.errors import UserError
from llm_finetune.initializer.base import JOURNAL_NAME
from llm_finetune.initializer.journal import Journal
from llm_finetune.initializer.command import initialize
from llm_finetune.core.layout import load_dataset_dict
from llm_finetune.initializer.s3 import S3Provider
from llm_finetune.core.volume import read_manifest


def s3(endpoint: str, uri: str, **extra) -> dict:
    return {"uri": uri, "s3": {"endpointUrl": endpoint, "region": "us-east-1"}, **extra}


def test_model_and_dataset_land_verified_and_loadable(tmp_path, s3_assets, s3_env, caplog):
    """Nested prefixes, many small objects and a multipart object; loadable as the trainer loads them."""
    ep = s3_assets.endpoint
    config = write_config(tmp_path, model=s3(ep, f"s3://{BUCKET}/models/tiny"),
                          dataset=s3(ep, f"s3://{BUCKET}/data/demo/"))
    caplog.set_level("INFO", logger="llm_finetune")
    result = initialize(load_config(config))
    cfg = load_config(config)
    model_dir, dataset_dir = tmp_path / "ws" / "model", tmp_path / "ws" / "dataset"
    assert tree_digest(model_dir) == tree_digest(s3_assets.model_dir)  # not models/tiny-v2/
    assert tree_digest(dataset_dir) == tree_digest(s3_assets.dataset_dir)
    manifest = read_manifest(model_dir)
    assert manifest["kind"] == "model" and manifest["source"] == cfg.model.uri
    assert manifest["revision"].startswith("etags:") and all(f["etag"] for f in manifest["files"])
    assert {f["path"]: f["size"] for f in manifest["files"]} == {
        p.name: p.stat().st_size for p in s3_assets.model_dir.iterdir()}
    ds_manifest = read_manifest(dataset_dir)
    assert ds_manifest["layout"] == "files" and ds_manifest["fileType"] == "jsonl"
    assert ds_manifest["splits"] == {"test": ["test.jsonl"], "train": ["train.jsonl"]}
    assert result["model"]["transferredBytes"] == sum(f["size"] for f in manifest["files"])
    assert not list(model_dir.glob("*.part")) and not (model_dir / JOURNAL_NAME).exists()
    assert not (tmp_path / "ws" / ".llm-finetune-tmp").exists()
    assert "files 6/6" in caplog.text  # progress: files done/total, bytes, rate, ETA

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(cfg.model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_dir, local_files_only=True)
    assert model.config.vocab_size == len(tokenizer)
    data = load_dataset_dict(cfg.dataset_dir, cache_dir=str(tmp_path / "hf-cache"))
    assert data["train"].num_rows == 200 and data["test"].num_rows == 20


def test_many_objects_multipart_rerun_and_changed_request(tmp_path, s3_assets, s3_env, caplog, monkeypatch):
    """60 objects in nested prefixes (listed in pages of 7) + a ~3 MiB object fetched as 1 MiB ranged
    parts; a rerun with a complete manifest sends no request; a changed request keeps what still
    matches and prunes the rest."""
    monkeypatch.setattr(S3Provider, "page_size", 7)
    pages = 9  # 61 keys
    with FaultProxy(s3_assets.endpoint) as proxy:
        ep = proxy.endpoint
        config = write_config(tmp_path, model=s3(ep, f"s3://{BUCKET}/models/tiny"),
                              dataset=s3(ep, f"s3://{BUCKET}/many/"),
                              download={"multipartThresholdMiB": 1, "concurrency": 4})
        initialize(load_config(config))
        dataset_dir = tmp_path / "ws" / "dataset"
        assert tree_digest(dataset_dir) == tree_digest(s3_assets.many_dir)
        assert proxy.requests["GET"] == pages + 60 + 4 + 1 + 6  # lists, objects, 4 ranged parts, model

        before = sum(proxy.requests.values())
        caplog.set_level("INFO", logger="llm_finetune")
        again = initialize(load_config(config))
        assert sum(proxy.requests.values()) == before  # not even a listing
        assert again["model"]["transferredBytes"] == 0 and again["dataset"]["transferredBytes"] == 0
        assert "nothing to download" in caplog.text

        # Narrow the dataset to level0/: those files stay (no GET), the others go.
        config = write_config(tmp_path, model=s3(ep, f"s3://{BUCKET}/models/tiny"),
                              dataset=s3(ep, f"s3://{BUCKET}/many/",
                                         allowPatterns=["level0/*"]),
                              download={"multipartThresholdMiB": 1})
        gets = proxy.requests["GET"]
        changed = initialize(load_config(config))
        assert changed["dataset"]["transferredBytes"] == 0
        assert proxy.requests["GET"] == gets + pages  # the listing only
        expected = {k: v for k, v in tree_digest(s3_assets.many_dir).items() if k.startswith("level0/")}
        assert tree_digest(dataset_dir) == expected


def test_single_object_key(tmp_path, s3_assets, s3_env):
    """s3://bucket/key of one object (the v1 reference's file_key) fetches that file."""
    ep = s3_assets.endpoint
    config = write_config(tmp_path, model=s3(ep, f"s3://{BUCKET}/models/tiny/"),
                          dataset=s3(ep, f"s3://{BUCKET}/data/demo/train.jsonl"))
    initialize(load_config(config))
    dataset_dir = tmp_path / "ws" / "dataset"
    assert tree_digest(dataset_dir) == {"train.jsonl": tree_digest(s3_assets.dataset_dir)["train.jsonl"]}
    assert read_manifest(dataset_dir)["splits"] == {"train": ["train.jsonl"]}


def test_injected_faults_still_complete(tmp_path, s3_assets, s3_env, caplog):
    """Connection resets, 503 SlowDown and bodies cut midway on a share of requests: retried to the end."""
    with FaultProxy(s3_assets.endpoint, reset=0.12, error503=0.12, cut=0.12, seed=3) as proxy:
        ep = proxy.endpoint
        config = write_config(tmp_path, model=s3(ep, f"s3://{BUCKET}/models/tiny"),
                              dataset=s3(ep, f"s3://{BUCKET}/many/"),
                              download={"retries": 10, "retryBackoffSeconds": 0.01, "multipartThresholdMiB": 1})
        caplog.set_level("WARNING", logger="llm_finetune")
        initialize(load_config(config))
    assert tree_digest(tmp_path / "ws" / "dataset") == tree_digest(s3_assets.many_dir)
    assert tree_digest(tmp_path / "ws" / "model") == tree_digest(s3_assets.model_dir)
    assert min(proxy.faults["reset"], proxy.faults["503"], proxy.faults["cut"]) >= 1, proxy.faults
    assert "retry 1/10" in caplog.text
    assert "X-Amz-" not in caplog.text  # signed URLs (credentials) never reach a log line


def test_object_changed_since_listing_is_not_mixed(tmp_path, s3_assets, termination_log):
    """Every GET carries If-Match with the listed ETag: SeaweedFS answers 412 for another version."""
    import re

    def stale_etags(body: bytes) -> bytes:
        return re.sub(rb"<ETag>(&#34;|&quot;|\")[0-9a-f]{32}", rb"<ETag>\g<1>" + b"0" * 32, body)

    with FaultProxy(s3_assets.endpoint, rewrite=stale_etags) as proxy:
        config = write_config(tmp_path, model=s3(proxy.endpoint, f"s3://{BUCKET}/models/tiny"),
                              dataset=s3(s3_assets.endpoint, f"s3://{BUCKET}/data/demo/"))
        proc = run_cli(config, s3_assets.env)
    assert proc.returncode == 202, proc.stderr
    assert "changed while it was being downloaded (PreconditionFailed)" in termination_log.read_text()
    assert not (tmp_path / "ws" / "model" / "config.json").exists()


def test_faults_beyond_the_budget_exit_202(tmp_path, s3_assets, termination_log):
    with FaultProxy(s3_assets.endpoint, error503=1.0) as proxy:
        config = write_config(tmp_path, model=s3(proxy.endpoint, f"s3://{BUCKET}/models/tiny"),
                              dataset=s3(proxy.endpoint, f"s3://{BUCKET}/data/demo/"),
                              download={"retries": 2, "retryBackoffSeconds": 0.01})
        proc = run_cli(config, s3_assets.env)
    assert proc.returncode == 202, proc.stderr
    message = termination_log.read_text()
    assert "failed after 3 attempt(s)" in message and "SlowDown" in message
    assert proxy.requests["GET"] == 3


def _done(journal) -> int:
    return sum(e.done for e in Journal(journal).load().values()) if journal.exists() else 0


def test_resume_after_kill(tmp_path, s3_assets, s3_env, caplog):
    """Kill -9 midway: no manifest; the rerun keeps finished files (hashed again), fetches the rest, same bytes."""
    with FaultProxy(s3_assets.endpoint, delay=0.08) as proxy:
        ep = proxy.endpoint
        config = write_config(tmp_path, model=s3(ep, f"s3://{BUCKET}/models/tiny"),
                              dataset=s3(ep, f"s3://{BUCKET}/many/"),
                              download={"multipartThresholdMiB": 1, "concurrency": 2})
        journal = tmp_path / "ws" / "dataset" / JOURNAL_NAME
        kill_midway(config, s3_env, lambda: _done(journal) >= 15)
        assert read_manifest(tmp_path / "ws" / "dataset") is None  # partial: no manifest
        assert read_manifest(tmp_path / "ws" / "model") is not None  # the model finished first
        done_before = _done(journal)
        assert 15 <= done_before < 61

        proxy.delay = 0
        gets = proxy.requests["GET"]
        caplog.set_level("INFO", logger="llm_finetune")
        result = initialize(load_config(config))
        dataset_dir = tmp_path / "ws" / "dataset"
        assert tree_digest(dataset_dir) == tree_digest(s3_assets.many_dir)
        assert f"{done_before} verified on the volume" in caplog.text
        total = sum(p.stat().st_size for p in s3_assets.many_dir.rglob("*") if p.is_file())
        assert 0 < result["dataset"]["transferredBytes"] < total
        # GETs only for what was missing: at most the unfinished objects (big.bin as 4 parts).
        assert proxy.requests["GET"] - gets <= 61 - done_before + 3 + 1
        assert not list(dataset_dir.rglob("*.part")) and not journal.exists()


@pytest.mark.parametrize("evil", ["../../escape.jsonl", "/abs/escape.jsonl", "..\\..\\escape.jsonl"])
def test_refuses_keys_that_escape_the_target(evil, tmp_path, s3_server, s3_assets, termination_log):
    """SeaweedFS refuses to store such keys but AWS S3 accepts them: the proxy lists one in their place."""
    client = s3_server.client()
    s3_server.create_bucket("init-evil")
    client.put_object(Bucket="init-evil", Key="ds/train.jsonl", Body=b'{"text": "a"}\n')
    client.put_object(Bucket="init-evil", Key="ds/placeholder.jsonl", Body=b'{"text": "b"}\n')
    listed = f"<Key>ds/{evil}</Key>".encode()
    with FaultProxy(s3_assets.endpoint, rewrite=lambda body: body.replace(b"<Key>ds/placeholder.jsonl</Key>", listed)) as proxy:
        config = write_config(tmp_path, model=s3(s3_assets.endpoint, f"s3://{BUCKET}/models/tiny"),
                              dataset=s3(proxy.endpoint, "s3://init-evil/ds/"))
        proc = run_cli(config, s3_assets.env)
    assert proc.returncode == 1, proc.stderr
    message = termination_log.read_text()
    assert f"refusing {evil!r} from s3://init-evil/ds/{evil}" in message, message
    assert "escape the target directory" in message
    assert not list(tmp_path.rglob("*escape.jsonl")) and not (tmp_path / "ws" / "dataset" / "train.jsonl").exists()
    assert proxy.requests["GET"] == 1  # the listing; nothing was fetched
    assert "Traceback" not in proc.stderr


def test_does_not_write_through_symlinks(tmp_path, s3_assets, s3_env):
    outside = tmp_path / "outside"
    outside.mkdir()
    dataset_dir = tmp_path / "ws" / "dataset"
    dataset_dir.mkdir(parents=True)
    (dataset_dir / "level0").symlink_to(outside)
    config = write_config(tmp_path, model=s3(s3_assets.endpoint, f"s3://{BUCKET}/models/tiny"),
                          dataset=s3(s3_assets.endpoint, f"s3://{BUCKET}/many/"))
    with pytest.raises(UserError, match="is a symlink"):
        initialize(load_config(config))
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("case", ["wrong-credentials", "missing-bucket", "empty-prefix", "no-endpoint"])
def test_errors_exit_codes_and_termination_log(case, tmp_path, s3_assets, termination_log):
    ep = s3_assets.endpoint
    env = dict(s3_assets.env)
    model = s3(ep, f"s3://{BUCKET}/models/tiny")
    expect_code, expect_text = 1, ""
    if case == "wrong-credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-value-1234"
        expect_text = "secrets.s3.existingSecret"
    elif case == "missing-bucket":
        model = s3(ep, "s3://no-such-bucket-here/models/tiny")
        expect_text = "bucket of s3://no-such-bucket-here/models/tiny does not exist"
    elif case == "empty-prefix":
        model = s3(ep, f"s3://{BUCKET}/models/nothing-here/")
        expect_text = f"no objects at s3://{BUCKET}/models/nothing-here/"
    else:
        from fixtures.s3server import free_port

        model = s3(f"http://127.0.0.1:{free_port()}", f"s3://{BUCKET}/models/tiny")
        expect_code, expect_text = 202, "failed after 2 attempt(s)"
    config = write_config(tmp_path, model=model, dataset=s3(ep, f"s3://{BUCKET}/data/demo/"),
                          download={"retries": 1, "retryBackoffSeconds": 0.01})
    proc = run_cli(config, env)
    message = termination_log.read_text()
    assert proc.returncode == expect_code, proc.stderr
    assert message.startswith("initializer: model.uri: ") and expect_text in message, message
    assert "Traceback" not in proc.stderr
    assert env["AWS_SECRET_ACCESS_KEY"] not in proc.stderr + message
    assert read_manifest(tmp_path / "ws" / "model") is None


def test_disk_full_is_a_user_error(tmp_path, s3_assets, termination_log):
    """A 1 MiB tmpfs as the workspace (user + mount namespace): ENOSPC -> exit 1 naming storage.size."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unshare with user and mount namespaces")
    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(tmp_path, model=s3(s3_assets.endpoint, f"s3://{BUCKET}/models/tiny"),
                          dataset=s3(s3_assets.endpoint, f"s3://{BUCKET}/many/"),
                          download={"multipartThresholdMiB": 1})
    script = 'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" initialize --config "$3"'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(ws), CLI, str(config)],
                          env={**os.environ, **s3_assets.env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    message = termination_log.read_text()
    assert "no space left on the volume" in message and "storage.size" in message, message
    assert "Traceback" not in proc.stderr


def test_manifest_is_the_documented_format(tmp_path, s3_assets, s3_env):
    config = write_config(tmp_path, model=s3(s3_assets.endpoint, f"s3://{BUCKET}/models/tiny"),
                          dataset=s3(s3_assets.endpoint, f"s3://{BUCKET}/data/demo/"))
    initialize(load_config(config))
    manifest = json.loads((tmp_path / "ws" / "dataset" / ".llm-finetune-manifest.json").read_text())
    assert {"kind", "source", "revision", "sourceKey", "layout", "fileType", "splits", "files", "createdAt",
            "tool"} <= set(manifest)
    assert manifest["request"]["uri"] == f"s3://{BUCKET}/data/demo/"
