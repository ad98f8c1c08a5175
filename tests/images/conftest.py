"""Real images for the container tests (every test using the ``images`` fixture: marked ``containers``).

The image build (images/build.py: ~5 min cold, seconds when the inputs hash is unchanged)
starts in the background as soon as the session's tests are collected, so that it overlaps
the rest of the suite; the container tests are moved to the end of the run and wait for it.
The container demo's model and dataset are built in the background too (``DemoAssets``).
It installs buildah/podman when missing; where that is impossible the container tests are
skipped with the builder's reason (exit code 3 of images/build.py) — or fail with it where
``LLM_FINETUNE_REQUIRE_IMAGES=1`` (CI: ``.ci/run`` sets it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from llm_finetune.local.containers import ENGINE_ENV, find_engine, ulimit_args

from .chart_pods import chart_security_args, rendered_containers

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "images" / "build.py"
BUILD_TIMEOUT_S = 45 * 60
_KEY = pytest.StashKey["ImageBuild"]()
# Set by .ci/run: where no builder can be set up, the container tests fail instead of being skipped.
REQUIRE_ENV = "LLM_FINETUNE_REQUIRE_IMAGES"


class ImageBuild:
    """images/build.py running in the background (its own process group), at a lower priority."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llm-finetune-images-"))
        self.result_file = self.dir / "result.json"
        self.log = self.dir / "build.log"
        cmd = [sys.executable, str(BUILD), "--torch", "cpu", "--result", str(self.result_file)]
        if shutil.which("nice"):
            cmd = ["nice", "-n", "10", *cmd]
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.started = time.monotonic()
        self._result: dict | None = None

    def wait(self) -> dict:
        if self._result is None:
            try:
                code = self.proc.wait(timeout=max(1.0, BUILD_TIMEOUT_S - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                self.stop()
                pytest.fail(f"images/build.py did not finish in {BUILD_TIMEOUT_S}s; log: {self.log_tail()}")
            result = json.loads(self.result_file.read_text()) if self.result_file.exists() else {}
            result.update(exit_code=code, wall_s=round(time.monotonic() - self.started, 1))
            self._result = result
        return self._result

    def log_tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class DemoAssets:
    """The demo's model and dataset (local/demo.build_assets: ~1-2 min of CPU) built in the background as well,
    so that the container demo's run does not build them at the end of the suite."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llm-finetune-demo-assets-"))
        code = "import sys; from pathlib import Path; from llm_finetune.local.demo import build_assets; " \
               "build_assets(Path(sys.argv[1]))"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        cmd = [sys.executable, "-c", code, str(self.dir / "demo-assets")]
        self.proc = subprocess.Popen((["nice", "-n", "10"] if shutil.which("nice") else []) + cmd, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def wait(self) -> Path | None:
        """The built folder, or None when the build failed (the demo then builds its own)."""
        self.proc.wait()
        return self.dir / "demo-assets" if self.proc.returncode == 0 else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_ASSETS = pytest.StashKey["DemoAssets"]()


def pytest_configure(config):
    config.addinivalue_line("markers", "containers: runs the real images (built by images/build.py); runs last")


def pytest_itemcollected(item):
    """Every test that uses the built images is a container test (so `-m "not containers"` skips them);
    the first one may wait for a cold build, longer than pytest-timeout's default per test."""
    if "images" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.containers)
        item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_S + 900))


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(session, config, items):
    containers = [item for item in items if item.get_closest_marker("containers")]
    if not containers:
        return
    items[:] = [item for item in items if not item.get_closest_marker("containers")] + containers
    if not config.option.collectonly and _KEY not in config.stash:
        config.stash[_KEY] = ImageBuild()
    if not config.option.collectonly and any("demo_assets" in getattr(i, "fixturenames", ()) for i in containers):
        config.stash[_ASSETS] = DemoAssets()


def pytest_unconfigure(config):
    for key in (_KEY, _ASSETS):
        job = config.stash.get(key, None)
        if job is not None:
            job.stop()


@pytest.fixture(scope="session")
def demo_assets(request) -> Path | None:
    """The demo assets built in the background (None: not started or failed; run-local builds them then)."""
    job = request.config.stash.get(_ASSETS, None)
    return job.wait() if job is not None else None


@pytest.fixture(scope="session")
def images(request) -> dict:
    """The build result: {"builder", "images": {name: {"ref", "alias", "hash", "built", "seconds", "size"}}}."""
    build = request.config.stash.get(_KEY, None)
    if build is None:
        build = request.config.stash[_KEY] = ImageBuild()
    result = build.wait()
    if result["exit_code"] == 3:
        reason = f"images cannot be built here: {result.get('unavailable') or build.log_tail(5)}"
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):  # CI (.ci/run): a missing builder is a failure
            pytest.fail(f"{reason} ({REQUIRE_ENV} is set)")
        pytest.skip(reason)
    if result["exit_code"] != 0 or not result.get("ok"):
        pytest.fail(f"images/build.py failed ({result['exit_code']}):\n{build.log_tail()}")
    return result


@pytest.fixture(scope="session")
def engine(images, monkeypatch_session) -> list[str]:
    """The container CLI that sees the built images: podman (buildah's storage) or docker; run-local's
    --runtime container is pointed at the same one."""
    name = "docker" if images["builder"] == "docker" else "podman"
    monkeypatch_session.setenv(ENGINE_ENV, name)
    return find_engine()


@pytest.fixture(scope="session")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="session")
def restricted_args(engine, helm4) -> list[str]:
    """How the chart runs the trainer container (PSS restricted), plus the /tmp emptyDir it mounts and no network."""
    where, pod_spec, container, _ = next(r for r in rendered_containers(helm4) if r[2]["name"] == "pytorch")
    args = chart_security_args(engine, pod_spec, container)
    # what the chart renders (values.yaml defaults), as the engine gets it
    for expected in ("1000:1000", "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"):
        assert expected in args, (where, args)
    assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]]
    return [*args, "--tmpfs", "/tmp:rw,mode=1777", "--network", "none"]


@pytest.fixture(scope="session")
def run_restricted(engine, restricted_args):
    """Run a command in an image as the chart runs its containers (PSS restricted)."""

    def _run(image: str, *cmd: str, mounts: tuple[str, ...] = (), timeout: int = 180,
             security: list[str] | None = None) -> subprocess.CompletedProcess:
        argv = [*engine, "run", "--rm", *ulimit_args(), *(restricted_args if security is None else security)]
        for m in mounts:
            argv += ["-v", m]
        return subprocess.run([*argv, image, *cmd], capture_output=True, text=True, timeout=timeout)

    return _run
