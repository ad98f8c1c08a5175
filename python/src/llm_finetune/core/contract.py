"""Pass-through keys the chart and the trainer manage themselves.

``training.args`` (TrainingArguments / SFTConfig) and ``training.lora`` (LoraConfig) are
passed through verbatim, except for the keys below: the validator rejects them in values
and in a rendered config, and the trainer rejects them before it builds the arguments.
"""

from __future__ import annotations

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
