"""The storage initializer: puts the model and the dataset on the volume.

* :mod:`.command` — ``llm-finetune initialize [--wait]`` (the init container).
* :mod:`.base` — the :class:`~.base.Provider` interface, the registry keyed by URI scheme,
  request identity (``sourceKey``), path safety, progress.
* :mod:`.hf`, :mod:`.s3`, :mod:`.local` — the built-in providers (``hf://``, ``s3://``, paths).
* :mod:`.layout` — :func:`~.layout.dataset_load_spec` / :func:`~.layout.load_dataset_dict`:
  how the trainer loads the dataset directory (no heavy imports).
* :mod:`.retry` — backoff with jitter; transient vs permanent errors.

Nothing here imports boto3, huggingface_hub or datasets at import time.
"""
