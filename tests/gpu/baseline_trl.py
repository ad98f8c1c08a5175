#!/usr/bin/env python3
"""The GPU check's baseline: a plain TRL ``SFTTrainer`` at the settings in the spec file (tests/gpu/check.py).

    python tests/gpu/baseline_trl.py SPEC.json

What a TRL user writes: the model from its files, the ``text`` column of a JSON-lines file,
``SFTConfig(packing=True)`` (TRL's BFD packing, padding-free), LoRA through ``peft_config``.
The result file holds what the check compares: non-padding tokens seen, train runtime, peak memory.
"""

from __future__ import annotations

import json
import sys


def main(spec_path: str) -> int:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from llm_finetune.trainer.progress import peak_memory_bytes  # the figure the trainer's metrics.json holds

    spec = json.loads(open(spec_path, encoding="utf-8").read())
    cuda = torch.cuda.is_available()
    kwargs = {"dtype": getattr(torch, spec["dtype"]), "attn_implementation": spec["attn_implementation"]}
    if spec["method"] == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(spec["model"], **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    dataset = load_dataset("json", data_files=spec["data"], split="train")
    config = SFTConfig(output_dir=spec["output_dir"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch"],
                       learning_rate=spec["learning_rate"], bf16=spec["bf16"], gradient_checkpointing=spec["gradient_checkpointing"],
                       max_length=spec["seq"], packing=True, seed=spec["seed"], logging_steps=5, save_strategy="no",
                       report_to="none", include_num_input_tokens_seen="non_padding", use_cpu=not cuda,
                       dataloader_pin_memory=cuda)
    peft_config = None if spec["method"] == "full" else LoraConfig(task_type="CAUSAL_LM", **spec["lora"])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    result = trainer.train()
    found = {"tokens": int(trainer.state.num_input_tokens_seen), "seconds": result.metrics["train_runtime"],
             "peak_bytes": peak_memory_bytes(), "steps": trainer.state.global_step, "loss": result.metrics.get("train_loss")}
    with open(spec["result"], "w", encoding="utf-8") as fh:
        json.dump(found, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
