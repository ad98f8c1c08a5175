"""Hub provider through the real huggingface_hub/datasets clients against the local hub fixture."""

from __future__ import annotations

import json
import shutil

import pytest

from initializer.helpers import run_cli, tree_digest, write_config
from llm_finetune.core.errors import UserError
from llm_finetune.core.layout import dataset_load_spec, load_dataset_dict
from llm_finetune.core.volume import read_manifest

GOOD_TOKEN = "hf_good_token_0123456789"


@pytest.fixture(scope="module")
def hub(hf_hub, tiny_model_dir, tmp_path_factory):
    """Repos: org/tiny (v1 and a different main), org/ds (parquet shards), org/gated, org/nosafe, org/evil."""
    import datasets
    import torch
    from safetensors.torch import load_file

    hf_hub.shas = {}
    hf_hub.shas["v1"] = hf_hub.add_model_repo("org/tiny", tiny_model_dir, revision="v1",
                                              files={"README.md": b"# tiny", "notes/extra.md": b"x"})
    config = json.loads((tiny_model_dir / "config.json").read_text())
    hf_hub.shas["main"] = hf_hub.add_model_repo(
        "org/tiny", tiny_model_dir, revision="main", files={"config.json": json.dumps({**config, "note": "main"}).encode()})
    hf_hub.add_model_repo("org/gated", tiny_model_dir, gated_token=GOOD_TOKEN)

    nosafe = tmp_path_factory.mktemp("nosafe")
    for p in tiny_model_dir.iterdir():
        if p.suffix != ".safetensors":
            shutil.copy(p, nosafe / p.name)
    torch.save(load_file(tiny_model_dir / "model.safetensors"), nosafe / "pytorch_model.bin")
    hf_hub.add_model_repo("org/nosafe", nosafe, files={"training_notes.md": b"no"})
    hf_hub.add_model_repo("org/evil", tiny_model_dir, files={"../evil.txt": b"gotcha"})

    ds_dir = tmp_path_factory.mktemp("hub-ds")
    (ds_dir / "data").mkdir()
    rows = [{"prompt": f"say {i}", "completion": f"{i}"} for i in range(120)]
    datasets.Dataset.from_list(rows[:100]).to_parquet(str(ds_dir / "data" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(rows[100:]).to_parquet(str(ds_dir / "data" / "test-00000-of-00001.parquet"))
    (ds_dir / "README.md").write_text("# a dataset\n")
    hf_hub.add_dataset_repo("org/ds", ds_dir)

    # configs declared in README.md's YAML header, as on the Hub (dataset.name picks one)
    cfg_dir = tmp_path_factory.mktemp("hub-configs")
    for name, n in (("short", 5), ("long", 40)):
        (cfg_dir / name).mkdir()
        (cfg_dir / name / "train.jsonl").write_text(
            "".join(json.dumps({"text": f"{name} {i}"}) + "\n" for i in range(n)))
    (cfg_dir / "README.md").write_text(
        "---\nconfigs:\n- config_name: short\n  data_files: short/*.jsonl\n"
        "- config_name: long\n  data_files: long/*.jsonl\n---\n# two configs\n")
    hf_hub.add_dataset_repo("org/configs", cfg_dir, files={"notes/unrelated.bin": b"not data"})
    return hf_hub


def hf_env(hub, **extra) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "", **extra}


def test_model_revision_dataset_files_rerun_and_offline(tmp_path, hub, tiny_model_dir):
    config = write_config(tmp_path, model={"uri": "hf://org/tiny", "revision": "v1"}, dataset={"uri": "hf://org/ds"})
    proc = run_cli(config, hf_env(hub))
    assert proc.returncode == 0, proc.stderr
    model_dir, dataset_dir = tmp_path / "ws" / "model", tmp_path / "ws" / "dataset"
    # v1's files (not main's config.json); README and notes are not model files.
    assert tree_digest(model_dir) == tree_digest(tiny_model_dir)
    manifest = read_manifest(model_dir)
    assert manifest["revision"] == hub.shas["v1"] and manifest["request"]["revision"] == "v1"
    assert {f["path"] for f in manifest["files"] if "sha256" in f} == {"model.safetensors"}  # LFS digest recorded
    ds = read_manifest(dataset_dir)
    assert ds["layout"] == "files" and ds["fileType"] == "parquet"
    assert ds["splits"] == {"test": ["data/test-00000-of-00001.parquet"], "train": ["data/train-00000-of-00001.parquet"]}
    assert not (dataset_dir / "README.md").exists()
    assert "model hf://org/tiny: " in proc.stderr and "files 6/6" in proc.stderr  # progress line

    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    spec = dataset_load_spec(dataset_dir)
    assert spec["builder"] == "parquet"
    data = load_dataset_dict(dataset_dir, cache_dir=str(tmp_path / "hf-cache"))
    assert data["train"].num_rows == 100 and data["test"].num_rows == 20

    seen = len(hub.requests)
    again = run_cli(config, hf_env(hub))
    assert again.returncode == 0, again.stderr
    assert len(hub.requests) == seen, "a rerun with complete manifests must not contact the Hub"
    assert again.stderr.count("nothing to download") == 2

    offline = write_config(tmp_path, model={"uri": "hf://org/tiny", "revision": "v1"}, dataset={"uri": "hf://org/ds"},
                           download={"offline": True})
    assert run_cli(offline, hf_env(hub)).returncode == 0
    assert len(hub.requests) == seen


def test_dataset_split_selected_from_the_verified_files_and_local_model_in_place(tmp_path, hub, tiny_model_dir):
    """The v1 reference's load_dataset(repo, split=...): the initializer fetches and verifies the data files
    (no `datasets` in its image) and records the split; loading the volume's dataset selects it."""
    before = tree_digest(tiny_model_dir)
    config = write_config(tmp_path, model={"uri": f"file://{tiny_model_dir}"},
                          dataset={"uri": "hf://org/ds", "split": "train[:50]"})
    proc = run_cli(config, hf_env(hub))
    assert proc.returncode == 0, proc.stderr
    dataset_dir = tmp_path / "ws" / "dataset"
    manifest = read_manifest(dataset_dir)
    assert manifest["layout"] == "snapshot" and manifest["select"] == {"split": "train[:50]", "name": ""}
    assert sorted(f["path"] for f in manifest["files"]) == [
        "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    assert all(f["checksum"]["value"] for f in manifest["files"])  # verified like any Hub file
    data = load_dataset_dict(dataset_dir, cache_dir=str(tmp_path / "cache"))
    assert list(data) == ["train"] and data["train"].num_rows == 50
    assert data["train"][0] == {"prompt": "say 0", "completion": "0"}
    assert tree_digest(tiny_model_dir) == before and read_manifest(tiny_model_dir) is None
    assert not (tmp_path / "ws" / "model").exists()


def test_dataset_config_name_and_split_come_from_the_repos_readme(tmp_path, hub, tiny_model_dir):
    config = write_config(tmp_path, model={"uri": f"file://{tiny_model_dir}"},
                          dataset={"uri": "hf://org/configs", "name": "long", "split": "train[10:13]"})
    proc = run_cli(config, hf_env(hub))
    assert proc.returncode == 0, proc.stderr
    dataset_dir = tmp_path / "ws" / "dataset"
    assert not (dataset_dir / "notes").exists()  # data files and README.md only
    data = load_dataset_dict(dataset_dir, cache_dir=str(tmp_path / "cache"))
    assert [r["text"] for r in data["train"]] == ["long 10", "long 11", "long 12"]
    # a split the dataset does not have: the trainer's load names the field to fix
    manifest = read_manifest(dataset_dir)
    manifest["select"]["split"] = "validation"
    (dataset_dir / ".llm-finetune-manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError) as err:
        load_dataset_dict(dataset_dir, cache_dir=str(tmp_path / "cache"))
    assert err.value.field == "dataset.split" and "validation" in str(err.value)


def test_hub_errors_5xx_are_retried(tmp_path, hub, demo_dataset_dir):
    hub.fail_next(2, 503, match="/api/models/org/tiny/revision/")
    config = write_config(tmp_path, model={"uri": "hf://org/tiny"}, dataset={"uri": str(demo_dataset_dir)})
    proc = run_cli(config, hf_env(hub))
    assert proc.returncode == 0, proc.stderr
    assert "resolve revision of hf://org/tiny: HfHubHTTPError: Server error" in proc.stderr
    assert "retry 2/3" in proc.stderr
    assert read_manifest(tmp_path / "ws" / "model")["revision"] == hub.shas["main"]


@pytest.mark.parametrize("token,code,text", [
    ("", 1, "no token is set — set secrets.hf.existingSecret"),
    ("hf_wrong_token_9876543210", 1, "the token (HF_TOKEN) was refused (403)"),
    (GOOD_TOKEN, 0, ""),
])
def test_gated_repo(token, code, text, tmp_path, hub, demo_dataset_dir, termination_log):
    config = write_config(tmp_path, model={"uri": "hf://org/gated"}, dataset={"uri": str(demo_dataset_dir)})
    proc = run_cli(config, hf_env(hub, HF_TOKEN=token))
    assert proc.returncode == code, proc.stderr
    if code:
        message = termination_log.read_text()
        assert message.startswith("initializer: model.uri: hf://org/gated is a gated repo") and text in message
        assert not (tmp_path / "ws" / "model" / "model.safetensors").exists()
    else:
        assert read_manifest(tmp_path / "ws" / "model")["source"] == "hf://org/gated"
    if token:
        assert token not in proc.stderr  # RedactSecrets covers library log records too


def test_repo_without_safetensors_falls_back_to_bin(tmp_path, hub, demo_dataset_dir):
    config = write_config(tmp_path, model={"uri": "hf://org/nosafe"}, dataset={"uri": str(demo_dataset_dir)})
    proc = run_cli(config, hf_env(hub))
    assert proc.returncode == 0, proc.stderr
    model_dir = tmp_path / "ws" / "model"
    files = set(tree_digest(model_dir))
    assert "pytorch_model.bin" in files and "config.json" in files and "training_notes.md" not in files
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)


@pytest.mark.parametrize("model,download,text", [
    ({"uri": "hf://org/missing"}, {}, "model.uri: hf://org/missing not found (or private)"),
    ({"uri": "hf://org/tiny", "revision": "no-such-branch"}, {}, "model.revision: revision 'no-such-branch' not found"),
    ({"uri": "hf://org/evil"}, {}, "refusing '../evil.txt' from hf://org/evil@"),
    ({"uri": "hf://org/tiny"}, {"offline": True}, "download.offline: offline mode is on"),
    ({"uri": "hf://org/tiny", "allowPatterns": ["*.jinja", "*.safetensors"]}, {}, "has no config.json"),
    ({"uri": "gs://bucket/model"}, {}, "model.uri: unsupported URI 'gs://bucket/model'"),
])
def test_errors(model, download, text, tmp_path, hub, demo_dataset_dir, termination_log):
    config = write_config(tmp_path, model=model, dataset={"uri": str(demo_dataset_dir)}, download=download)
    proc = run_cli(config, hf_env(hub))
    assert proc.returncode == 1, proc.stderr
    assert text in termination_log.read_text()
    assert "Traceback" not in proc.stderr
    assert not (tmp_path.parent / "evil.txt").exists() and not (tmp_path / "ws" / "evil.txt").exists()



@pytest.mark.parametrize("repo,trust,chosen", [
    (["config.json", "model.safetensors", "modeling_x.py", "README.md", "merges.txt"], False,
     {"config.json", "model.safetensors", "merges.txt"}),
    (["config.json", "model.safetensors", "modeling_x.py"], True, {"config.json", "model.safetensors", "modeling_x.py"}),
    (["config.json", "pytorch_model.bin", "tokenizer.model", "flax_model.msgpack"], False,
     {"config.json", "pytorch_model.bin", "tokenizer.model"}),
    (["config.json", "model.safetensors", "consolidated.safetensors", "original/params.json", "chat_template.jinja"],
     False, {"config.json", "model.safetensors", "chat_template.jinja"}),
])
def test_default_model_patterns(repo, trust, chosen):
    """Safetensors + config/tokenizer files; *.py only with trustRemoteCode; *.bin only without safetensors."""
    from huggingface_hub.utils import filter_repo_objects

    from llm_finetune.core.config import DownloadConfig
    from llm_finetune.initializer.base import Context, Request
    from llm_finetune.initializer.hf import HubProvider

    provider = HubProvider(Request("model", "hf://org/x", trust_remote_code=trust), Context(DownloadConfig(), None))
    allow, ignore = provider.patterns(repo)
    assert set(filter_repo_objects(repo, allow_patterns=allow, ignore_patterns=ignore)) == chosen
