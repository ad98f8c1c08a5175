"""`llm-finetune validate` end to end: exit codes, output formats, bad input, rendered configs, minimal installs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.render import find, render
from llm_finetune.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "values-examples").glob("*.yaml"))


def run_cli(capsys, *args):
    code = main(["validate", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_is_valid(capsys, example):
    code, out, _ = run_cli(capsys, "-f", example)
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith(f"valid: chart defaults + {example}")


def test_all_problems_at_once_then_exit_1(capsys, tmp_path, termination_log):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"job": {"numWorkers": 3}, "storage": {"mode": "shared"},
                                   "training": {"args": {"learning_rat": 1e-4}}, "model": {"uri": "gs://x/y"}}))
    code, out, _ = run_cli(capsys, "-f", bad, "--set", "data.evalRatio=0.1", "--set", "runId=Run1")
    lines = out.strip().splitlines()
    assert code == 1
    assert lines[-1] == f"invalid: chart defaults + {bad} + 2 --set (5 errors, 0 warnings)"
    for path in ("storage.accessModes", "training.args.learning_rat", "model.uri", "data.evalRatio", "runId"):
        assert any(line.startswith(f"{path}: ") and " — " in line for line in lines), (path, lines)


def test_json_output(capsys):
    code, out, _ = run_cli(capsys, "--set", "job.numWorkers=2", "--set", "job.nprocPerNode=auto", "-o", "json")
    report = json.loads(out)
    assert code == 1 and report["valid"] is False and report["errors"] == 1 and report["warnings"] == 1
    by_path = {p["path"]: p for p in report["problems"]}
    assert by_path["storage.accessModes"]["severity"] == "error" and by_path["storage.accessModes"]["rule"] == "storage-sharing"
    assert by_path["job.nprocPerNode"]["severity"] == "warning"
    assert set(by_path["storage.accessModes"]) == {"path", "message", "hint", "severity", "rule"}


@pytest.mark.parametrize("args, words", [
    (["-f", "/nonexistent/values.yaml"], "/nonexistent/values.yaml: values file not found"),
    (["--set", "a.b"], "cannot parse --set 'a.b': key 'b' has no value"),
    (["--chart", "/nonexistent"], "--chart: no values.schema.json in /nonexistent"),
    (["--config", "/nonexistent/config.yaml"], "config file not found"),
])
def test_bad_input_is_a_clear_error(capsys, termination_log, args, words):
    code, _, err = run_cli(capsys, *args)
    assert code == 1
    assert words in err and "Traceback" not in err
    assert words in termination_log.read_text()


def test_bad_yaml_and_non_mapping(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    code, _, err = run_cli(capsys, "-f", bad)
    assert code == 1 and f"{bad}: not valid YAML" in err and "fix the YAML syntax" in err
    bad.write_text("- a list\n")
    code, _, err = run_cli(capsys, "-f", bad)
    assert code == 1 and "must hold a mapping, not a list" in err


def test_rendered_config(capsys, helm4, tmp_path):
    docs = render(helm4, files=[REPO / "values-examples" / "multinode-perpod.yaml"])
    (cm,) = find(docs, "ConfigMap", hook="")
    config = tmp_path / "config.yaml"
    config.write_text(cm["data"]["config.yaml"])
    code, out, _ = run_cli(capsys, "--config", config)
    assert code == 0 and out.strip().splitlines()[-1].startswith(f"valid: {config}")

    data = yaml.safe_load(cm["data"]["config.yaml"])
    data["model"]["revison"] = "main"
    data["data"]["format"] = "chatml"
    data["model"]["uri"] = "/workspace/model"  # a volume path in perPod mode
    config.write_text(yaml.safe_dump(data))
    code, out, _ = run_cli(capsys, "--config", config)
    assert code == 1
    assert "model.revison: unknown field — did you mean 'revision'?" in out
    assert "data.format: 'chatml' is not allowed" in out

    del data["model"]["revison"], data["data"]["format"]
    config.write_text(yaml.safe_dump(data))
    code, out, _ = run_cli(capsys, "--config", config)
    assert code == 1 and "model.uri: a path on the volume does not exist in perPod mode" in out


def test_config_and_values_do_not_mix(capsys):
    code, _, err = run_cli(capsys, "--config", "c.yaml", "-f", "v.yaml")
    assert code == 1 and "cannot be combined" in err


def test_console_script_never_prints_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe not utf-8")
    proc = subprocess.run([str(Path(sys.executable).parent / "llm-finetune"), "validate", "-f", str(bad)],
                          capture_output=True, text=True, env={**os.environ, "LLM_FINETUNE_TERMINATION_LOG": str(tmp_path / "t")})
    assert proc.returncode == 1
    assert "cannot read values file" in proc.stderr and "Traceback" not in proc.stderr


def test_works_with_only_pyyaml_and_jsonschema(tmp_path):
    """The `validate` extra: an interpreter that sees only pyyaml, jsonschema (and its deps) and llm_finetune.
    training.args/lora are still checked, against the field lists shipped with the package."""
    import jsonschema
    import yaml as _yaml

    site = Path(_yaml.__file__).parents[1]
    iso = tmp_path / "site"
    iso.mkdir()
    for name in ("yaml", "_yaml", "jsonschema", "jsonschema_specifications", "referencing", "rpds", "attrs", "attr",
                 "typing_extensions.py"):
        if (site / name).exists():
            (iso / name).symlink_to(site / name)
    (iso / "llm_finetune").symlink_to(REPO / "python" / "src" / "llm_finetune")
    assert Path(jsonschema.__file__).is_relative_to(site)
    code = ("import sys; sys.path[:0] = [sys.argv[1]]\n"
            "from llm_finetune.cli import main\n"
            "rc = main(['validate', '-f', sys.argv[2], '--chart', sys.argv[3], *sys.argv[4:]])\n"
            "assert 'torch' not in sys.modules and 'kubernetes' not in sys.modules\n"
            "sys.exit(rc)")
    argv = [sys.executable, "-S", "-c", code, str(iso), str(REPO / "values-examples" / "v1-llm-lora.yaml"), str(REPO / "chart")]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not checked" not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("valid:")
    proc = subprocess.run(argv + ["--set", "training.lora.rank=8", "--set", "training.args.lr_scheduler_type=cosin"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "training.lora.rank: is not a LoraConfig field — did you mean 'r'?" in proc.stdout
    assert "training.args.lr_scheduler_type: 'cosin' has the wrong type or value" in proc.stdout
