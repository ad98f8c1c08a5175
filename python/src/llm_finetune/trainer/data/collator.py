"""Data collators of the trainer."""

from __future__ import annotations


class PackedRowsCollator:
    """Packed rows kept as rows: ``position_ids`` restart at each sample and no attention mask, so
    transformers masks attention per sample within each row (sdpa/eager).

    TRL flattens a packed batch into one row (padding-free), which is ideal for FlashAttention's
    variable-length kernels; with sdpa/eager attention that costs (batch x length)^2 instead of
    batch x length^2, so without FlashAttention the trainer uses this collator.
    """

    def __init__(self, pad_token_id: int) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, return_position_ids=True)

    def __call__(self, examples):
        batch = self.inner(examples)
        batch.pop("attention_mask", None)
        # No target across a sample boundary: the first token of a sample is not predicted from the previous one.
        batch["labels"][batch["position_ids"] == 0] = -100
        # transformers only derives the per-sample mask from position_ids without a KV cache.
        batch["use_cache"] = False
        return batch
