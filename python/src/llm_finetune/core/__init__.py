"""The lower layer: contracts and clients every room shares. It imports nothing from
``llm_finetune`` outside ``core`` (an import-linter contract in ``python/pyproject.toml``
enforces it; see "Dependency rule" in ARCHITECTURE.md).

* :mod:`.errors`, :mod:`.log` — exit codes and the termination log; logging (rank, redaction,
  quiet library loggers, progress lines).
* :mod:`.config`, :mod:`.yamlio`, :mod:`.contract`, :mod:`.problems` — the job config contract:
  dataclasses and the one strict loader, the one YAML reader, the pass-through keys the chart
  and the trainer manage, :class:`~.problems.Problem`, and the rules both the validator and
  the trainer apply.
* :mod:`.volume`, :mod:`.layout`, :mod:`.dataset` — the volume contract: completion and output
  manifests, atomic writes, walking and hashing files, dataset layouts, loading a dataset from
  the volume (column mapping, prompt rendering).
* :mod:`.s3client`, :mod:`.hub`, :mod:`.retry` — remote clients: S3, the Hugging Face Hub
  (URI, token, error classification), retries with backoff.
* :mod:`.helm` — the real ``helm`` binary.
* :mod:`.version` — the package version.

Nothing here imports torch, transformers, boto3, huggingface_hub or datasets at import time.
"""
