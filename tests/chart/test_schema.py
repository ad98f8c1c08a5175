"""values.schema.json: bad values are rejected by Helm naming the field; schema, values.yaml,
templates and the config dataclasses describe the same keys."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from fixtures.render import CHART, job_config_text, pytorchjob, render
from llm_finetune.core import config as C
from llm_finetune.core.yamlio import yaml_load
from llm_finetune.core.errors import UserError
from llm_finetune.core.helm import template

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
CONFIG_SECTIONS = {"model": C.ModelConfig, "dataset": C.DatasetConfig, "data": C.DataConfig,
                   "training": C.TrainingConfig, "output": C.OutputConfig, "download": C.DownloadConfig}

# (values, field Helm must name). Each is a mistake a user can really make.
BAD = [
    ({"runId": "Run_2"}, "runId"),
    ({"runId": "r" * 41}, "runId"),
    ({"fullnameOverride": "My Release"}, "fullnameOverride"),
    ({"replicas": 2}, "replicas"),  # not a chart key (job.numWorkers is)
    ({"model": {"uri": "https://huggingface.co/Qwen/Qwen2.5-0.5B"}}, "model.uri"),
    ({"model": {"transformerType": "AutoModelForSeq2SeqLM"}}, "model.transformerType"),
    ({"model": {"trustRemoteCode": "yes"}}, "model.trustRemoteCode"),
    ({"model": {"numLabels": 0}}, "model.numLabels"),
    ({"model": {"revison": "v1"}}, "revison"),
    ({"model": {"s3": {"endpointUrl": "minio:9000"}}}, "model.s3.endpointUrl"),
    ({"dataset": {"uri": "gs://bucket/data"}}, "dataset.uri"),
    ({"dataset": {"fileType": "xlsx"}}, "dataset.fileType"),
    ({"data": {"format": "alpaca"}}, "data.format"),
    ({"data": {"maxSeqLength": "long"}}, "data.maxSeqLength"),
    ({"data": {"evalRatio": 1.5}}, "data.evalRatio"),
    ({"training": {"method": "prefix-tuning"}}, "training.method"),
    ({"training": {"qlora": {"bits": 3}}}, "training.qlora.bits"),
    ({"training": {"resume": "latest"}}, "training.resume"),
    ({"output": {"export": {"uri": "ftp://host/out"}}}, "output.export.uri"),
    ({"download": {"concurrency": 0}}, "download.concurrency"),
    ({"secrets": {"hf": {"token": "hf_abcdef"}}}, "token"),  # no field may hold a literal token
    ({"secrets": {"s3": {"existingSecret": "S3_Creds"}}}, "secrets.s3.existingSecret"),
    ({"storage": {"mode": "local"}}, "storage.mode"),
    ({"storage": {"size": "10GB"}}, "storage.size"),
    ({"storage": {"accessModes": ["ReadWriteAll"]}}, "storage.accessModes.0"),
    ({"storage": {"accessModes": []}}, "storage.accessModes"),
    ({"storage": {"existingClaim": "My Claim"}}, "storage.existingClaim"),
    ({"job": {"numWorkers": 0}}, "job.numWorkers"),
    ({"job": {"nprocPerNode": "two"}}, "job.nprocPerNode"),
    ({"job": {"resources": {"gpu": 1, "requests": {"cpu": 1}}}}, "job.resources.gpu"),
    ({"job": {"resources": {"gpus": 1}}}, "gpus"),
    ({"job": {"resources": {"memory": "lots"}}}, "job.resources.memory"),
    ({"job": {"restartPolicy": "Sometimes"}}, "job.restartPolicy"),
    ({"job": {"runPolicy": {"cleanPodPolicy": "Finished"}}}, "job.runPolicy.cleanPodPolicy"),
    ({"job": {"env": [{"name": "HF_TOKEN", "value": "hf_abcdef"}]}}, "job.env.0.value"),
    ({"job": {"podLabels": {"tier": 1}}}, "job.podLabels.tier"),
    ({"job": {"shmSizeLimit": "8 GB"}}, "job.shmSizeLimit"),
    ({"images": {"trainer": {"digest": "latest"}}}, "images.trainer.digest"),
    ({"images": {"initializer": {"pullPolicy": "Sometimes"}}}, "images.initializer.pullPolicy"),
    ({"initializer": {"resources": {"cpu": 1}}}, "cpu"),  # the shorthand is for the trainer only
    ({"serviceAccount": {"create": "true"}}, "serviceAccount.create"),
]


def names_field(message: str, field: str) -> bool:
    """Helm 3 writes `job.env.0.value: ...`, Helm 4 `at '/job/env/0/value': ...`; an unknown
    key is named in both (`Additional property x` / `additional properties 'x'`)."""
    if "." not in field and re.search(rf"[Aa]dditional propert(y|ies) '?{re.escape(field)}'?", message):
        return True
    return bool(re.search(rf"(^|\s){re.escape(field)}:", message, re.M)) or f"'/{field.replace('.', '/')}'" in message


def test_there_are_at_least_twenty_distinct_bad_cases():
    assert len({field for _, field in BAD}) >= 20


@pytest.mark.parametrize("values, field", BAD, ids=[f for _, f in BAD])
def test_bad_values_are_rejected_naming_the_field(helm, values, field):
    with pytest.raises(UserError) as exc:
        render(helm, values)
    message = str(exc.value)
    assert "schema" in message, message
    assert names_field(message, field), message


def test_good_variants_are_accepted(helm):
    """Forms the schema must not reject (each an easy false positive)."""
    for values in ({"runId": 3}, {"runId": "2026-01-15"}, {"job": {"nprocPerNode": "auto"}},
                   {"job": {"resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1.5Gi"}}}},
                   {"job": {"env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}},
                   {"model": {"uri": "hf://gpt2"}}, {"model": {"uri": "/workspace/models/m"}},
                   {"dataset": {"uri": "s3://my.bucket/path/file.jsonl"}}, {"model": {"numLabels": None}},
                   {"output": {"export": {"uri": "hf://org/model-ft"}}}, {"storage": {"size": 1099511627776}}):
        assert render(helm, values)


def _resolve(node):
    while "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _walk(node, path="#"):
    """Every schema node (boolean schemas aside) with its JSON pointer."""
    if not isinstance(node, dict):
        return
    yield path, node
    for key in ("properties", "definitions"):
        for name, child in (node.get(key) or {}).items():
            yield from _walk(child, f"{path}/{key}/{name}")
    for key in ("items", "additionalProperties", "if", "then", "not"):
        if isinstance(node.get(key), dict):
            yield from _walk(node[key], f"{path}/{key}")
    for key in ("anyOf", "oneOf", "allOf"):
        for i, child in enumerate(node.get(key) or []):
            yield from _walk(child, f"{path}/{key}/{i}")


def test_schema_is_draft7_and_values_yaml_conforms():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


def _in_condition(path: str) -> bool:
    """Inside an if/then/not: a condition on values, not a place that documents a field."""
    return bool(re.search(r"/(if|then|not)(/|$)", path))


def test_every_property_has_a_description():
    missing = [f"{path}/{name}" for path, node in _walk(SCHEMA)
               for name, child in (node.get("properties") or {}).items()
               if isinstance(child, dict) and not _in_condition(path) and not child.get("description")]
    missing += [f"#/definitions/{name}" for name, d in SCHEMA["definitions"].items() if not d.get("description")]
    assert missing == []


# Objects whose keys are free-form by design: a parent chart's keys, and the pass-through maps
# (their properties only bound a few well-known keys: introspection checks the rest).
OPEN_OBJECTS = {"#/properties/global", "#/properties/training/properties/args", "#/properties/training/properties/lora"}


def test_every_object_with_properties_is_closed():
    open_ = [path for path, node in _walk(SCHEMA)
             if "properties" in node and node.get("additionalProperties") is not False
             and not _in_condition(path) and path not in OPEN_OBJECTS]
    assert open_ == []


def _schema_paths(node, prefix=()):
    """Dotted paths of every schema property reachable from node (not into the pass-through maps)."""
    node = _resolve(node)
    if node.get("additionalProperties") is not False and prefix:
        return
    for name, child in (node.get("properties") or {}).items():
        yield prefix + (name,), child
        yield from _schema_paths(child, prefix + (name,))


def _values_paths(node, prefix=()):
    """Paths of values.yaml: every key; leaves are non-maps or empty maps."""
    for key, value in node.items():
        yield prefix + (key,), value
        if isinstance(value, dict):
            yield from _values_paths(value, prefix + (key,))


def _lookup_schema(path):
    node = SCHEMA
    for part in path:
        node = _resolve(node)
        if "properties" not in node or (node.get("additionalProperties") is not False and part not in node["properties"]):
            return node  # a free-form map: whatever is below is documented by it
        if part not in node["properties"]:
            return None
        node = node["properties"][part]
    return node


def test_every_values_key_is_in_the_schema():
    assert [".".join(p) for p, _ in _values_paths(VALUES) if _lookup_schema(p) is None] == []


def test_every_schema_property_is_in_values_yaml():
    missing = []
    for path, _ in _schema_paths(SCHEMA):
        parent = VALUES
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        # an empty map in values.yaml (job.resources: {}) leaves its optional keys out on purpose
        if isinstance(parent, dict) and parent and path[-1] not in parent:
            missing.append(".".join(path))
    assert missing == []


def _template_refs() -> set[str]:
    refs = set()
    for f in (CHART / "templates").rglob("*"):
        if f.is_file():
            refs |= set(re.findall(r"(?:\.Values|\$v)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", f.read_text()))
    return {r.lstrip(".") for r in refs}


def test_every_values_key_is_used_by_a_template_and_every_reference_exists():
    refs = _template_refs()
    unused = [".".join(p) for p, v in _values_paths(VALUES)
              if not (isinstance(v, dict) and v)  # a leaf
              and not any(".".join(p) == r or ".".join(p).startswith(r + ".") for r in refs)]
    assert unused == []
    dangling = []
    for ref in refs:
        node = VALUES
        for part in ref.split("."):
            if not isinstance(node, dict):
                break
            if part not in node:
                dangling.append(ref)
                break
            node = node[part]
    assert dangling == []


def _schema_keys(node):
    node = _resolve(node)
    if "properties" not in node or node.get("additionalProperties") is not False:
        return None
    return {k: _schema_keys(v) for k, v in node["properties"].items()}


@pytest.mark.parametrize("section", sorted(CONFIG_SECTIONS))
def test_config_sections_match_the_python_dataclasses(section):
    assert _schema_keys(SCHEMA["properties"][section]) == C.schema_fields(CONFIG_SECTIONS[section])


def test_chart_computed_config_keys_match_the_dataclasses(helm4):
    config = yaml_load(job_config_text(render(helm4)))
    assert set(config) == set(C.schema_fields(C.JobConfig))
    for key, cls in (("run", C.RunConfig), ("paths", C.PathsConfig), ("storage", C.StorageConfig)):
        assert set(config[key]) == set(C.schema_fields(cls)), key  # all set by the chart, none defaulted


SECRET_WORDS = re.compile(r"token|password|secret|accesskey|credential|apikey", re.I)
REFERENCE_FIELDS = {"secrets", "imagePullSecrets", "automountServiceAccountToken", "existingSecret", "tokenKey", "accessKeyIdKey", "secretAccessKeyKey", "sessionTokenKey"}


def test_no_values_field_can_hold_a_literal_secret():
    suspicious = [".".join(p) for p, _ in _schema_paths(SCHEMA) if SECRET_WORDS.search(p[-1]) and p[-1] not in REFERENCE_FIELDS]
    assert suspicious == []


def test_every_rule_across_fields_says_what_is_wrong_and_how_to_fix_it():
    """The validator words a failed if/then with the if's and the then's descriptions."""
    conditions = [node for path, node in _walk(SCHEMA) if "if" in node and "then" in node]
    assert len(conditions) >= 2  # job.resources' shorthand-or-full form, perPod without a claim
    described = [node for node in conditions if "description" in node["if"]]
    assert described and all(node["then"].get("description") for node in described)


def test_the_run_id_limit_is_one_number(helm):
    """runId's limit lives in the schema only: Helm (before rendering) and the validator apply
    it, the templates and the validator's rules do not check it again, the docs quote it."""
    from llm_finetune.validate import validate_values
    from llm_finetune.validate.rules import semantic_problems

    limit = SCHEMA["properties"]["runId"]["maxLength"]
    assert pytorchjob(render(helm, {"runId": "r" * limit}))["metadata"]["name"].endswith("-" + "r" * limit)
    with pytest.raises(UserError) as exc:
        render(helm, {"runId": "r" * (limit + 1)})
    assert names_field(str(exc.value), "runId")
    too_long = {**VALUES, "runId": "r" * (limit + 1)}
    problems = validate_values(too_long, SCHEMA, introspect=False)
    assert [p.path for p in problems] == ["runId"] and f"at most {limit} characters" in problems[0].render()
    for bad in ("r" * 70, "Bad_ID"):
        assert [p for p in semantic_problems({**VALUES, "runId": bad}, introspect=False) if p.path == "runId"] == []
    templates = "".join(f.read_text() for f in (CHART / "templates").rglob("*") if f.is_file())
    assert not re.search(r"\bfail\b[^}]*runId", templates)
    readme = (CHART.parent / "README.md").read_text()
    documented = re.findall(r"at most (\d+) characters", SCHEMA["properties"]["runId"]["description"])
    documented += re.findall(r"`runId`[^.]*at most (\d+) characters", readme)
    assert len(documented) == 2 and set(map(int, documented)) == {limit}


