"""The chart README's parameters table is generated, and up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "chart_docs.py"
spec = importlib.util.spec_from_file_location("chart_docs", TOOL)
chart_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chart_docs)


def test_chart_readme_is_up_to_date(capsys):
    assert chart_docs.main([]) == 0, "chart/README.md is stale: run `make chart-docs`"


def test_the_table_has_a_row_per_documented_key_and_stale_text_is_detected():
    readme = (chart_docs.CHART / "README.md").read_text()
    table = chart_docs.table()
    for key in ("`runId`", "`job.numWorkers`", "`storage.perPod.outputToClaim`", "`training.lora`",
                "`job.resources`", "`secrets.s3.sessionTokenKey`", "`images.trainer.digest`"):
        assert f"| {key} |" in table, key
    assert "| `training.lora.r` |" not in table  # free-form maps are one row, with their default
    stale = readme.replace("| `runId` |", "| `runID` |")
    assert chart_docs.render_readme(stale) == readme
