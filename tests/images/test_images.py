"""The Dockerfiles (no Docker here: parsed, linted, and checked against the chart and the package)."""

import functools
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.render import render
from llm_finetune.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"initializer": REPO / "images" / "initializer" / "Dockerfile", "trainer": REPO / "images" / "trainer" / "Dockerfile"}
EXAMPLES = sorted((REPO / "values-examples").glob("*.yaml"))
VALUES = yaml.safe_load((REPO / "chart" / "values.yaml").read_text())
BIN = Path(sys.executable).parent


@functools.lru_cache(maxsize=None)
def parsed(image: str):
    from dockerfile_parse import DockerfileParser

    return DockerfileParser(str(IMAGES[image])).structure


def instructions(image: str, name: str, final_stage_only: bool = False) -> list[str]:
    out, stage = [], 0
    for item in parsed(image):
        if item["instruction"] == "FROM":
            stage += 1
            if final_stage_only:
                out = []
        if item["instruction"] == name:
            out.append(item["value"])
    return out


def _build_tool():
    spec = importlib.util.spec_from_file_location("images_build", REPO / "images" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dockerignore_allows(path: str) -> bool:
    """Docker's .dockerignore semantics, as images/build.py hashes the build context."""
    tool = _build_tool()
    return not tool.dockerignore_excludes(path, tool.dockerignore_patterns(REPO))


@pytest.mark.parametrize("image", IMAGES)
def test_copy_and_bind_sources_exist_and_are_in_the_context(image):
    sources = []
    for value in instructions(image, "COPY"):
        args = shlex.split(value)
        if any(a.startswith("--from") for a in args):
            continue
        sources += [a for a in args[:-1] if not a.startswith("--")]
    for value in instructions(image, "RUN"):
        for mount in re.findall(r"--mount=(\S+)", value):
            opts = dict(kv.split("=", 1) for kv in mount.split(",") if "=" in kv)
            if opts.get("type") == "bind" and "from" not in opts:
                sources.append(opts["source"])
    assert sources, "no COPY sources found"
    for src in sources:
        assert (REPO / src).exists(), f"{image}: COPY source {src} does not exist"
        assert dockerignore_allows(src.rstrip("/")), f"{image}: {src} is excluded by .dockerignore"
        if (REPO / src).is_dir():
            assert dockerignore_allows(src.rstrip("/") + "/pyproject.toml") or not (REPO / src / "pyproject.toml").exists()
    assert not dockerignore_allows(".venv") and not dockerignore_allows(".git") and not dockerignore_allows("tests")


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_numeric_non_root_user_matching_the_chart(image):
    users = instructions(image, "USER", final_stage_only=True)
    assert users, f"{image}: the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert int(uid) == VALUES["podSecurityContext"]["runAsUser"] and int(gid) == VALUES["podSecurityContext"]["runAsGroup"]
    final = [i["instruction"] for i in parsed(image)]
    last_from = len(final) - 1 - final[::-1].index("FROM")
    tail = final[last_from:]
    assert "RUN" not in tail[tail.index("USER"):], "nothing may run as root after USER"


@pytest.mark.parametrize("image", IMAGES)
def test_labels_version_and_no_secrets(image):
    from dockerfile_parse import DockerfileParser

    df = DockerfileParser(str(IMAGES[image]))
    labels = df.labels
    assert labels["org.opencontainers.image.source"].startswith("https://github.com/")
    # the version label comes from the build ARG (release.yaml passes the chart's appVersion)
    assert 'org.opencontainers.image.version="${VERSION}"' in " ".join(instructions(image, "LABEL", final_stage_only=True))
    chart = yaml.safe_load((REPO / "chart" / "Chart.yaml").read_text())
    assert f"VERSION={chart['appVersion']}" in instructions(image, "ARG", final_stage_only=True)
    assert labels["org.opencontainers.image.version"] == chart["appVersion"]
    text = IMAGES[image].read_text()
    for item in parsed(image):
        if item["instruction"] in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|ACCESS_KEY)", item["value"], re.I), item["value"]
    assert "HF_TOKEN" not in text and "AWS_" not in text
    for run in instructions(image, "RUN"):
        pips = re.findall(r"pip (?:install|wheel)\b[^&]*", run)
        assert all("--no-cache-dir" in p for p in pips), f"pip without --no-cache-dir: {run}"


