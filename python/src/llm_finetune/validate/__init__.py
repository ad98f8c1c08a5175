"""Values validator: Helm's merge, the chart's JSON schema, then semantic rules.

The middle layer: it imports ``core`` only, and every room may call it (the preflight hook,
run-local and the trainer apply its checks). Library use (chart tests, hooks)::

    from llm_finetune.validate import validate_files, validate_values, validate_config

    report = validate_files(["my-values.yaml"], sets=[("typed", "job.numWorkers=4")])
    for p in report.problems: print(p.render())

The entry points live in :mod:`.check`; :mod:`.values` (Helm's merge), :mod:`.strvals`
(``--set`` syntax), :mod:`.schema` (the chart's JSON schema), :mod:`.rules` (semantic rules)
and :mod:`.introspect` (``training.args``/``training.lora`` against the installed libraries).

Only ``pyyaml`` and ``jsonschema`` are needed (the ``validate`` extra); the
TrainingArguments/LoraConfig check uses the field lists of the pinned transformers/trl/peft
shipped with the package (:mod:`.passthrough`), so it needs none of them and imports none. Where the schema comes from: see :mod:`.values`.
"""

from ..core.problems import ERROR, NOTICE, WARNING, Problem
from .check import (CONFIG_SECTIONS, Report, check_job_config, config_values, validate_config, validate_config_file,
                    validate_files, validate_values)

__all__ = ["Problem", "Report", "ERROR", "WARNING", "NOTICE", "CONFIG_SECTIONS", "validate_values", "validate_files",
           "validate_config", "validate_config_file", "config_values", "check_job_config"]
