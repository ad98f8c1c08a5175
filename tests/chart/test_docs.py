"""Field docs have one source, values.schema.json's descriptions: the `# --` comments of
values.yaml and the chart README's parameters table are generated from it and up to date."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import yaml

TOOL = Path(__file__).resolve().parents[1] / "tools" / "chart_docs.py"
spec = importlib.util.spec_from_file_location("chart_docs", TOOL)
chart_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chart_docs)

SCHEMA, VALUES_TEXT, README = chart_docs.load()
VALUES = yaml.safe_load(VALUES_TEXT)


def test_values_yaml_and_readme_are_generated_from_the_schema(capsys):
    code = chart_docs.main([])
    assert code == 0, capsys.readouterr().err  # names the stale file and says: run `make chart-docs`


def test_drift_is_reported_with_the_command_to_run(capsys, monkeypatch):
    stale = VALUES_TEXT.replace("# -- Size of the created claim", "# -- Size of the claim")
    assert stale != VALUES_TEXT
    monkeypatch.setattr(chart_docs, "load", lambda: (SCHEMA, stale, README))
    assert chart_docs.main([]) == 1
    err = capsys.readouterr().err
    assert "chart/values.yaml" in err and "make chart-docs" in err and "README" not in err


def _without_docs(text: str) -> list[str]:
    lines, in_doc = [], False
    for line in text.splitlines():
        if re.match(r"^ *# -- ", line) or (in_doc and re.match(r"^ *#", line)):
            in_doc = True
            continue
        in_doc = False
        lines.append(line)
    return lines


def test_only_the_doc_comments_of_values_yaml_are_generated():
    rendered = chart_docs.render_values(VALUES_TEXT, SCHEMA)
    assert yaml.safe_load(rendered) == VALUES
    assert _without_docs(rendered) == _without_docs(VALUES_TEXT)  # values, order, headers, other comments
    assert "# Storage\n" in rendered and "  # Unset keys of training.args and training.lora" in rendered


def _doc_blocks(text: str) -> dict[str, list[str]]:
    """{dotted key: the `# --` block above it} of a values.yaml text."""
    blocks, stack, block = {}, [], []
    for line in text.splitlines():
        if re.match(r"^ *# -- ", line) or (block and re.match(r"^ *#", line)):
            block.append(line)
            continue
        key = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if key:
            stack = [(i, k) for i, k in stack if i < len(key.group(1))] + [(len(key.group(1)), key.group(2))]
            if block:
                blocks[".".join(k for _, k in stack)] = block
        block = []
    return blocks


def test_every_documented_key_has_its_schema_description_above_it():
    blocks = _doc_blocks(chart_docs.render_values(VALUES_TEXT, SCHEMA))
    documented = {key: node for key, node, _ in chart_docs.documented(SCHEMA, VALUES)}
    assert set(blocks) == set(documented) and len(blocks) > 100
    for key, node in documented.items():
        indent = "  " * key.count(".")
        lines = blocks[key]
        assert lines[0].startswith(f"{indent}# -- ") and all(line.startswith(f"{indent}# ") for line in lines), key
        assert all(len(line) <= chart_docs.WIDTH for line in lines), key
        text = " ".join(line.strip().removeprefix("# -- ").removeprefix("# ") for line in lines)
        assert text == " ".join(node["description"].split()), key
    # free-form maps and resources are documented as a whole, not key by key
    for key in ("runId", "images.trainer.tag", "storage.perPod.outputToClaim", "training.lora", "initializer.resources"):
        assert key in documented, key
    assert "training.lora.r" not in documented and "initializer.resources.requests" not in documented


def test_regeneration_fixes_edited_missing_and_extra_comments():
    want = chart_docs.render_values(VALUES_TEXT, SCHEMA)
    edited = (want.replace("# -- Size of the created claim", "# -- Size")
              .replace("  # -- Registry that overrides every image's registry (air-gapped mirrors).\n", "")
              .replace("      cpu: 500m\n", "      # -- cpu\n      # of the test pod\n      cpu: 500m\n"))
    assert edited.count("\n") == want.count("\n") + 1
    assert chart_docs.render_values(edited, SCHEMA) == want
    assert chart_docs.render_values(want, SCHEMA) == want  # idempotent


def test_the_readme_table_has_a_row_per_documented_key_and_stale_text_is_detected():
    table = chart_docs.table(SCHEMA, VALUES)
    for key in ("`runId`", "`job.numWorkers`", "`storage.perPod.outputToClaim`", "`training.lora`",
                "`job.resources`", "`secrets.s3.sessionTokenKey`", "`images.trainer.digest`", "`initializer.resources`"):
        assert f"| {key} |" in table, key
    assert "| `training.lora.r` |" not in table  # free-form maps are one row, with their default
    stale = README.replace("| `runId` |", "| `runID` |")
    assert chart_docs.render_readme(stale, SCHEMA, VALUES) == README


def test_a_schema_description_change_reaches_both_files():
    schema = json.loads(json.dumps(SCHEMA))
    schema["properties"]["storage"]["properties"]["size"]["description"] = "How big the claim is."
    assert "  # -- How big the claim is.\n  size: 10Gi" in chart_docs.render_values(VALUES_TEXT, schema)
    assert "| `storage.size` | " in README and "How big the claim is. |" in chart_docs.render_readme(README, schema, VALUES)
