"""The training data: from the dataset on the volume to what the trainer consumes.

The dataset is loaded from the volume with ``data.columnMapping`` applied by
:func:`llm_finetune.core.dataset.load_volume_dataset`; then, one job per module:

* :mod:`.formats` — which format the rows are in (``data.format``; ``auto`` picks the first
  that fits the columns: ``chat``, ``instruction``, ``text``) and the rows converted into
  TRL's standard columns (``text`` | ``prompt``/``completion`` | ``messages``);
* :mod:`.classification` — labels and tokenized rows for sequence classification
  (``data.textColumn`` and ``data.labelColumn``: integers, or strings mapped to ids in
  sorted order);
* :mod:`.splits` — the training and eval splits (``data.trainSplit``, ``evalSplit`` or
  ``evalRatio``, ``maxTrainSamples``/``maxEvalSamples``), formatted;
* :mod:`.rows` — running a row function with its cache file in node-local scratch;
* :mod:`.cache` — the prepared (tokenized, packed) datasets cached under
  ``paths.cache/<task>-<fingerprint>/`` by each node's local rank 0 (a temporary folder,
  then renamed); the fingerprint covers the dataset manifest (or file sizes and times), the
  tokenizer files, the ``data`` section, the task and the library versions. A node whose
  cache folder is not writable keeps its data in node-local scratch;
* :mod:`.collator` — packed rows kept as rows for sdpa/eager attention.

Tokenization, truncation and packing of causal LM data are TRL's (``SFTTrainer``).
"""