def test_per_pod_without_a_claim_is_one_schema_rule(helm4):
    """storage.mode=perPod + outputToClaim=false needs output.export.uri: the schema's if/then,
    worded for the validator by its descriptions (no template check, no validator rule)."""
    from llm_finetune.validate import validate_values

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    values["storage"].update(mode="perPod", perPod={**values["storage"]["perPod"], "outputToClaim": False})
    # (the "cluster" warning: no claim keeps the pods' attempt count, see test_rules)
    problems = [p for p in validate_values(values, SCHEMA, introspect=False) if p.rule != "cluster"]
    assert [(p.path, p.rule) for p in problems] == [("output.export.uri", "schema")]
    text = problems[0].render()
    assert "keeps no copy of the output" in text and "set output.export.uri" in text and "outputToClaim=true" in text
    values["output"]["export"]["uri"] = "s3://bucket/run"
    assert [p.rule for p in validate_values(values, SCHEMA, introspect=False)] == ["cluster"]
    del values["output"]  # e.g. output: null in a values file
    assert {p.path for p in validate_values(values, SCHEMA, introspect=False) if p.rule != "cluster"} == {"output"}
    # the templates do not check it again: without the schema, Helm renders it
    assert template(CHART, set_values=["storage.mode=perPod", "storage.perPod.outputToClaim=false"], helm=helm4,
                    extra_args=["--skip-schema-validation"])
