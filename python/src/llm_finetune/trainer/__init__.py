"""The trainer: fine-tune the model on the volume under torchrun (``llm-finetune train``).

Modules: ``command`` (entry point), ``run`` (one run on every rank, as named steps), ``args``
(TrainingArguments/SFTConfig from ``training.args``), ``data/`` (formats, classification,
splits, prepared-data cache, collator: one module each), ``model`` (tokenizer, model,
LoRA/DoRA/QLoRA/full, the start-up config check), ``checkpoints`` (completeness
markers, resume, rotation, SIGTERM), ``dist`` (ranks, scratch, checkpoint broadcast),
``progress`` (log lines), ``output`` (the output folder and its ``manifest.json`` — keys
documented there), ``export`` (S3 / Hugging Face Hub).

Run folder (``paths.run``), written by global rank 0 only::

    checkpoints/checkpoint-N/   transformers checkpoint + .llm-finetune-complete.json (marker)
    logs/                       TensorBoard event files
    output/                     adapter or model, tokenizer, metrics.json, logs/, merged/, manifest.json (last)

Causal LM uses TRL's SFTTrainer (packing with best-fit decreasing, completion-only and
assistant-only loss, dynamic padding); sequence classification uses transformers' Trainer.
"""
