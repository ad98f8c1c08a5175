"""``run-local --runtime container``: every container of the plan as a real container from its image.

The plan is the process runtime's (``plan.py``): each step carries the container as the pod spec
has it (``podspec.ContainerSpec``). This executor applies it with podman (docker where only a
Docker daemon is there), as the kubelet would on a node:

* image: the rendered ``image`` from local storage, never pulled (``make images`` builds and tags
  the chart's default names); ``command``/``args`` replace the image's entrypoint/cmd;
* env: as the pod sees it; values from Secrets come from the caller's environment and reach the
  engine through its own environment (``-e NAME``), never on its command line;
* securityContext: user, group, ``fsGroup``/``supplementalGroups`` as extra groups, read-only
  root (nothing else writable: ``--read-only-tmpfs=false``), capabilities, no-new-privileges,
  seccomp (RuntimeDefault = the engine's default profile; Unconfined; Localhost is refused);
  ``runAsNonRoot`` is checked against the user the container would run as, as the kubelet does;
* volumes: the plan's folders bind-mounted, configMaps and read-only mounts ``ro``; writable
  claim, ephemeral and emptyDir folders get the kubelet's ``fsGroup`` ownership (group, g+rw,
  setgid folders; ``OnRootMismatch`` skips a folder whose root is already right — kubernetes
  pkg/volume/volume_linux.go); a memory emptyDir is a tmpfs of its size (``/dev/shm``: the
  container's shm); a disk emptyDir over its ``sizeLimit`` gets the pod evicted (kubelet
  eviction manager, "Usage of EmptyDir volume ... exceeds the limit");
* resources: ``limits.cpu``/``limits.memory`` as cgroup limits (no swap), ``requests.cpu`` as
  CPU weight; no pids limit (the kubelet's default); a container killed for memory reports
  ``OOMKilled`` in its termination message when it wrote none;
* the termination message file: a 0666 file bind-mounted at ``terminationMessagePath``;
* network: the host's, so that the pods reach each other and a local S3 server on 127.0.0.1
  (the operator's ``MASTER_ADDR`` in the plan is 127.0.0.1); every pod name resolves to it too.

What differs from a cluster: one node and one network namespace for all pods, no image pulls,
no restarts of failed containers, host folders instead of volumes (ownership emulated).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.proc import parent_death_signal
from .plan import JobPlan, PodPlan, ProcessSpec
from .podspec import ContainerSpec, Mount

log = logging.getLogger("llm_finetune.local")

ENGINE_ENV = "LLM_FINETUNE_CONTAINER_ENGINE"
# What the engine's client gets of run-local's environment (and, by name, the containers' secret env).
ENGINE_CLIENT_ENV = ("PATH", "HOME", "XDG_RUNTIME_DIR", "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "DOCKER_HOST")
RUN_LABEL = "dev.llm-finetune.run-local"
WRITABLE_KINDS = ("claim", "ephemeral", "emptyDir")
EVICTION_CHECK_S = 5.0
_RW_MASK, _RO_MASK, _EXEC_MASK = 0o660, 0o440, 0o110  # volume_linux.go rwMask, roMask, execMask


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------
def find_engine() -> list[str]:
    """podman (with runc where installed: crun fails on hosts with hybrid cgroups), else docker."""
    wanted = os.environ.get(ENGINE_ENV, "")
    for name in ([wanted] if wanted else ["podman", "docker"]):
        path = shutil.which(name)
        if not path:
            continue
        if name == "docker" and subprocess.run([path, "info"], capture_output=True).returncode != 0:
            continue
        return [path, "--runtime", "runc"] if name == "podman" and shutil.which("runc") else [path]
    raise UserError("--runtime container needs podman (or a running Docker daemon), and none was found",
                    hint="'make images' installs buildah/podman/runc (Debian/Ubuntu, root) and builds the images")


def workdir_key(workdir: str | os.PathLike[str]) -> str:
    """The label value (``RUN_LABEL``) and name part of a run's containers: one per workdir."""
    return hashlib.sha256(str(Path(workdir).resolve()).encode()).hexdigest()[:12]


def is_podman(engine: list[str]) -> bool:
    return Path(engine[0]).name == "podman"


