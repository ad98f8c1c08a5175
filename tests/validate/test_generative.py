"""Generated values (Hypothesis, derandomized): the validator, Helm 3.17 and Helm 4.1 agree.

For every generated values file (tests/fixtures/values_space.py: mostly sound values with the
plausible mistakes of issue 10 mixed in):

1. the schema verdict of our validator (jsonschema, Go regex semantics) is Helm 3's and Helm 4's
   (each on the values that Helm version coalesces: they treat explicit nulls differently);
2. when Helm fails (schema, or a template's `fail`), the validator refuses too;
3. when the validator accepts, both Helms render, byte for byte the same, and every rendered
   object passes the offline Kubernetes checks (tests/fixtures/k8s.py: API schemas, the
   PyTorchJob CRD when ../shared/kubeflow is there, names, labels, list-map keys), and no
   credential reaches the manifests.

`make test` runs GENERATIVE_EXAMPLES (300) examples; `make bench` / `pytest -m slow` more
(LLM_FINETUNE_GENERATIVE_EXAMPLES). Every example runs both real Helm binaries (in parallel).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings

from fixtures.k8s import object_problems
from fixtures.render import CHART
from llm_finetune.validate import validate_values
from llm_finetune.validate import values as V
from llm_finetune.validate.schema import schema_problems

from fixtures import values_space as S

GENERATIVE_EXAMPLES = int(os.environ.get("LLM_FINETUNE_GENERATIVE_EXAMPLES", "300"))
SCHEMA = V.load_schema(CHART)
DEFAULTS = V.chart_defaults(CHART)  # once: what V.helm_values would parse again for every example
SCHEMA_FAILED = "don't meet the specifications of the schema"
STATS: collections.Counter = collections.Counter()


def _helm(binary: str, values_file: Path) -> subprocess.CompletedProcess:
    # GOGC=off: a render allocates little; Go's collector would only cost time here.
    return subprocess.run([binary, "template", "ft", str(CHART), "--namespace", "default", "-f", str(values_file)],
                          capture_output=True, text=True, env={**os.environ, "GOGC": "off"})


def _examples(n: int):
    # Shrinking re-runs both Helms for every step (minutes): on request only (LLM_FINETUNE_HYPOTHESIS_SHRINK=1).
    phases = [p for p in Phase if p is not Phase.shrink or os.environ.get("LLM_FINETUNE_HYPOTHESIS_SHRINK") == "1"]
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=True, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def check_example(values: dict, helm3: str, helm4: str, tmp: Path, pool: ThreadPoolExecutor) -> None:
    path = tmp / "values.yaml"
    path.write_text(json.dumps(values, ensure_ascii=False), encoding="utf-8")  # JSON is YAML; UTF-8 as users write it
    renders = {3: pool.submit(_helm, helm3, path), 4: pool.submit(_helm, helm4, path)}
    user = V.user_values([path])
    merged = {major: V.coalesce(user, DEFAULTS, helm_major=major) for major in (3, 4)}
    problems = validate_values(merged[4], SCHEMA)
    accepted = not [p for p in problems if p.severity == "error"]
    ours = {4: not list(schema_problems(merged[4], SCHEMA))}
    ours[3] = ours[4] if merged[3] == merged[4] else not list(schema_problems(merged[3], SCHEMA))  # they differ on nulls
    out = {major: f.result() for major, f in renders.items()}
    for major in (3, 4):
        ours_ok = ours[major]
        helm_ok = SCHEMA_FAILED not in out[major].stderr
        assert ours_ok == helm_ok, (f"schema verdicts differ: ours {'accepts' if ours_ok else 'refuses'}, Helm {major} "
                                 f"{'accepts' if helm_ok else 'refuses'}\n{out[major].stderr}\n"
                                 f"{[p.render() for p in schema_problems(merged[major], SCHEMA)]}")
        if out[major].returncode != 0:
            assert not accepted, f"Helm {major} fails but the validator accepts:\n{out[major].stderr}"
    event("validator accepts" if accepted else "validator refuses")
    STATS["accepted" if accepted else "refused"] += 1
    if not accepted:
        return
    assert out[3].stdout == out[4].stdout, "Helm 3 and Helm 4 render differently"
    for credential in S.CREDENTIALS:
        assert credential not in out[4].stdout
    for doc in yaml.load_all(out[4].stdout, Loader=yaml.CSafeLoader):
        if doc:
            assert _checked(json.dumps(doc, sort_keys=True)) == [], doc["kind"]


@functools.lru_cache(maxsize=4096)
def _checked(doc: str) -> list[str]:
    """object_problems of a rendered object; many examples render some objects identically."""
    return object_problems(json.loads(doc))


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


def test_validator_and_both_helms_agree_on_generated_values(helm3, helm4, tmp_path, pool):
    started = time.monotonic()

    @_examples(GENERATIVE_EXAMPLES)
    @given(S.values)
    def run(values):
        check_example(values, helm3, helm4, tmp_path, pool)

    run()
    print(f"\n{GENERATIVE_EXAMPLES} generated values: {dict(STATS)} in {time.monotonic() - started:.1f} s")
    # The space must exercise both sides: sound values that render, and mistakes that are refused.
    assert STATS["accepted"] >= GENERATIVE_EXAMPLES // 5 and STATS["refused"] >= GENERATIVE_EXAMPLES // 5, dict(STATS)
