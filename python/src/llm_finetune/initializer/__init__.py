"""The storage initializer: puts the model and the dataset on the volume.

* :mod:`.command` — ``llm-finetune initialize [--wait]`` (the init container).
* :mod:`.base` — the :class:`~.base.Provider` interface, request identity (``sourceKey``),
  path safety, progress.
* :mod:`.hf`, :mod:`.s3`, :mod:`.local` — the built-in providers (``hf://``, ``s3://``, paths);
  :mod:`.registry` lists them by URI scheme.

Shared with the other rooms through ``llm_finetune.core``: the dataset layout
(:mod:`~llm_finetune.core.layout`), the retry policy (:mod:`~llm_finetune.core.retry`), the
S3 and Hub clients. Nothing here imports boto3, huggingface_hub or datasets at import time.
"""
