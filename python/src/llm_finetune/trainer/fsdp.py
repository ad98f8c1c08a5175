"""FSDP (``training.args.fsdp`` + ``fsdp_config``): what the trainer adds to transformers' own support.

transformers' Trainer shards the model through accelerate (FSDP2 ``fully_shard`` by default,
auto-wrapping the model's decoder layer class). The trainer adds three things:

* **CPU nodes.** accelerate 1.15 switches to FSDP only on accelerators: ``AcceleratorState``
  turns ``DistributedType.MULTI_GPU`` (or another accelerator type) into ``FSDP`` when a plugin
  is given, and leaves ``MULTI_CPU`` alone, silently dropping the plugin
  (huggingface/accelerate v1.15.0 src/accelerate/state.py, ``AcceleratorState.__init__``). Without
  a GPU the run would train as plain DDP while the values say FSDP. torch's FSDP2 itself runs on
  CPU with gloo, so :func:`cpu_fsdp` makes the same switch for ``MULTI_CPU`` while the Trainer
  creates its Accelerator (the ``PartialState`` copy too: every later ``AcceleratorState()``
  copies the distributed type from it). On GPUs it changes nothing.
* **A log line** (:func:`describe`): how many FSDP units wrap the model and how much of it this
  rank holds, so a pod log shows that sharding happened.
* **Merging** (``output.mergeAdapter``): under FSDP the trained model's weights are shards on
  every rank, so rank 0 cannot merge them in memory; :func:`merge_saved_adapter` merges the
  saved adapter into a freshly loaded base model instead.

What cannot work with FSDP is refused by the validator (``core.contract.fsdp_problems``).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


def enabled(args: Any) -> bool:
    """Whether the training arguments ask for FSDP (transformers turns ``fsdp`` into plugin args)."""
    return getattr(args, "fsdp_plugin_args", None) is not None


@contextlib.contextmanager
def cpu_fsdp(active: bool) -> Iterator[None]:
    """While the Trainer builds its Accelerator: an FSDP plugin on CPU (MULTI_CPU) selects FSDP."""
    if not active:
        yield
        return
    from accelerate import state as accelerate_state
    from accelerate.utils import DistributedType

    original = accelerate_state.AcceleratorState.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        plugin = kw.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.fsdp_plugin = plugin
            self.distributed_type = DistributedType.FSDP
            accelerate_state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate_state.AcceleratorState.__init__ = init
    try:
        yield
    finally:
        accelerate_state.AcceleratorState.__init__ = original


def describe(model) -> str | None:
    """``"N FSDP units (Layer xK, ...), this rank holds X of Y parameters"`` for a sharded model, else None."""
    from collections import Counter

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return None
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        return None
    kinds = Counter(type(m).__name__.removeprefix("FSDP") for m in units)
    local = total = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    names = ", ".join(f"{k} x{n}" for k, n in kinds.most_common())
    return f"{len(units)} FSDP units ({names}), this rank holds {local} of {total} parameters"


def make_callback():
    """Logs :func:`describe` once the Trainer has wrapped the model (every rank: each holds its own shard)."""
    from transformers import TrainerCallback

    class FsdpCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            text = describe(model) if model is not None else None
            if text:
                log.info("fsdp: %s", text)

    return FsdpCallback()


def merge_saved_adapter(cfg, adapter_dir: Path, target: Path, tokenizer, *, num_labels: int | None,
                        label_names: list[str] | None) -> None:
    """Merge the adapter saved in ``adapter_dir`` into the base model, loaded as for training; save to ``target``."""
    import warnings

    from peft import PeftModel

    from .model import load_model

    base = load_model(cfg, tokenizer, num_labels=num_labels, label_names=label_names, local_rank=0,
                      gradient_checkpointing=False)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6
        warnings.simplefilter("ignore", FutureWarning)
        merged = PeftModel.from_pretrained(base, str(adapter_dir), local_files_only=True).merge_and_unload()
    merged.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