def ulimit_args() -> list[str]:
    """nofile/nproc a container can get: this process's hard limits (capped as the engines' defaults).

    podman 4.3 (rootful) asks for 1048576 of both, which runc cannot set without CAP_SYS_RESOURCE
    where the hard limits are lower ("error setting rlimit"); newer podman clamps them itself.
    nproc counts the user's processes machine-wide and conmon gets at most 32768.
    """
    out = []
    for name, which, cap in (("nofile", resource.RLIMIT_NOFILE, 1048576), ("nproc", resource.RLIMIT_NPROC, 32768)):
        hard = resource.getrlimit(which)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        out.append(f"--ulimit={name}={value}:{value}")
    return out


def _quantity_bytes(value: int) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


# ---------------------------------------------------------------------------
# What one container becomes: the engine's arguments (pure, testable without an engine)
# ---------------------------------------------------------------------------
def security_args(c: ContainerSpec, podman: bool) -> list[str]:
    args: list[str] = []
    if c.user is not None:
        args += ["--user", f"{c.user}:{c.group}" if c.group is not None else str(c.user)]
    for gid in c.groups:
        args += ["--group-add", str(gid)]
    if c.read_only_root:
        args += ["--read-only"] + (["--read-only-tmpfs=false"] if podman else [])
    args += [f"--cap-drop={cap}" for cap in c.cap_drop] + [f"--cap-add={cap}" for cap in c.cap_add]
    if c.no_new_privileges:
        args += ["--security-opt=no-new-privileges"]
    if c.seccomp == "Unconfined":
        args += ["--security-opt=seccomp=unconfined"]
    elif c.seccomp != "RuntimeDefault":
        raise UserError(f"pod {c.pod}: container {c.name}: seccomp profile {c.seccomp} is not available locally",
                        hint="run-local --runtime container supports RuntimeDefault and Unconfined")
    return args


def _resource_args(c: ContainerSpec) -> list[str]:
    args = ["--pids-limit=-1"]
    if c.cpu_limit is not None:
        args += [f"--cpus={c.cpu_limit.normalize():f}"]
    if c.cpu_request is not None:
        args += [f"--cpu-shares={max(2, int(c.cpu_request * 1024))}"]
    if c.memory_limit is not None:
        args += [f"--memory={c.memory_limit}", f"--memory-swap={c.memory_limit}"]
    return args


def _mount_args(c: ContainerSpec, termination_log: str) -> list[str]:
    args: list[str] = []
    for m in c.mounts:
        if m.kind == "memory" and m.path == "/dev/shm":
            args += [f"--shm-size={m.size_bytes}"] if m.size_bytes else []
        elif m.kind == "memory":
            size = f",tmpfs-size={m.size_bytes}" if m.size_bytes else ""
            args += ["--mount", f"type=tmpfs,destination={m.path}{size},tmpfs-mode=1777"]
        else:
            args += ["-v", f"{m.host}:{m.path}:{'ro' if m.read_only else 'rw'}"]
    return args + ["-v", f"{termination_log}:{c.termination_message_path}:rw"]


def run_args(engine: list[str], spec: ProcessSpec, *, name: str, run_key: str, hosts: list[str]) -> list[str]:
    """``<engine> run ...`` for one planned container (secret values are not in it: ``-e NAME`` only)."""
    c = spec.container_spec
    assert c is not None
    podman = is_podman(engine)
    args = [*engine, "run", "--name", name, "--label", f"{RUN_LABEL}={run_key}", "--pull=never",
            "--network=host", *ulimit_args(), *security_args(c, podman), *_resource_args(c)]
    args += [f"--add-host={h}:127.0.0.1" for h in hosts]
    args += _mount_args(c, spec.termination_log)
    for key, value in sorted(c.env.items()):
        args += ["-e", key if key in c.secret_env else f"{key}={value}"]
    if c.working_dir:
        args += ["--workdir", c.working_dir]
    if c.command:  # Kubernetes: command replaces ENTRYPOINT (the image's CMD is dropped), args replace CMD
        args += ["--entrypoint", json.dumps(c.command)]
    return args + [c.image, *c.args]


