"""The job config loader: strict, typed, path-mapped."""

import pytest
import yaml

from llm_finetune.core import config as C
from llm_finetune.core.errors import ConfigError
from llm_finetune.validate import check_job_config


def minimal(**over):
    d = {"apiVersion": C.CONFIG_API_VERSION, "model": {"uri": "hf://org/m"}, "dataset": {"uri": "hf://org/d"}}
    d.update(over)
    return d


def test_camel_case_keys_become_typed_fields():
    cfg = C.from_dict(minimal(
        model={"uri": "hf://org/m", "transformerType": "AutoModelForSequenceClassification", "numLabels": 5,
               "s3": {"endpointUrl": "http://minio:9000"}},
        download={"multipartThresholdMiB": 8, "retryBackoffSeconds": 2},
        training={"args": {"per_device_train_batch_size": 2}, "lora": {"lora_alpha": 8}},
    ))
    assert cfg.model.num_labels == 5
    assert cfg.model.s3.endpoint_url == "http://minio:9000"
    assert cfg.task == "sequence-classification"
    assert cfg.download.multipart_threshold_mib == 8
    assert cfg.download.retry_backoff_seconds == 2.0
    # pass-through mappings keep their keys verbatim
    assert cfg.training.args == {"per_device_train_batch_size": 2}
    assert cfg.training.lora == {"lora_alpha": 8}


def test_round_trip_to_dict():
    cfg = C.from_dict(minimal(download={"multipartThresholdMiB": 8}))
    again = C.from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.to_dict()["download"]["multipartThresholdMiB"] == 8


@pytest.mark.parametrize("data, field, words", [
    (minimal(model={"uri": "hf://o/m", "revison": "x"}), "model.revison", "did you mean 'revision'"),
    (minimal(data={"maxSeqLength": "long"}), "data.maxSeqLength", "expected an integer"),
    (minimal(model={"uri": "hf://o/m", "trustRemoteCode": "yes"}), "model.trustRemoteCode", "true or false"),
    (minimal(apiVersion="llm-finetune/v9"), "apiVersion", "unsupported config version"),
    (minimal(model={"uri": "hf://o/m", "allowPatterns": "*.json"}), "model.allowPatterns", "expected a list"),
])
def test_bad_config_names_the_field(data, field, words):
    with pytest.raises(ConfigError) as exc:
        C.from_dict(data)
    assert str(exc.value).startswith(f"{field}:")
    assert words in str(exc.value)


@pytest.mark.parametrize("over, field, words", [
    ({"training": {"method": "prefix"}}, "training.method", "is not allowed — use one of 'lora', 'dora', 'qlora', 'full'"),
    ({"model": {"uri": ""}}, "model.uri", "'' must be hf://org/name"),
    ({"storage": {"mode": "everywhere"}}, "storage.mode", "is not allowed — use one of 'shared', 'perPod'"),
    ({"model": {"uri": "hf://o/m", "torchDtype": "int4"}}, "model.torchDtype", "is not allowed"),
    ({"training": {"qlora": {"bits": 3}}}, "training.qlora.bits", "is not allowed"),
])
def test_allowed_values_are_checked_once_by_the_validator(over, field, words):
    """The loader reads types; allowed values are the chart schema's, which the images apply
    through the validator (the trainer at start): one check, not a second list in the loader."""
    cfg = C.from_dict(minimal(**over))
    with pytest.raises(ConfigError) as exc:
        check_job_config(cfg)
    assert str(exc.value).startswith(f"{field}:"), str(exc.value)
    assert words in str(exc.value)


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        C.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load_config(bad)


def test_path_map_rewrites_paths_and_local_uris(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(minimal(model={"uri": "file:///workspace/models/x"},
                                        paths={"workspace": "/workspace", "run": "/output/runs/j"})))
    monkeypatch.setenv(C.PATH_MAP_ENV, f"/workspace={tmp_path}/ws,/output={tmp_path}/out")
    cfg = C.load_config(f)
    assert cfg.paths.workspace == f"{tmp_path}/ws"
    assert cfg.paths.run == f"{tmp_path}/out/runs/j"
    assert cfg.model_dir == f"{tmp_path}/ws/models/x"
    assert cfg.dataset_dir == f"{tmp_path}/ws/dataset"  # default paths.dataset, mapped
    assert cfg.output_dir == f"{tmp_path}/out/runs/j/output"


def test_bad_path_map(monkeypatch):
    monkeypatch.setenv(C.PATH_MAP_ENV, "workspace")
    with pytest.raises(ConfigError, match=C.PATH_MAP_ENV):
        C.from_dict(minimal())


def test_atomic_json_is_readable_like_any_other_file(tmp_path):
    import stat

    from llm_finetune.core.volume import atomic_write_json

    from llm_finetune.core import volume

    atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~volume._UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
