"""Bad configs: exit code 1, one clear line naming the field and the fix, in the termination log, no traceback."""

from __future__ import annotations

import argparse
import signal

import pytest

from llm_finetune.local.demo_assets import ALPACA_TEMPLATE
from trainer.helpers import INSTRUCTION_DATA, make_config, run_trainer, trainer_env

CASES = {
    "unknown-column": ({"data": {"format": "text", "textColumn": "body"}},
                       "trainer: data.textColumn: text column 'body' is not in the dataset (columns: input, instruction, output)"),
    "format-mismatch": ({"data": {"format": "chat"}},
                        "trainer: data.messagesColumn: format chat needs a messages column; 'messages' is not in the dataset"),
    "qlora-on-cpu": ({"training": {"method": "qlora"}},
                     "trainer: training.method: qlora needs a CUDA GPU"),
    "missing-model": ({"model": {"uri": "/nonexistent/model"}},
                      "trainer: model.uri: the model is not on the volume: /nonexistent/model does not exist"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_exits_1_with_the_field_in_the_termination_log(case, tmp_path, tiny_model, alpaca_dir):
    sections, expected = CASES[case]
    config = make_config(tmp_path, case, tiny_model, alpaca_dir, **sections)
    proc = run_trainer(config, trainer_env(tmp_path))
    assert proc.returncode == 1, proc.output
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith(expected), message
    assert " — " in message  # every message carries the fix
    assert "Traceback" not in proc.output
    assert not (tmp_path / "ws" / "runs" / case / "output").exists()


def _run_in_process(config) -> int:
    from llm_finetune.trainer import command

    old = signal.getsignal(signal.SIGTERM)
    try:
        return command.run(argparse.Namespace(config=str(config)))
    finally:
        signal.signal(signal.SIGTERM, old)


FAST_CASES = {
    "output-dir": ({"training": {"args": {"output_dir": "/tmp/x"}}},
                   "trainer: training.args.output_dir: is set by the chart (paths are chart-managed)"),
    "arg-typo": ({"training": {"args": {"learning_rat": 0.1}}},
                 "trainer: training.args.learning_rat: is not a SFTConfig field — did you mean 'learning_rate'?"),
    "max-length-in-args": ({"training": {"args": {"max_length": 64}}},
                           "trainer: training.args.max_length: comes from the data section — set data.maxSeqLength instead"),
    "token-classification": ({"model": {"transformerType": "AutoModelForTokenClassification"}},
                             "trainer: model.transformerType: AutoModelForTokenClassification is accepted for v1 "
                             "compatibility but this trainer does not train it — use one of AutoModelForCausalLM, "
                             "AutoModelForSequenceClassification"),
    "packing-classification": ({"model": {"transformerType": "AutoModelForSequenceClassification"},
                                "data": {"packing": True}}, "trainer: data.packing: packing joins samples"),
    "merge-full": ({"training": {"method": "full"}, "output": {"mergeAdapter": True}},
                   "trainer: output.mergeAdapter: merging needs an adapter"),
    "lora-typo": ({"training": {"lora": {"lora_alph": 8}}},
                  "trainer: training.lora.lora_alph: is not a LoraConfig field — did you mean 'lora_alpha'?"),
    "use-dora": ({"training": {"lora": {"use_dora": True}}}, "trainer: training.lora.use_dora: is set by training.method"),
    "missing-dataset": ({"dataset": {"uri": "/nonexistent/data"}},
                        "trainer: dataset.uri: the dataset is not on the volume: /nonexistent/data does not exist"),
}


@pytest.mark.parametrize("case", sorted(FAST_CASES))
def test_config_mistakes_found_before_loading_anything(case, tmp_path, tiny_model, alpaca_dir, termination_log):
    sections, expected = FAST_CASES[case]
    config = make_config(tmp_path, case, tiny_model, alpaca_dir, **sections)
    assert _run_in_process(config) == 1
    assert termination_log.read_text().startswith(expected), termination_log.read_text()


def test_prompt_template_with_an_unknown_column_names_it(tiny_model):
    from llm_finetune.core.config import JobConfig
    from llm_finetune.core.errors import ConfigError
    from llm_finetune.trainer.data.formats import resolve_format

    cfg = JobConfig()
    cfg.data.format, cfg.data.prompt_template, cfg.data.response_column = "instruction", ALPACA_TEMPLATE + "{context}", "output"
    row = {"instruction": "i", "input": "x", "output": "o"}
    with pytest.raises(ConfigError) as err:
        resolve_format(cfg, list(row), row, tokenizer=None)
    assert err.value.field == "data.promptTemplate" and "'context'" in err.value.message
    assert INSTRUCTION_DATA["promptTemplate"] == ALPACA_TEMPLATE
