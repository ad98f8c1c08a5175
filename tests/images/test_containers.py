"""The two images, built from the Dockerfiles unchanged (images/build.py) and run as the chart runs
their containers: UID 1000, read-only root, an emptyDir /tmp, no capabilities, no new privileges."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llm_finetune.local.containers import is_podman, ulimit_args

from .chart_pods import chart_security_args, rendered_containers

REPO = Path(__file__).resolve().parents[2]
NAMES = ("initializer", "trainer")
EXAMPLE = REPO / "values-examples" / "v1-llm-lora.yaml"


def build_module():
    spec = importlib.util.spec_from_file_location("images_build", REPO / "images" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inspect(engine, ref: str) -> dict:
    proc = subprocess.run([*engine, "image", "inspect", ref], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)[0]


def labels(engine, ref: str) -> dict:
    data = inspect(engine, ref)
    return (data.get("Config") or {}).get("Labels") or data.get("Labels") or {}


def test_images_carry_the_hash_of_their_inputs_and_are_reused(images, engine):
    build = build_module()
    assert set(images["images"]) == set(NAMES)
    for name, info in images["images"].items():
        assert info["ref"].endswith(":" + info["hash"])
        assert labels(engine, info["ref"])[build.LABEL] == info["hash"]
        # the chart's default reference names the same image, so the rendered pods run it
        assert info["alias"] == build.chart_reference(name)
        assert inspect(engine, info["alias"])["Id"] == inspect(engine, info["ref"])["Id"]
    # Unchanged inputs: nothing is rebuilt.
    started = time.monotonic()
    again = subprocess.run([sys.executable, str(REPO / "images" / "build.py"), "--torch", "cpu", "--result", "/dev/stdout"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout[again.stdout.index("{"):again.stdout.rindex("}") + 1])
    assert {n: (i["hash"], i["built"]) for n, i in result["images"].items()} == {
        n: (i["hash"], False) for n, i in images["images"].items()}
    assert time.monotonic() - started < 120


def test_a_changed_input_changes_the_hash(tmp_path, monkeypatch):
    build = build_module()
    repo = tmp_path / "repo"
    for rel in build.context_files() + [".dockerignore", "images/initializer/Dockerfile"]:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes((REPO / rel).read_bytes())
    (repo / "tests").mkdir()
    (repo / "tests" / "test_x.py").write_text("outside the build context\n")
    monkeypatch.setattr(build, "REPO", repo)
    base = build.inputs_hash("initializer", {})
    (repo / "tests" / "test_x.py").write_text("changed, still outside the context\n")
    (repo / "python" / "__pycache__").mkdir()
    (repo / "python" / "__pycache__" / "x.pyc").write_bytes(b"ignored by .dockerignore")
    assert build.inputs_hash("initializer", {}) == base
    for rel in ("python/src/llm_finetune/cli.py", "chart/values.schema.json", "python/constraints.txt",
                "images/initializer/Dockerfile"):
        original = (repo / rel).read_bytes()
        (repo / rel).write_bytes(original + b"\n")
        assert build.inputs_hash("initializer", {}) != base, rel
        (repo / rel).write_bytes(original)
    assert build.inputs_hash("initializer", {"build_args": {"X": "1"}}) != base
    assert build.inputs_hash("initializer", {}) == base


@pytest.mark.parametrize("name", NAMES)
def test_help_as_uid_1000_with_a_read_only_root(images, run_restricted, name):
    proc = run_restricted(images["images"][name]["ref"], "llm-finetune", "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("validate", "initialize", "launch", "preflight", "verify"):
        assert command in proc.stdout


@pytest.mark.parametrize("name", NAMES)
def test_validate_a_values_example_in_the_image(images, run_restricted, name):
    ref = images["images"][name]["ref"]
    ok = run_restricted(ref, "llm-finetune", "validate", "-f", f"/values/{EXAMPLE.name}",
                        mounts=(f"{EXAMPLE.parent}:/values:ro",))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"valid: chart defaults + /values/{EXAMPLE.name}" in ok.stdout + ok.stderr


def test_validate_in_the_image_uses_the_charts_schema(images, run_restricted):
    """No chart folder in the image: the schema the wheel ships catches a wrong value, naming the field."""
    bad = run_restricted(images["images"]["initializer"]["ref"], "llm-finetune", "validate", "-f",
                         f"/values/{EXAMPLE.name}", "--set", "training.method=nonsense",
                         mounts=(f"{EXAMPLE.parent}:/values:ro",))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "training.method: 'nonsense' is not allowed" in bad.stdout + bad.stderr


def test_each_rendered_containers_command_runs_in_its_image_as_rendered(images, helm4, engine, run_restricted):
    """Every container the chart renders (replicas, preflight hook, helm test), pointed at the images built here:
    its command's subcommand exists in its image, run with the securityContext the chart renders for it."""
    sets = [f"images.{n}.{k}={v}" for n, info in images["images"].items()
            for k, v in zip(("registry", "repository", "tag"), (*info["ref"].rsplit(":", 1)[0].split("/", 1),
                                                               info["ref"].rsplit(":", 1)[1]))]
    seen = {}
    for where, pod_spec, c, _ in rendered_containers(helm4, *sets):
        assert c["image"] in {i["ref"] for i in images["images"].values()}, (where, c["image"])
        command = c["command"] + c.get("args", [])
        assert command[0] == "llm-finetune", (where, command)
        seen.setdefault((c["image"], command[1]), (where, chart_security_args(engine, pod_spec, c)))
    assert {sub for _, sub in seen} == {"initialize", "launch", "preflight", "verify"}
    for (image, sub), (where, security) in sorted(seen.items()):
        proc = run_restricted(image, "llm-finetune", sub, "--help",
                              security=[*security, "--tmpfs", "/tmp:rw,mode=1777", "--network", "none"])
        assert proc.returncode == 0, (where, proc.stdout + proc.stderr)
        assert f"usage: llm-finetune {sub}" in proc.stdout, (where, proc.stdout)