def test_each_image_installs_its_extra_with_the_pinned_set():
    init = " ".join(instructions("initializer", "RUN"))
    trainer = " ".join(instructions("trainer", "RUN"))
    assert '"$1[initializer]"' in init and "-c /constraints.txt" in init and "torch" not in init
    assert '"$1[trainer,qlora]"' in trainer and "-c /constraints.txt" in trainer
    # torch first, from the CUDA index, at the version the constraints pin
    assert trainer.index("torch==${TORCH_VERSION}") < trainer.index("[trainer,qlora]")
    pin = re.search(r"^torch==(\S+)$", (REPO / "python" / "constraints.txt").read_text(), re.M).group(1)
    assert f"TORCH_VERSION={pin}" in instructions("trainer", "ARG")
    assert any(a.startswith("TORCH_INDEX_URL=https://download.pytorch.org/whl/cu") for a in instructions("trainer", "ARG"))


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_finds_no_errors(image):
    proc = subprocess.run([str(BIN / "hadolint"), "-f", "json", str(IMAGES[image])], capture_output=True, text=True)
    findings = json.loads(proc.stdout or "[]")
    assert not [f for f in findings if f["level"] == "error"], findings
    # Warnings are fixed too; an accepted one must be ignored inline with its reason next to it.
    assert not [f for f in findings if f["level"] == "warning"], findings


# ---------------------------------------------------------------------------
# Every command the chart renders exists in the package (and in the right image)
# ---------------------------------------------------------------------------
def rendered_containers(helm_bin):
    """(example, image repository, container) for every container the chart renders for every example."""
    out = []
    for example in EXAMPLES:
        for doc in render(helm_bin, files=[example]):
            specs = []
            if doc["kind"] == "PyTorchJob":
                specs = [r["template"]["spec"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
            elif doc["kind"] == "Job":
                specs = [doc["spec"]["template"]["spec"]]
            elif doc["kind"] == "Pod":
                specs = [doc["spec"]]
            for spec in specs:
                for c in (spec.get("initContainers") or []) + spec["containers"]:
                    out.append((example.stem, c["image"], c))
    return out


def test_every_rendered_command_resolves(helm4):
    seen = set()
    entry_points = {ep.name: ep.value for ep in __import__("importlib.metadata").metadata.entry_points(group="console_scripts")}
    assert entry_points.get("llm-finetune") == "llm_finetune.cli:main"
    containers = rendered_containers(helm4)
    assert len({e for e, _, _ in containers}) == len(EXAMPLES)
    for example, image, c in containers:
        cmd = c.get("command") or []
        assert cmd, f"{example}: container {c['name']} has no explicit command"
        if cmd[0] == "torchrun":
            assert "/trainer" in image.split(":")[0], f"{example}: torchrun runs in {image}"
            assert cmd[1:3] == ["-m", "llm_finetune"], cmd
            program, sub, args = [sys.executable, "-m", "llm_finetune"], cmd[3], cmd[4:]
            assert (BIN / "torchrun").exists()
        else:
            assert cmd[0] == "llm-finetune", cmd
            program, sub, args = [str(BIN / "llm-finetune")], cmd[1], cmd[2:]
            want = "initializer" if sub in ("initialize", "preflight") else "trainer"
            assert f"/{want}" in image.split(":")[0], f"{example}: {sub} runs in {image}"
        assert sub in COMMANDS, f"{example}: unknown subcommand {sub}"
        seen.add((tuple(program), sub, tuple(args)))
    # Each distinct command: its module imports, its parser accepts the rendered arguments, --help exits 0.
    import argparse
    import importlib

    for program, sub, args in sorted(seen):
        module = importlib.import_module(COMMANDS[sub][0])
        parser = argparse.ArgumentParser(prog=sub, exit_on_error=False)
        module.add_arguments(parser)
        parser.parse_args(list(args))
    for program, sub in sorted({(p, s) for p, s, _ in seen}):
        proc = subprocess.run([*program, sub, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "--config" in proc.stdout
    assert {s for _, s, _ in seen} == {"initialize", "launch", "preflight", "verify"}
    # launch is torchrun starting `python -m llm_finetune train` with the same config
    from llm_finetune.trainer.launch import worker_argv

    assert worker_argv("/etc/llm-finetune/config.yaml") == ["-m", "llm_finetune", "train", "--config",
                                                            "/etc/llm-finetune/config.yaml"]
