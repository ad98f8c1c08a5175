"""The job config: the one contract between the chart and both images.

The chart renders ``config.yaml`` into a ConfigMap (``chart/templates/configmap.yaml``):
the values sections ``model``, ``dataset``, ``data``, ``training``, ``output`` and
``download`` verbatim (camelCase keys, as in values.yaml), plus ``run``, ``paths`` and
``storage`` computed by the chart. This module loads that file into typed dataclasses.

* Keys are camelCase in the file and snake_case here; pass-through dicts
  (``training.args`` = TrainingArguments, ``training.lora`` = LoraConfig,
  ``data.columnMapping``) keep their keys as they are.
* Loading is strict: an unknown or mistyped key is a :class:`ConfigError` naming the
  field and the fix. ``tests/`` check that these dataclasses and ``values.schema.json``
  describe the same fields. Allowed values (the schema's enums and patterns) and the rules
  between fields are the validator's: the trainer applies it at start
  (:func:`llm_finetune.validate.check_job_config`).
* No secrets ever live here: tokens and keys come from the environment only.
* ``LLM_FINETUNE_PATH_MAP`` (``/workspace=/tmp/ws,/output=/tmp/out``) maps pod paths to
  local folders for ``llm-finetune run-local``; in a pod it is unset.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ConfigError
from .yamlio import read_mapping

CONFIG_API_VERSION = "llm-finetune/v1"
DEFAULT_CONFIG_PATH = "/etc/llm-finetune/config.yaml"
PATH_MAP_ENV = "LLM_FINETUNE_PATH_MAP"

CAUSAL_LM = "AutoModelForCausalLM"
SEQUENCE_CLASSIFICATION = "AutoModelForSequenceClassification"


def camel_to_snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return s.lower()


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------
@dataclass
class S3Settings:
    endpoint_url: str = ""
    region: str = ""


@dataclass
class RunConfig:
    name: str = "llm-finetune"  # the PyTorchJob name (release fullname + runId)
    id: str = ""
    # Retries of a pod without a new checkpoint before its failure becomes permanent
    # (job.runPolicy.backoffLimit; None: no limit). See core/attempts.py.
    backoff_limit: int | None = None


@dataclass
class PathsConfig:
    workspace: str = "/workspace"  # volume the initializer fills
    model: str = "/workspace/model"
    dataset: str = "/workspace/dataset"
    cache: str = "/workspace/cache"  # preprocessed datasets
    run: str = "/workspace/runs/llm-finetune"  # checkpoints/, output/ and logs of this run


@dataclass
class StorageConfig:
    mode: str = "shared"


@dataclass
class ModelConfig:
    uri: str = ""
    revision: str = "main"
    transformer_type: str = CAUSAL_LM
    num_labels: Optional[int] = None
    trust_remote_code: bool = False
    torch_dtype: str = "auto"
    attn_implementation: str = ""
    allow_patterns: list[str] = field(default_factory=list)
    ignore_patterns: list[str] = field(default_factory=list)
    s3: S3Settings = field(default_factory=S3Settings)


@dataclass
class DatasetConfig:
    uri: str = ""
    revision: str = "main"
    name: str = ""
    split: str = ""
    file_type: str = ""
    allow_patterns: list[str] = field(default_factory=list)
    s3: S3Settings = field(default_factory=S3Settings)


@dataclass
class DataConfig:
    format: str = "auto"
    column_mapping: dict[str, str] = field(default_factory=dict)
    text_column: str = "text"
    prompt_column: str = "prompt"
    response_column: str = "completion"
    prompt_template: str = ""
    messages_column: str = "messages"
    label_column: str = "label"
    train_split: str = "train"
    eval_split: str = ""
    eval_ratio: float = 0.0
    max_seq_length: int = 1024
    packing: Optional[bool] = None
    completion_only_loss: bool = True
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None


@dataclass
class QLoraConfig:
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"


@dataclass
class TrainingConfig:
    method: str = "lora"
    defaults: str = "recommended"  # what unset args/lora keys take: core.defaults
    lora: dict[str, Any] = field(default_factory=dict)
    qlora: QLoraConfig = field(default_factory=QLoraConfig)
    args: dict[str, Any] = field(default_factory=dict)
    resume: str = "auto"


@dataclass
class ExportConfig:
    uri: str = ""
    private: bool = True
    s3: S3Settings = field(default_factory=S3Settings)


@dataclass
class OutputConfig:
    merge_adapter: bool = False
    export: ExportConfig = field(default_factory=ExportConfig)


@dataclass
class DownloadConfig:
    concurrency: int = 8
    retries: int = 5
    retry_backoff_seconds: float = 1.0
    multipart_threshold_mib: int = 64
    offline: bool = False


# camelCase spellings that camel_to_snake cannot guess.
_KEY_OVERRIDES = {"multipartThresholdMiB": "multipart_threshold_mib"}
_FIELD_TO_KEY = {v: k for k, v in _KEY_OVERRIDES.items()}


@dataclass
class JobConfig:
    """The whole config file."""

    api_version: str = CONFIG_API_VERSION
    run: RunConfig = field(default_factory=RunConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)

    # -- derived ----------------------------------------------------------
    @property
    def task(self) -> str:
        """causal-lm or sequence-classification (others are rejected by the trainer)."""
        return {CAUSAL_LM: "causal-lm", SEQUENCE_CLASSIFICATION: "sequence-classification"}.get(
            self.model.transformer_type, self.model.transformer_type
        )

    @property
    def model_dir(self) -> str:
        """Where the trainer loads the model: an existing local path as is, else paths.model."""
        return local_source_path(self.model.uri) or self.paths.model

    @property
    def dataset_dir(self) -> str:
        return local_source_path(self.dataset.uri) or self.paths.dataset

    @property
    def checkpoints_dir(self) -> str:
        return os.path.join(self.paths.run, "checkpoints")

    @property
    def output_dir(self) -> str:
        """Final adapter/model, tokenizer, manifest and metrics."""
        return os.path.join(self.paths.run, "output")

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.paths.run, "logs")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------
def _key_to_field(key: str) -> str:
    return _KEY_OVERRIDES.get(key, camel_to_snake(key))


def _field_to_key(name: str) -> str:
    return _FIELD_TO_KEY.get(name, snake_to_camel(name))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {type(value).__name__}", field=where,
                              hint="write it as a YAML list")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {type(value).__name__}", field=where,
                              hint="write it as a YAML mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", field=where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", field=where)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", field=where)
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", field=where,
                              hint="quote it in YAML")
        return value
    raise ConfigError(f"unsupported type {_type_name(tp)}", field=where)  # pragma: no cover


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", field=where or "config")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = _key_to_field(str(key))
        path = f"{where}.{key}" if where else str(key)
        if name not in fields:
            known = [_field_to_key(f) for f in fields]
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(known)}"
            raise ConfigError("unknown field", field=path, hint=hint)
        # dict-typed fields (training.args, training.lora, data.columnMapping) keep their keys verbatim.
        kwargs[name] = _coerce(value, hints[name], path)
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> JobConfig:
    """Build a :class:`JobConfig` from a parsed config mapping (strict)."""
    cfg = _from_dict(JobConfig, data, "")
    if cfg.api_version != CONFIG_API_VERSION:
        raise ConfigError(f"unsupported config version {cfg.api_version!r}", field="apiVersion",
                          hint=f"this image reads {CONFIG_API_VERSION}; use the chart version that matches the image")
    return apply_path_map(cfg)


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> JobConfig:
    """Read and validate the config file written by the chart."""
    data = read_mapping(path, what="config file", error=ConfigError, allow_empty=False,
                        missing_hint="mount the chart's ConfigMap there or pass --config")
    return from_dict(data)


def to_dict(obj: Any) -> Any:
    """Inverse of :func:`from_dict`: camelCase keys, pass-through dicts unchanged."""
    if dataclasses.is_dataclass(obj):
        return {_field_to_key(f.name): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return dict(obj)
    return obj


def schema_fields(cls: type) -> dict[str, Any]:
    """camelCase key -> nested dict (dataclass) or None (leaf); used to compare with the chart schema."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
        out[_field_to_key(f.name)] = schema_fields(tp) if dataclasses.is_dataclass(tp) else None
    return out


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------
def path_map() -> list[tuple[str, str]]:
    """Parse ``LLM_FINETUNE_PATH_MAP`` into (pod prefix, local prefix) pairs, longest first."""
    raw = os.environ.get(PATH_MAP_ENV, "")
    pairs = []
    for item in filter(None, (s.strip() for s in raw.split(","))):
        src, sep, dst = item.partition("=")
        if not sep or not src.startswith("/"):
            raise ConfigError(f"bad entry {item!r}", field=PATH_MAP_ENV, hint="use /pod/path=/local/path[,...]")
        pairs.append((src.rstrip("/") or "/", dst.rstrip("/") or "/"))
    return sorted(pairs, key=lambda p: len(p[0]), reverse=True)


def map_path(path: str) -> str:
    """Map a pod path to the local filesystem (identity in a pod)."""
    for src, dst in path_map():
        if path == src or path.startswith(src + "/"):
            return dst + path[len(src):]
    return path


def local_source_path(uri: str) -> str | None:
    """The directory/file of a ``file://`` or absolute-path source, or None for remote sources."""
    if uri.startswith("file://"):
        return uri[len("file://"):] or "/"
    if uri.startswith("/"):
        return uri
    return None


def apply_path_map(cfg: JobConfig) -> JobConfig:
    if not os.environ.get(PATH_MAP_ENV):
        return cfg
    for f in dataclasses.fields(PathsConfig):
        setattr(cfg.paths, f.name, map_path(getattr(cfg.paths, f.name)))
    for section in (cfg.model, cfg.dataset):
        local = local_source_path(section.uri)
        if local is not None:
            section.uri = map_path(local)
    return cfg