# ---------------------------------------------------------------------------
# Volumes on the host, as the kubelet prepares them
# ---------------------------------------------------------------------------
def _needs_ownership_change(root: Path, gid: int, read_only: bool) -> bool:
    """volume_linux.go ``requiresPermissionChange`` (fsGroupChangePolicy: OnRootMismatch)."""
    st = root.stat()
    mask = _RO_MASK if read_only else _RW_MASK
    return st.st_gid != gid or (st.st_mode & mask) != mask or not st.st_mode & stat.S_ISGID


def apply_fs_group(root: Path, gid: int, *, policy: str = "Always", read_only: bool = False) -> None:
    """Give a volume folder the ownership the kubelet gives it for ``fsGroup`` (``changeFilePermission``):
    group ``gid``, group rw (r when read-only), folders also g+x and setgid; symlinks untouched."""
    if policy == "OnRootMismatch" and not _needs_ownership_change(root, gid, read_only):
        return
    mask = _RO_MASK if read_only else _RW_MASK
    for folder, dirs, files in os.walk(root):
        for path, is_dir in [(folder, True)] + [(os.path.join(folder, f), False) for f in files]:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            os.lchown(path, -1, gid)
            os.chmod(path, stat.S_IMODE(st.st_mode) | mask | ((stat.S_ISGID | _EXEC_MASK) if is_dir else 0))
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]


def _du(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(folder, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_dirs(parent: str) -> list[Path]:
    """The folders of a cgroup in every hierarchy (one with cgroup v2, one per controller with v1)."""
    rel = parent.strip("/")
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT / rel]
    return [root / rel for root in CGROUP_ROOT.iterdir() if (root / rel).is_dir()] if CGROUP_ROOT.is_dir() else []


def oom_killed_in(parent: str, limit: int | None) -> bool:
    """Whether the container cgroup under ``parent`` hit its memory limit (it is gone once the container is).

    cgroup v2: ``memory.events`` of the parent counts its children's OOM kills. cgroup v1 has no
    hierarchical count, but the parent's ``memory.max_usage_in_bytes`` reached the child's limit."""
    rel = parent.strip("/")
    try:
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            events = dict(line.split() for line in (CGROUP_ROOT / rel / "memory.events").read_text().splitlines())
            return int(events.get("oom_kill", 0)) > 0
        peak = int((CGROUP_ROOT / "memory" / rel / "memory.max_usage_in_bytes").read_text())
        return limit is not None and peak >= limit - 4096
    except (OSError, ValueError):
        return False


def remove_cgroup(parent: str) -> None:
    for top in _cgroup_dirs(parent):
        for folder, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):  # leaves first (conmon's, ...)
            try:
                os.rmdir(folder)
            except OSError:
                pass


