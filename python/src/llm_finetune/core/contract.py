"""The job config contract beyond its types: managed pass-through keys and the rules that
both the validator (on values or a rendered config) and the trainer (at start, with what
it sees at run time) apply. Each rule is written once, here, and yields
:class:`~.problems.Problem` objects from plain inputs.

``training.args`` (TrainingArguments / SFTConfig) and ``training.lora`` (LoraConfig) are
passed through verbatim, except for the keys below: the validator rejects them in values
and in a rendered config, and the trainer rejects them before it builds the arguments.
"""

from __future__ import annotations

from typing import Iterator

from .config import CAUSAL_LM, SEQUENCE_CLASSIFICATION
from .problems import ERROR, Problem

# transformers Auto classes the trainer fine-tunes (the config accepts every v1 transformer_type).
TRAINED_TYPES = (CAUSAL_LM, SEQUENCE_CLASSIFICATION)
# Methods whose adapter is trained in full precision: it can be merged into the base model.
MERGEABLE_METHODS = ("lora", "dora")
# data.format values that only causal LMs read.
CAUSAL_LM_FORMATS = ("instruction", "chat")

# training.args keys whose value the chart decides (paths, resume, export, model loading).
CHART_MANAGED = {
    "output_dir": "checkpoints go to <paths.run>/checkpoints and the result to <paths.run>/output",
    "logging_dir": "TensorBoard logs go to <paths.run>/logs (and output/logs)",
    "overwrite_output_dir": "the chart manages the run folder; use training.resume",
    "resume_from_checkpoint": "use training.resume (auto, never or a checkpoint path)",
    "push_to_hub": "use output.export.uri (hf://org/name)",
    "trust_remote_code": "use model.trustRemoteCode",
    "model_init_kwargs": "use the model section (torchDtype, attnImplementation, trustRemoteCode)",
}
# training.args keys (SFTConfig) that come from the data section: key -> the data field.
FROM_DATA = {
    "max_length": "data.maxSeqLength", "max_seq_length": "data.maxSeqLength", "packing": "data.packing",
    "completion_only_loss": "data.completionOnlyLoss", "assistant_only_loss": "data.completionOnlyLoss",
    "dataset_text_field": "data.textColumn",
}
# training.lora keys the trainer sets itself: key -> (what is wrong, how to fix).
RESERVED_LORA = {"use_dora": ("is set by training.method", "remove it; use training.method: dora for DoRA")}


def reserved_args() -> dict[str, tuple[str, str]]:
    """training.args keys the trainer sets itself: key -> (what is wrong, how to fix)."""
    reserved = {k: ("is set by the chart (paths are chart-managed)", why) for k, why in CHART_MANAGED.items()}
    reserved.update({k: ("comes from the data section", f"set {where} instead") for k, where in FROM_DATA.items()})
    return reserved


def qlora_gpu_problems(method: str | None, gpus: int | None, *, no_gpu: str) -> Iterator[Problem]:
    """QLoRA needs a CUDA GPU. ``gpus``: GPUs the trainer gets (None: unknown, not checked);
    ``no_gpu`` says where none was found ("job.resources requests none", "none is visible")."""
    if method == "qlora" and gpus == 0:
        yield Problem("training.method", f"qlora needs a CUDA GPU (bitsandbytes 4/8-bit kernels), and {no_gpu}",
                      "request GPUs with job.resources.gpu (or limits nvidia.com/gpu), or use method lora", ERROR, "method")


def merge_problems(method: str | None, merge_adapter: bool) -> Iterator[Problem]:
    """output.mergeAdapter needs an adapter trained in full precision (lora or dora)."""
    if merge_adapter and isinstance(method, str) and method not in MERGEABLE_METHODS:
        yield Problem("output.mergeAdapter",
                      f"merging needs an adapter trained in full precision (training.method lora or dora), not {method}",
                      "set it to false, or train with lora/dora", ERROR, "method")


def task_problems(transformer_type: str | None, *, packing: bool | None = None,
                  data_format: str | None = None) -> Iterator[Problem]:
    """The task the trainer fine-tunes, and the data settings a sequence classifier cannot use."""
    if not isinstance(transformer_type, str):
        return
    if transformer_type not in TRAINED_TYPES:
        yield Problem("model.transformerType",
                      f"{transformer_type} is accepted for v1 compatibility but this trainer does not train it",
                      f"use one of {', '.join(TRAINED_TYPES)}", ERROR, "task")
    if transformer_type != SEQUENCE_CLASSIFICATION:
        return
    if packing:
        yield Problem("data.packing", "packing joins samples into one sequence, which sequence classification cannot do",
                      "set data.packing to null or false", ERROR, "task")
    if data_format in CAUSAL_LM_FORMATS:
        yield Problem("data.format", f"format {data_format!r} is a causal LM format, not available for sequence "
                      "classification", "use text or auto (data.textColumn + data.labelColumn)", ERROR, "task")


# FSDP2 (transformers' default fsdp_config.version) takes these legacy `fsdp` string options.
FSDP2_OPTIONS = ("full_shard", "shard_grad_op", "offload", "auto_wrap")


def fsdp_problems(args: dict | None, method: str | None) -> Iterator[Problem]:
    """training.args.fsdp / fsdp_config combinations that cannot work in this trainer."""
    args = args if isinstance(args, dict) else {}
    fsdp = args.get("fsdp")
    if not fsdp:
        return
    raw = args.get("fsdp_config")
    conf = {(k[5:] if k.startswith("fsdp_") else k): v for k, v in raw.items()} if isinstance(raw, dict) else {}
    where = "training.args.fsdp_config"
    if method == "qlora":
        yield Problem("training.method", "qlora loads 4-bit weights onto each process's own GPU (device_map), which FSDP "
                      "cannot shard", "use method lora or full with FSDP, or qlora without training.args.fsdp", ERROR, "fsdp")
    if str(conf.get("state_dict_type", "FULL_STATE_DICT")).upper() != "FULL_STATE_DICT":
        yield Problem(f"{where}.state_dict_type", f"{conf['state_dict_type']!r}: with sharded state dicts every rank "
                      "writes its part of each checkpoint, but only rank 0 writes the run volume here, and the final "
                      "output would hold no weights", "use FULL_STATE_DICT (the default)", ERROR, "fsdp")
    if conf.get("activation_checkpointing") is True and (args.get("activation_checkpointing") is True
                                                         or args.get("gradient_checkpointing") is True):
        yield Problem(f"{where}.activation_checkpointing", "FSDP's activation checkpointing and the "
                      "activation_checkpointing/gradient_checkpointing argument cannot both be on (transformers refuses)",
                      "keep fsdp_config.activation_checkpointing (no extra all-gather) and drop the argument", ERROR, "fsdp")
    if args.get("deepspeed"):
        yield Problem("training.args.deepspeed", "FSDP and DeepSpeed both shard the model: use one",
                      "remove training.args.deepspeed or training.args.fsdp", ERROR, "fsdp")
    options = fsdp.split() if isinstance(fsdp, str) else (fsdp if isinstance(fsdp, list) else [])
    if str(conf.get("version", 2)) == "2":
        for option in options:
            if option not in FSDP2_OPTIONS:
                yield Problem("training.args.fsdp", f"{option!r} is not an FSDP2 option (FSDP1, deprecated, only)",
                              "write fsdp: true and set fsdp_config (reshard_after_forward: true is full_shard)",
                              ERROR, "fsdp")