@pytest.mark.parametrize("name", NAMES)
def test_the_images_own_user_workdir_and_default_command(images, engine, name):
    """Without the chart's command: the image runs as its numeric non-root USER (runAsNonRoot passes) in /tmp,
    and its default command prints the commands."""
    ref = images["images"][name]["ref"]
    config = inspect(engine, ref).get("Config") or {}
    assert (config.get("User"), config.get("WorkingDir"), config.get("Entrypoint") or None) == ("1000:1000", "/tmp", None)
    assert config.get("Cmd") == ["llm-finetune", "--help"]
    proc = subprocess.run([*engine, "run", "--rm", *ulimit_args(), "--read-only", "--network", "none",
                           *(["--read-only-tmpfs=false"] if is_podman(engine) else []), ref],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "usage: llm-finetune" in proc.stdout and "run-local" in proc.stdout


# One container per image: who it runs as, what it may write, what is installed (without importing it).
PROBE = r"""
import importlib.metadata as md, importlib.util, json, os
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
out = {"uid": os.getuid(), "gid": os.getgid(), "cap_eff": status["CapEff"].strip(),
       "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(), "writes": {}}
for path in ("/probe", "/usr/local/lib/probe", "/var/tmp/probe", "/tmp/probe"):
    try:
        open(path, "w").write("x")
        out["writes"][path] = "written"
    except OSError as exc:
        out["writes"][path] = exc.strerror
out["modules"] = [m for m in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "pyarrow", "pandas",
                              "boto3", "huggingface_hub", "kubernetes", "jsonschema") if importlib.util.find_spec(m)]
out["dists"] = {d.metadata["Name"]: d.version for d in md.distributions()}
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def probes(images, run_restricted) -> dict:
    out = {}
    for name in NAMES:
        proc = run_restricted(images["images"][name]["ref"], "sh", "-c",
                              'python3 -c "$0" && python3 -m pip check >&2', PROBE)
        assert proc.returncode == 0, proc.stdout + proc.stderr  # pip check: the installed set is consistent
        out[name] = json.loads(proc.stdout)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_restricted_container_cannot_write_its_root(probes, name):
    probe = probes[name]
    assert (probe["uid"], probe["gid"]) == (1000, 1000)
    assert int(probe["cap_eff"], 16) == 0 and probe["no_new_privs"] == "1" and probe["seccomp"] == "2"
    writes = probe["writes"]
    assert writes["/probe"] == writes["/usr/local/lib/probe"] == writes["/var/tmp/probe"] == "Read-only file system"
    assert writes["/tmp/probe"] == "written"  # the emptyDir the chart mounts at /tmp


def test_initializer_image_carries_no_ml_stack(probes):
    # not even datasets (pyarrow, pandas): the trainer selects a dataset.split (core/layout.py "snapshot")
    assert set(probes["initializer"]["modules"]).isdisjoint({"torch", "transformers", "peft", "trl", "accelerate",
                                                             "datasets", "pyarrow", "pandas"})
    assert {"boto3", "huggingface_hub", "kubernetes", "jsonschema"} <= set(probes["initializer"]["modules"])
    assert {"torch", "transformers", "peft", "trl", "accelerate", "datasets"} <= set(probes["trainer"]["modules"])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("name", NAMES)
def test_installed_versions_are_the_pinned_set(probes, name):
    pins = {_norm(k): v for k, v in (line.split("==") for line in
                                       (REPO / "python" / "constraints.txt").read_text().splitlines()
                                       if "==" in line and not line.startswith("#"))}
    installed = {_norm(k): v.split("+")[0] for k, v in probes[name]["dists"].items()}
    assert installed["llm-finetune"] == re.search(r'^version = "(.+)"', (REPO / "python" / "pyproject.toml").read_text(),
                                                   re.M).group(1)
    assert installed["torch" if name == "trainer" else "boto3"] == pins["torch" if name == "trainer" else "boto3"]
    off = {pkg: (v, pins[pkg]) for pkg, v in installed.items() if pkg in pins and v != pins[pkg]}
    assert not off, f"installed versions differ from python/constraints.txt: {off}"
