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

`make test` runs GENERATIVE_EXAMPLES (300) examples; `make bench` more (tests/bench/bench_generative.py;
LLM_FINETUNE_GENERATIVE_EXAMPLES sets the number). Every example runs both real Helm binaries.

Cost: two Helm processes (~0.12 s CPU each) and the Python checks (~0.05 s) an example, ~70 s CPU
for 300. Hypothesis draws the examples first (derandomized: the same ones every run; drawing
does not depend on the checks), then CHECKERS examples are checked at once, so both cores stay
busy (Helm runs while Python checks another example). A failure names the example (its JSON).
With LLM_FINETUNE_HYPOTHESIS_SHRINK=1 each example is checked inside Hypothesis instead, one at
a time, and a failure is shrunk to a minimal example (minutes).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings

from fixtures.k8s import object_problems
from fixtures.render import CHART
from llm_finetune.validate import validate_values
from llm_finetune.validate import values as V
from llm_finetune.validate.schema import schema_problems

from fixtures import values_space as S

GENERATIVE_EXAMPLES = int(os.environ.get("LLM_FINETUNE_GENERATIVE_EXAMPLES", "300"))
SHRINK = os.environ.get("LLM_FINETUNE_HYPOTHESIS_SHRINK") == "1"
CHECKERS = 2  # examples checked at once (each runs its two Helms in parallel): enough for 2 cores
SCHEMA = V.load_schema(CHART)
DEFAULTS = V.chart_defaults(CHART)  # once: what V.helm_values would parse again for every example
SCHEMA_FAILED = "don't meet the specifications of the schema"
STATS: collections.Counter = collections.Counter()
STATS_LOCK = threading.Lock()


def _helm(binary: str, values_file: Path) -> subprocess.Popen:
    # GOGC=off: a render allocates little; Go's collector would only cost time here.
    return subprocess.Popen([binary, "template", "ft", str(CHART), "--namespace", "default", "-f", str(values_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "GOGC": "off"})


def _result(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _examples(n: int):
    # Shrinking re-runs both Helms for every step (minutes): on request only (LLM_FINETUNE_HYPOTHESIS_SHRINK=1).
    phases = [p for p in Phase if p is not Phase.shrink or SHRINK]
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=True, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def check_example(values: dict, helm3: str, helm4: str, path: Path) -> None:
    path.write_text(json.dumps(values, ensure_ascii=False), encoding="utf-8")  # JSON is YAML; UTF-8 as users write it
    renders = {3: _helm(helm3, path), 4: _helm(helm4, path)}  # both run while the validator checks the values
    user = V.user_values([path])
    merged = {major: V.coalesce(user, DEFAULTS, helm_major=major) for major in (3, 4)}
    problems = validate_values(merged[4], SCHEMA)
    accepted = not [p for p in problems if p.severity == "error"]
    ours = {4: not list(schema_problems(merged[4], SCHEMA))}
    ours[3] = ours[4] if merged[3] == merged[4] else not list(schema_problems(merged[3], SCHEMA))  # they differ on nulls
    out = {major: _result(proc) for major, proc in renders.items()}
    for major in (3, 4):
        ours_ok = ours[major]
        helm_ok = SCHEMA_FAILED not in out[major].stderr
        assert ours_ok == helm_ok, (f"schema verdicts differ: ours {'accepts' if ours_ok else 'refuses'}, Helm {major} "
                                 f"{'accepts' if helm_ok else 'refuses'}\n{out[major].stderr}\n"
                                 f"{[p.render() for p in schema_problems(merged[major], SCHEMA)]}")
        if out[major].returncode != 0:
            assert not accepted, f"Helm {major} fails but the validator accepts:\n{out[major].stderr}"
    with STATS_LOCK:
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


def _drawn(n: int) -> list[dict]:
    """The ``n`` values Hypothesis generates (derandomized), to be checked after."""
    drawn: list[dict] = []

    @_examples(n)
    @given(S.values)
    def draw(values):
        drawn.append(values)

    draw()
    return drawn


def _check_drawn(index: int, values: dict, helm3: str, helm4: str, tmp: Path) -> None:
    try:
        check_example(values, helm3, helm4, tmp / f"values-{index}.yaml")
    except AssertionError as exc:
        raise AssertionError(f"generated example {index}:\n{json.dumps(values, ensure_ascii=False)}\n{exc}") from None


def test_validator_and_both_helms_agree_on_generated_values(helm3, helm4, tmp_path):
    started = time.monotonic()
    if SHRINK:
        @_examples(GENERATIVE_EXAMPLES)
        @given(S.values)
        def run(values):
            check_example(values, helm3, helm4, tmp_path / "values.yaml")

        run()
    else:
        drawn = _drawn(GENERATIVE_EXAMPLES)
        assert len(drawn) == GENERATIVE_EXAMPLES
        with ThreadPoolExecutor(CHECKERS) as checkers:
            for done in [checkers.submit(_check_drawn, i, v, helm3, helm4, tmp_path) for i, v in enumerate(drawn)]:
                done.result()
    print(f"\n{GENERATIVE_EXAMPLES} generated values: {dict(STATS)} in {time.monotonic() - started:.1f} s")
    # The space must exercise both sides: sound values that render, and mistakes that are refused.
    assert STATS["accepted"] >= GENERATIVE_EXAMPLES // 5 and STATS["refused"] >= GENERATIVE_EXAMPLES // 5, dict(STATS)
