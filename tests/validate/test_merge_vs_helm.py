"""The validator merges values exactly like the real Helm 3 and Helm 4: the config sections
of the rendered job ConfigMap equal the same sections of our merge, and values Helm's schema
check rejects are rejected by ours (same file, same draft)."""

import pytest
import yaml

from fixtures.render import find, render_text
from llm_finetune.core.yamlio import yaml_load
from llm_finetune.core.errors import UserError
from llm_finetune.core.helm import load_manifests
from llm_finetune.validate import CONFIG_SECTIONS, values as V, validate_values

CHART = V.chart_dir()
SCHEMA = V.load_schema(CHART)


def helm_config(helm, files, sets):
    docs = load_manifests(render_text(helm, files=files, sets=[s for _, s in sets],
                                      ) if all(m == "typed" for m, _ in sets) else _render_modes(helm, files, sets))
    (cm,) = [d for d in find(docs, "ConfigMap", hook="")]
    return yaml_load(cm["data"]["config.yaml"])  # the images' loader (Helm writes 1e-05 without a dot)


def _render_modes(helm, files, sets):
    from llm_finetune.core.helm import template

    extra = []
    for mode, expr in sets:
        extra += [{"typed": "--set", "string": "--set-string", "json": "--set-json"}[mode], expr]
    return template(CHART, values_files=[str(f) for f in files], helm=helm, extra_args=extra)


def without_nulls(node):
    return {k: without_nulls(v) for k, v in node.items() if v is not None} if isinstance(node, dict) else node


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))  # str: YAML text as a user writes it
    return path


CASES = {
    "typed-scalars": ([], [("typed", "training.args.learning_rate=0.0002"), ("typed", "data.maxSeqLength=512"),
                           ("typed", "model.trustRemoteCode=TRUE"), ("typed", "training.args.seed=007")]),
    "lists-escapes": ([], [("typed", "model.allowPatterns={*.json,*.safetensors}"), ("typed", "dataset.name=a\\,b"),
                           ("typed", "data.columnMapping.old\\.name=new")]),
    "set-into-file-list": ([{"model": {"allowPatterns": ["a", "b", "c"]}}], [("typed", "model.allowPatterns[1]=X")]),
    "set-replaces-default-list": ([], [("typed", "training.lora.target_modules[1]=v_proj"), ("typed", "training.lora.target_modules[0]=q_proj")]),
    "files-in-order-and-null-deletes": ([{"data": {"packing": True, "maxTrainSamples": 10}, "training": {"args": {"max_steps": 5}}},
                                         {"data": {"packing": None}, "training": {"args": {"seed": None, "bf16": True}}}], []),
    # Helm 3 drops every user null; Helm 4 keeps one whose default is null or absent.
    "null-without-default": ([{"training": {"args": {"max_grad_norm": None}}, "model": {"numLabels": None}}], []),
    "set-null-on-nullable-and-passthrough": ([], [("typed", "training.lora.lora_dropout=null"), ("typed", "data.packing=null"),
                                                  ("typed", "model.numLabels=null")]),
    "set-json-and-string": ([], [("json", 'training.lora={"r": 8, "target_modules": ["q_proj", "v_proj"]}'),
                                 ("string", "model.revision=1234"), ("typed", "training.args.bf16=true")]),
    # Scalars typed as Go's YAML types them: a dot-less exponent is a float, a date stays a string.
    "yaml-scalars": (["training:\n  args:\n    learning_rate: 1e-5\n    weight_decay: 1E-7\nmodel:\n  revision: 2024-01-01\n"], []),
    "file-list-of-maps": ([{"training": {"args": {"report_to": ["tensorboard"], "lr_scheduler_kwargs": {"num_cycles": 2}}}}],
                          [("typed", "training.args.report_to[1]=wandb")]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merge_equals_helm(helm, tmp_path, case):
    file_data, sets = CASES[case]
    files = [write(tmp_path, f"v{i}.yaml", d) for i, d in enumerate(file_data)]
    ours = V.helm_values(CHART, files, sets, helm_major=3 if "helm-3" in helm else 4)
    rendered = helm_config(helm, files, sets)
    for section in CONFIG_SECTIONS:
        # The chart drops null leaves from config.yaml (Helm 3 and 4 keep different ones) but
        # training's: there a null drops a default.
        assert rendered[section] == (ours[section] if section == "training" else without_nulls(ours[section])), section
    assert not [p for p in validate_values(ours, SCHEMA, introspect=False) if p.rule == "schema"]


BAD = {
    "decimal-via-set": ([("typed", "data.evalRatio=0.1")], "data.evalRatio"),
    "set-string-int": ([("string", "data.maxSeqLength=512")], "data.maxSeqLength"),
    "enum": ([("typed", "storage.mode=shard")], "storage.mode"),
    "unknown-key": ([("typed", "model.revison=main")], "model.revison"),
    "null-list-item": ([("typed", "model.ignorePatterns[2]=z")], "model.ignorePatterns[0]"),
    "uri-scheme": ([("typed", "dataset.uri=gs://bucket/x")], "dataset.uri"),
    "quantity": ([("typed", "storage.size=10GB")], "storage.size"),
    "mixed-resources": ([("typed", "job.resources.cpu=2"), ("typed", "job.resources.requests.cpu=1")], "job.resources.cpu"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_schema_rejects_what_helm_rejects(helm, case):
    sets, path = BAD[case]
    with pytest.raises(UserError):
        _render_modes(helm, [], sets)
    # Ours rejects it too, at the same field (by the schema, or by a rule with a more specific message).
    problems = [p for p in validate_values(V.helm_values(CHART, [], sets), SCHEMA, introspect=False) if p.severity == "error"]
    assert path in {p.path for p in problems}, [p.render() for p in problems]