class ContainerExecutor:
    """Runs each planned container with podman/docker (the ``Executor`` of ``executor.py``)."""

    name = "container"

    def __init__(self, engine: list[str] | None = None):
        self.engine = engine
        self.run_key = ""
        self.hosts: list[str] = []
        self.lock = threading.Lock()
        self.running: dict[str, tuple[ProcessSpec, str]] = {}  # container name -> (spec, pod)
        self.counter = 0
        self.stop_watch = threading.Event()
        self.watcher: threading.Thread | None = None
        self.cgroup_parent = ""      # podman with cgroupfs: a parent cgroup per container, to see OOM kills
        self.killed: set[str] = set()  # containers this executor killed (not an OOM)
        self.grace_s = 30
        self.reaper: subprocess.Popen | None = None  # stops and removes the run's containers once run-local is gone

    # -- Executor ---------------------------------------------------------------
    def prepare(self, plan: JobPlan) -> None:
        self.engine = self.engine or find_engine()
        self.run_key = workdir_key(plan.workdir)
        self.hosts = [p.name for p in plan.pods]
        if is_podman(self.engine):
            manager = subprocess.run([*self.engine, "info", "--format", "{{.Host.CgroupManager}}"],
                                     capture_output=True, text=True).stdout.strip()
            self.cgroup_parent = f"/llm-finetune/{self.run_key}" if manager == "cgroupfs" else ""
        # (a "builtin" is the operator's injected init-pytorch, which run-local runs as a wait: runner.PodRun)
        specs = [s for p in plan.pods for s in p.processes if not s.builtin]
        if any(s.container_spec is None for s in specs):
            raise UserError("the plan has no container specs (an older plan format)")
        self.grace_s = max(s.container_spec.grace_s for s in specs)
        self._remove_leftovers()
        self._check_images_and_users([s.container_spec for s in specs])
        for s in specs:
            self._prepare_volumes(s.container_spec)
        self.watcher = threading.Thread(target=self._watch_emptydirs, args=(specs,), daemon=True)
        self.watcher.start()

    def prepare_pod(self, pod: PodPlan) -> None:
        for s in pod.processes:
            if s.container_spec is not None:
                self._prepare_volumes(s.container_spec)

    def start(self, spec: ProcessSpec, cwd: str, keep_fds: tuple[int, ...] = ()) -> subprocess.Popen:
        with self.lock:
            if self.reaper is None:
                self.reaper = self._start_reaper(keep_fds)
            self.counter += 1
            name = f"llm-finetune-{self.run_key}-{spec.pod}-{spec.container}-{self.counter}"
        term = Path(spec.termination_log)
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_text("")
        os.chmod(term, 0o666)  # kuberuntime_container.go makeMounts: writable by any user of the container
        c = spec.container_spec
        env = {k: v for k, v in os.environ.items() if k in ENGINE_CLIENT_ENV}
        env.update({k: c.env[k] for k in c.secret_env if k in c.env})
        argv = run_args(self.engine, spec, name=name, run_key=self.run_key, hosts=self.hosts)
        if self.cgroup_parent:
            argv.insert(argv.index("run") + 1, f"--cgroup-parent={self.cgroup_parent}/{name}")
        # The engine's client: SIGTERM when run-local dies (it passes it on to the container), the workdir lock.
        proc = _ContainerProcess(argv, executor=self, name=name, spec=spec, env=env, cwd=cwd,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, preexec_fn=parent_death_signal(), pass_fds=keep_fds)
        with self.lock:
            self.running[name] = (spec, spec.pod)
        return proc

    def signal(self, spec: ProcessSpec, proc: subprocess.Popen, sig: int) -> None:
        name = getattr(proc, "container_name", "")
        with self.lock:
            self.killed.add(name)
        subprocess.run([*self.engine, "kill", f"--signal={int(sig)}", name], capture_output=True)
        if sig == signal.SIGKILL:  # the engine's client too (a container not created yet is removed in finish)
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

    def finish(self, plan: JobPlan) -> None:
        self.stop_watch.set()
        if self.engine and self.run_key:
            self._remove_leftovers()
        if self.cgroup_parent:
            remove_cgroup(self.cgroup_parent)
        if self.reaper is not None:  # nothing is left for it: it checks and ends
            self.reaper.stdin.close()
            try:
                self.reaper.wait(self.grace_s + 30)
            except subprocess.TimeoutExpired:
                log.warning("the container reaper (pid %d) is still stopping containers", self.reaper.pid)

    # -- helpers ----------------------------------------------------------------
    def _start_reaper(self, keep_fds: tuple[int, ...]) -> subprocess.Popen:
        """local/reaper.py: when run-local is gone, however it went, the run's containers are stopped (the pods'
        grace period) and removed. It keeps the workdir lock (``keep_fds``) until it has done so."""
        argv = [sys.executable, "-m", "llm_finetune.local.reaper", "--run-key", self.run_key,
                f"--grace={self.grace_s}", f"--cgroup-parent={self.cgroup_parent}", "--", *self.engine]
        env = {k: v for k, v in os.environ.items() if k in ENGINE_CLIENT_ENV or k.startswith("PYTHON")}
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, start_new_session=True, pass_fds=keep_fds)

    def _remove_leftovers(self) -> None:
        ids = subprocess.run([*self.engine, "ps", "-aq", "--filter", f"label={RUN_LABEL}={self.run_key}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run([*self.engine, "rm", "-f", *ids], capture_output=True)

    def _inspect_image(self, image: str) -> dict[str, Any] | None:
        proc = subprocess.run([*self.engine, "image", "inspect", image], capture_output=True, text=True)
        return json.loads(proc.stdout)[0] if proc.returncode == 0 else None

    def _check_images_and_users(self, containers: list[ContainerSpec]) -> None:
        images = {c.image: self._inspect_image(c.image) for c in containers}
        missing = sorted(i for i, data in images.items() if data is None)
        if missing:
            raise UserError(f"image(s) not in the local {Path(self.engine[0]).name} storage: {', '.join(missing)} "
                            "(run-local never pulls)",
                            hint="'make images' builds both images under the chart's default names; or set "
                                 "images.<name>.registry/repository/tag to an image you have")
        for c in containers:
            user = c.user
            if user is None:
                image_user = ((images[c.image] or {}).get("Config") or {}).get("User") or "0"
                user = int(image_user.split(":")[0]) if image_user.split(":")[0].isdigit() else -1
            if c.run_as_non_root and user in (0, -1):
                # kuberuntime/security_context_others.go verifyRunAsNonRoot
                raise UserError(f"pod {c.pod}: container {c.name} has runAsNonRoot and image will run as root "
                                f"(or a non-numeric user) ({c.image})", hint="set runAsUser, or a numeric USER in the image")

    def _prepare_volumes(self, c: ContainerSpec) -> None:
        for m in c.mounts:
            if m.kind not in WRITABLE_KINDS:
                continue
            folder = Path(m.host)
            folder.mkdir(parents=True, exist_ok=True)
            if m.kind == "emptyDir":
                os.chmod(folder, 0o777)  # empty_dir.go: perm
            if c.fs_group is not None and not m.read_only:
                apply_fs_group(folder, c.fs_group, policy=c.fs_group_change_policy)

    def _watch_emptydirs(self, specs: list[ProcessSpec]) -> None:
        """The kubelet's eviction of a pod whose emptyDir grows over its sizeLimit."""
        limited = {}
        for s in specs:
            for m in s.container_spec.mounts:
                if m.kind == "emptyDir" and m.size_bytes:
                    limited[(s.pod, m.volume)] = m
        while limited and not self.stop_watch.wait(EVICTION_CHECK_S):
            for (pod, volume), m in limited.items():
                if _du(Path(m.host)) > m.size_bytes:
                    self._evict(pod, f"Usage of EmptyDir volume {volume!r} exceeds the limit "
                                     f"{_quantity_bytes(m.size_bytes)!r}.")

    def _evict(self, pod: str, message: str) -> None:
        with self.lock:
            victims = [(n, s) for n, (s, p) in self.running.items() if p == pod]
        for name, spec in victims:
            with self.lock:
                self.killed.add(name)
            log.error("pod %s evicted: %s", pod, message)
            Path(spec.termination_log).write_text(f"Evicted: {message}\n")
            subprocess.run([*self.engine, "kill", "--signal=KILL", name], capture_output=True)

    def exited(self, name: str, spec: ProcessSpec, code: int) -> None:
        """After a container's client returned: an OOM kill into the termination message (the reason the
        kubelet reports), then the container and its cgroup are removed."""
        with self.lock:
            self.running.pop(name, None)
            killed = name in self.killed
        state = subprocess.run([*self.engine, "inspect", "--format", "{{.State.OOMKilled}}", name],
                               capture_output=True, text=True).stdout.strip()
        subprocess.run([*self.engine, "rm", "-f", name], capture_output=True)
        limit = spec.container_spec.memory_limit
        parent = f"{self.cgroup_parent}/{name}" if self.cgroup_parent else ""
        oom = state == "true" or (code == 137 and not killed and bool(parent) and oom_killed_in(parent, limit))
        term = Path(spec.termination_log)
        if oom and not (term.exists() and term.read_text().strip()):
            term.write_text(f"OOMKilled: the container went over its memory limit"
                            f"{' of ' + _quantity_bytes(limit) if limit else ''}\n")
        if parent:
            remove_cgroup(parent)


class _ContainerProcess(subprocess.Popen):
    """The engine's ``run`` client; after it returns, the executor looks at and removes the container."""

    def __init__(self, argv: list[str], *, executor: ContainerExecutor, name: str, spec: ProcessSpec, **kwargs):
        self.container_name = name
        self._executor = executor
        self._spec = spec
        self._cleaned = False
        self.started = time.monotonic()
        super().__init__(argv, **kwargs)

    def wait(self, timeout: float | None = None) -> int:
        code = super().wait(timeout)
        if not self._cleaned:
            self._cleaned = True
            self._executor.exited(self.container_name, self._spec, code)
        return code
