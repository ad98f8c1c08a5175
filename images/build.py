#!/usr/bin/env python3
"""Build both images (images/*/Dockerfile, unchanged) on this machine: ``make images``.

    python3 images/build.py [--image initializer|trainer] [--force] [--builder auto|docker|buildah]
                            [--result FILE.json]

* **docker** when a Docker daemon answers (``docker info``): ``docker build`` with the
  Dockerfiles' own defaults (the real ``python:*-slim`` base, the CUDA torch index).
* **buildah** otherwise (Debian/Ubuntu as root; the apt packages ``buildah podman runc
  debootstrap`` are installed when missing). No registry is needed:
    - the ``FROM`` image is a local *stand-in* imported under the exact ``FROM`` name —
      ``debootstrap --variant=minbase`` plus a CPython laid out as the official
      ``python:*-slim`` image lays it out (docker-library/python@4f070595:3.11/slim-bookworm/
      Dockerfile: ``/usr/local``, shared libpython, the runtime libraries found by ``ldd``,
      ca-certificates/netbase/tzdata), with this host's CA certificates in its trust store
      and in ``/etc/pip.conf`` (package traffic may pass a proxy with its own CA). It is for
      local builds only: release images are built on the real base (release.yaml);
    - torch comes from a local file index (the CPU wheel of the pinned version and its
      dependencies, ``pip download``-ed from this machine's pip sources), bind-mounted into
      the build and passed as ``TORCH_INDEX_URL``; the Dockerfile's default stays the CUDA index;
    - ``buildah bud --pull=never --isolation chroot`` without ``--layers`` (buildah 1.28
      bind-mounts an empty folder for a cached stage, buildah issue #4375).

Each image is tagged ``localhost/llm-finetune-build/<name>:<inputs hash>`` and with the
reference the chart renders by default (``ghcr.io/llm-finetune/<name>:<appVersion>``); the
hash of its inputs (Dockerfile, every file of the build context that ``.dockerignore`` lets
through — python/ and the chart files the wheel ships —, build arguments, base image, torch
index) is also the label ``dev.llm-finetune.inputs``. An image whose inputs hash exists is
reused, not rebuilt. Older hash tags beyond ``--keep`` are removed (ours only, by name).

Exit codes: 0 built or reused; 1 a build failed; 3 no builder can be set up here (the
message says why: no Docker daemon and buildah cannot be installed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMES = ("initializer", "trainer")
LABEL = "dev.llm-finetune.inputs"
STANDIN_LABEL = "dev.llm-finetune.standin"
BUILD_REPO = "localhost/llm-finetune-build"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
APT_PACKAGES = ("buildah", "podman", "runc", "debootstrap")
EXIT_FAILED, EXIT_UNAVAILABLE = 1, 3
# Bump when the way images or the stand-in are built changes (it is part of every inputs hash).
RECIPE = "3"
STANDIN_RECIPE = "2"
# Debian "slim" images drop these (debuerreotype's slimify); the stand-in does too.
SLIM_EXCLUDES = ("/usr/share/doc/*", "/usr/share/groff/*", "/usr/share/info/*", "/usr/share/linda/*",
                 "/usr/share/lintian/*", "/usr/share/locale/*", "/usr/share/man/*")
_print_lock = threading.Lock()


class Unavailable(Exception):
    """No builder can be set up on this machine (exit 3)."""


class BuildError(Exception):
    """A step failed (exit 1)."""


def say(msg: str) -> None:
    with _print_lock:
        print(f"[images] {msg}", flush=True)


def cache_dir() -> Path:
    root = os.environ.get("LLM_FINETUNE_IMAGES_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llm-finetune", "images")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(cmd: list[str], *, log: Path | None = None, prefix: str = "", input_bytes: bytes | None = None,
        check: bool = True, quiet: bool = False, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command; its output goes to ``log`` (and to stdout with ``prefix`` unless quiet)."""
    if log is None:
        proc = subprocess.run(cmd, input=input_bytes, capture_output=True, env=env, cwd=cwd)
        if check and proc.returncode != 0:
            raise BuildError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace').strip()[-2000:]}")
        return proc
    with open(log, "ab") as fh, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=env, cwd=cwd) as proc:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        tail: list[str] = []
        assert proc.stdout is not None
        for raw in proc.stdout:
            fh.write(raw)
            line = raw.decode("utf-8", "replace").rstrip()
            tail = (tail + [line])[-40:]
            if not quiet:
                with _print_lock:
                    print(prefix + line, flush=True)
        code = proc.wait()
    if check and code != 0:
        raise BuildError(f"{' '.join(cmd[:3])} ... failed ({code}); last lines:\n" + "\n".join(tail)
                         + f"\n(full log: {log})")
    return subprocess.CompletedProcess(cmd, code)


# ---------------------------------------------------------------------------
# .dockerignore (moby/patternmatcher semantics: Clean'ed patterns, ** spans folders,
# a pattern also matches every file under a folder it matches, the last match wins)
# ---------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1:i + 2] == "*":
                i += 1
                if pattern[i + 1:i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch == "[":
            end = pattern.find("]", i)
            out += pattern[i:end + 1] if end > i else re.escape(ch)
            i = end if end > i else i
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def dockerignore_patterns(root: Path = REPO) -> list[tuple[bool, str, re.Pattern[str]]]:
    """(negated, pattern, regex) for each line of ``root/.dockerignore``."""
    out = []
    path = root / ".dockerignore"
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negated else line).lstrip("/")
        out.append((negated, pattern, _pattern_regex(pattern)))
    return out


def dockerignore_excludes(path: str, patterns) -> bool:
    """Whether the build context leaves out ``path`` (relative, with '/')."""
    parts = path.split("/")
    parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
    excluded = False
    for negated, _, rx in patterns:
        if rx.match(path) or any(rx.match(p) for p in parents):
            excluded = not negated
    return excluded


def _may_reinclude_under(folder: str, patterns) -> bool:
    depth = folder.count("/") + 1
    for negated, pattern, _ in patterns:
        if not negated:
            continue
        segs = pattern.split("/")
        if "**" in pattern or len(segs) > depth and all(
                _pattern_regex(s).match(f) for s, f in zip(segs, folder.split("/"))):
            return True
    return False


def context_files(root: Path = REPO) -> list[str]:
    """Every file the build context holds after ``.dockerignore``, sorted."""
    patterns = dockerignore_patterns(root)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel + "/"
        dirnames[:] = sorted(d for d in dirnames if not (
            dockerignore_excludes(rel + d, patterns) and not _may_reinclude_under(rel + d, patterns)))
        files += [rel + f for f in filenames if not dockerignore_excludes(rel + f, patterns)]
    return sorted(files)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inputs_hash(name: str, extra: dict) -> str:
    """Hash of what one image is made of: Dockerfile, build context, build arguments, base."""
    h = hashlib.sha256()
    h.update(json.dumps({"recipe": RECIPE, "image": name, **extra}, sort_keys=True).encode())
    h.update(b"\0Dockerfile\0" + (REPO / "images" / name / "Dockerfile").read_bytes())
    for rel in context_files():
        p = REPO / rel
        h.update(b"\0" + rel.encode() + b"\0")
        if p.is_symlink():
            h.update(b"link:" + os.readlink(p).encode())
        else:
            h.update(b"x" if os.access(p, os.X_OK) else b"-")
            h.update(file_digest(p).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------
# Dockerfile facts
# ---------------------------------------------------------------------------
def from_image(name: str) -> str:
    """The Dockerfile's base (the default of ``ARG PYTHON_IMAGE``), fully qualified."""
    text = (REPO / "images" / name / "Dockerfile").read_text()
    m = re.search(r"^ARG\s+PYTHON_IMAGE=(\S+)", text, re.M)
    if not m:
        raise BuildError(f"images/{name}/Dockerfile: no 'ARG PYTHON_IMAGE=<image>' default")
    ref = m.group(1)
    first = ref.split("/")[0]
    if "/" not in ref:
        return "docker.io/library/" + ref
    if "." not in first and ":" not in first and first != "localhost":
        return "docker.io/" + ref
    return ref


def dockerfile_arg(name: str, arg: str) -> str | None:
    m = re.search(rf"^ARG\s+{arg}=(\S+)", (REPO / "images" / name / "Dockerfile").read_text(), re.M)
    return m.group(1) if m else None


def chart_reference(name: str) -> str:
    """What the chart renders by default for this image: registry/repository:appVersion."""
    values = (REPO / "chart" / "values.yaml").read_text()
    block = re.search(rf"^  {name}:\n((?:    .*\n|\s*\n)+)", values, re.M)
    fields = dict(re.findall(r"^    (registry|repository|tag): *\"?([^\"\n#]*)\"?", block.group(1), re.M)) if block else {}
    app = re.search(r"^appVersion:\s*\"?([^\"\s]+)", (REPO / "chart" / "Chart.yaml").read_text(), re.M)
    if not fields.get("repository") or not app:
        raise BuildError(f"chart/values.yaml images.{name}: no repository (or Chart.yaml no appVersion)")
    ref = fields["repository"].strip()
    if fields.get("registry", "").strip():
        ref = fields["registry"].strip() + "/" + ref
    return f"{ref}:{fields.get('tag', '').strip() or app.group(1)}"


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------
def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_packages(log: Path) -> None:
    """buildah/podman/runc/debootstrap: installed from apt when missing (root only)."""
    missing = [p for p in APT_PACKAGES if not shutil.which(p)]
    if not missing:
        return
    why = []
    if os.geteuid() != 0:
        why.append("not running as root")
    if not shutil.which("apt-get"):
        why.append("no apt-get (not Debian/Ubuntu)")
    if why:
        raise Unavailable(f"no Docker daemon, and {', '.join(missing)} missing; cannot install them: "
                          f"{'; '.join(why)}. Install {' '.join(APT_PACKAGES)} (or start Docker) and rerun")
    say(f"installing {' '.join(missing)} from apt (one time, ~30 s)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", *APT_PACKAGES]
    if run(cmd, log=log, quiet=True, check=False, env=env).returncode != 0:
        run(["apt-get", "update", "-q"], log=log, quiet=True, check=False, env=env)
        if run(cmd, log=log, quiet=True, check=False, env=env).returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise Unavailable("no Docker daemon, and 'apt-get install " + " ".join(APT_PACKAGES)
                              + "' failed (apt unreachable?): " + " | ".join(tail) + f" (log: {log})")


class Buildah:
    name = "buildah"

    def inspect(self, ref: str) -> dict | None:
        proc = run(["buildah", "inspect", "--type", "image", ref], check=False)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout)
        labels = (data.get("OCIv1", {}).get("config") or {}).get("Labels") or {}
        return {"id": data.get("FromImageID") or data.get("FromImageDigest"), "labels": labels}

    def size(self, ref: str) -> int:
        proc = run(["podman", "image", "inspect", "--format", "{{.Size}}", ref], check=False)
        return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0

    def tag(self, ref: str, *names: str) -> None:
        run(["buildah", "tag", ref, *names])

    def remove(self, ref: str) -> None:
        run(["buildah", "rmi", ref], check=False)

    def list_tags(self, repo: str) -> list[tuple[str, str]]:
        """(tag, created) of our build tags."""
        proc = run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}} {{.CreatedAt}}",
                    "--filter", f"reference={repo}"], check=False)
        return [tuple(line.split(" ", 1)) for line in proc.stdout.decode().splitlines() if " " in line]

    def build(self, name: str, ref: str, labels: dict[str, str], build_args: dict[str, str],
              volumes: list[str], log: Path) -> None:
        cmd = ["buildah", "bud", "--pull=never", "--isolation", "chroot", "-f", f"images/{name}/Dockerfile",
               "-t", ref]
        for k, v in labels.items():
            cmd += ["--label", f"{k}={v}"]
        for k, v in build_args.items():
            cmd += ["--build-arg", f"{k}={v}"]
        for v in volumes:
            cmd += ["-v", v]
        run(cmd + ["."], log=log, prefix=f"[{name}] ", cwd=REPO)


class Docker(Buildah):
    name = "docker"

    def inspect(self, ref: str) -> dict | None:
        proc = run(["docker", "image", "inspect", ref], check=False)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout)[0]
        return {"id": data["Id"], "labels": (data.get("Config") or {}).get("Labels") or {}}

    def size(self, ref: str) -> int:
        proc = run(["docker", "image", "inspect", "--format", "{{.Size}}", ref], check=False)
        return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0

    def tag(self, ref: str, *names: str) -> None:
        for n in names:
            run(["docker", "tag", ref, n])

    def remove(self, ref: str) -> None:
        run(["docker", "rmi", ref], check=False)

    def list_tags(self, repo: str) -> list[tuple[str, str]]:
        proc = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}} {{.CreatedAt}}", repo], check=False)
        return [tuple(line.split(" ", 1)) for line in proc.stdout.decode().splitlines() if " " in line]

    def build(self, name, ref, labels, build_args, volumes, log) -> None:
        cmd = ["docker", "build", "-f", f"images/{name}/Dockerfile", "-t", ref]
        for k, v in labels.items():
            cmd += ["--label", f"{k}={v}"]
        for k, v in build_args.items():
            cmd += ["--build-arg", f"{k}={v}"]
        # BuildKit (buildx): RUN --mount needs it; Docker < 23 builds with the legacy builder by default.
        run(cmd + ["."], log=log, prefix=f"[{name}] ", cwd=REPO, env={**os.environ, "DOCKER_BUILDKIT": "1"})


@contextlib.contextmanager
def locked(path: Path):
    """One build at a time on this machine (other checkouts build the same names)."""
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another image build holds {path}; waiting")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------
# The stand-in base (buildah only)
# ---------------------------------------------------------------------------
def _python_prefix(version: str) -> Path:
    """A CPython of ``version`` (e.g. 3.11.7) on this machine, built with a shared libpython."""
    mm = ".".join(version.split(".")[:2])
    candidates = [Path(sys.base_prefix), Path(os.path.expanduser(f"~/.pyenv/versions/{version}")),
                  Path(os.environ.get("PYENV_ROOT", "/nonexistent")) / "versions" / version, Path("/usr/local")]
    for prefix in candidates:
        exe = prefix / "bin" / f"python{mm}"
        if not exe.exists() or not (prefix / "lib" / f"libpython{mm}.so.1.0").exists():
            continue
        got = run([str(exe), "-c", "import platform; print(platform.python_version())"], check=False)
        if got.stdout.decode().strip() == version:
            return prefix
    raise Unavailable(f"the stand-in base needs CPython {version} with a shared libpython on this machine "
                      f"(looked in {', '.join(str(c) for c in candidates)}); install it (e.g. pyenv install "
                      f"{version} with PYTHON_CONFIGURE_OPTS=--enable-shared) or start Docker")


def _runtime_packages(prefix: Path, mm: str) -> list[str]:
    """Debian packages of the libraries the interpreter links (as the official image keeps them)."""
    files = [prefix / "lib" / f"libpython{mm}.so.1.0", prefix / "bin" / f"python{mm}"]
    files += [p for p in (prefix / "lib" / f"python{mm}" / "lib-dynload").glob("*.so") if "tkinter" not in p.name]
    sonames = set()
    for f in files:
        for line in run(["ldd", str(f)], check=False).stdout.decode().splitlines():
            parts = line.split("=>")
            if len(parts) == 2 and parts[1].strip().startswith("/") and not parts[1].strip().startswith(str(prefix)):
                so = parts[1].split()[0]
                sonames.add("*" + re.sub(r"^/(usr/)?", "", so))
    out = run(["dpkg-query", "--search", *sorted(sonames)], check=False).stdout.decode()
    return sorted({line.split(":")[0] for line in out.splitlines() if ":" in line})


def _copy_python(prefix: Path, root: Path, mm: str) -> None:
    """CPython into ``root/usr/local`` the way the official image has it (no tests, no .pyc, no .a)."""
    dest = root / "usr" / "local"

    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = os.path.relpath(folder, prefix)
        skip = {n for n in names if n in ("test", "tests", "idle_test", "__pycache__")
                or n.endswith((".pyc", ".pyo")) or (n.startswith("libpython") and n.endswith(".a"))}
        if rel == f"lib/python{mm}/site-packages":
            skip |= {n for n in names if n != "README.txt"}
        if rel == "bin":
            skip |= {n for n in names if n not in (f"python{mm}", f"python{mm}-config", f"pydoc{mm}",
                                                   f"idle{mm}", f"2to3-{mm}")}
        if rel == ".":
            skip |= {n for n in names if n not in ("bin", "lib", "include")}
        return skip

    shutil.copytree(prefix, dest, ignore=ignore, symlinks=True, dirs_exist_ok=True)
    for link, target in ((f"python{mm.split('.')[0]}", f"python{mm}"), ("python", "python3"),
                         ("pydoc3", f"pydoc{mm}"), ("pydoc", "pydoc3"), ("python3-config", f"python{mm}-config"),
                         ("python-config", "python3-config"), ("idle3", f"idle{mm}"), ("idle", "idle3")):
        if not (dest / "bin" / link).exists() and (dest / "bin" / target).exists():
            (dest / "bin" / link).symlink_to(target)


def _host_ca_certs(root: Path) -> int:
    """Certificates in this host's bundle that the stand-in's Debian bundle lacks -> its trust store."""
    host = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    if not host.is_file():
        return 0
    rx = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
    have = {c.replace("\n", "") for c in rx.findall((root / "etc/ssl/certs/ca-certificates.crt").read_text())}
    extra = [c for c in rx.findall(host.read_text()) if c.replace("\n", "") not in have]
    folder = root / "usr/local/share/ca-certificates"
    folder.mkdir(parents=True, exist_ok=True)
    for i, cert in enumerate(extra):
        (folder / f"llm-finetune-host-{i}.crt").write_text(cert + "\n")
    return len(extra)


def _debian_mirror() -> str:
    if os.environ.get("LLM_FINETUNE_DEBIAN_MIRROR"):
        return os.environ["LLM_FINETUNE_DEBIAN_MIRROR"]
    for src in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        text = src.read_text(errors="replace") if src.is_file() else ""
        for m in re.finditer(r"(https?://\S+/debian)(?:\s|$)", text):
            return m.group(1)
    return "http://deb.debian.org/debian"


def _ca_digest() -> str:
    host = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    return file_digest(host)[:12] if host.is_file() else "none"


def ensure_standin(builder: Buildah, ref: str, log: Path) -> str:
    """The base image under its exact FROM name; a real one present locally is used as is."""
    m = re.match(r"^docker\.io/library/python:(\d+\.\d+\.\d+)-slim-(\w+)$", ref)
    if not m:
        raise Unavailable(f"no image {ref} here and no stand-in recipe for it (only python:X.Y.Z-slim-<suite>)")
    version, suite = m.groups()
    want = f"{STANDIN_RECIPE}-{version}-{suite}-ca{_ca_digest()}"
    have = builder.inspect(ref)
    if have and have["labels"].get(STANDIN_LABEL, want) == want:
        return have["id"]
    prefix = _python_prefix(version)
    say(f"creating the stand-in base {ref}: debootstrap {suite} + CPython {version} from {prefix} (~1-2 min)")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="standin-", dir=cache_dir()))
    try:
        root = work / "root"
        _make_standin_root(prefix, root, version, suite, log)
        mm = ".".join(version.split(".")[:2])
        changes = ["ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                   f"ENV PYTHON_VERSION={version}", f"LABEL {STANDIN_LABEL}={want}", 'CMD ["python3"]']
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-cf", "-", "."], stdout=subprocess.PIPE)
        cmd = ["podman", "import"] + [a for c in changes for a in ("--change", c)] + ["-", ref]
        imp = subprocess.run(cmd, stdin=tar.stdout, capture_output=True)
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise BuildError(f"podman import of the stand-in failed: {imp.stderr.decode(errors='replace')[-1500:]}")
        say(f"stand-in base {ref} (python {mm}) ready in {time.monotonic() - started:.0f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return builder.inspect(ref)["id"]


def _make_standin_root(prefix: Path, root: Path, version: str, suite: str, log: Path) -> None:
    mm = ".".join(version.split(".")[:2])
    include = ["ca-certificates", "netbase", "tzdata", *_runtime_packages(prefix, mm)]
    run(["debootstrap", "--variant=minbase", f"--include={','.join(include)}", suite, str(root), _debian_mirror()],
        log=log, prefix="[base] ", quiet=True)
    dpkg_cfg = root / "etc/dpkg/dpkg.cfg.d/docker-slim"
    dpkg_cfg.write_text("".join(f"path-exclude {p}\n" for p in SLIM_EXCLUDES)
                        + "path-include /usr/share/doc/*/copyright\n")
    for pattern in SLIM_EXCLUDES + ("/var/lib/apt/lists/*", "/var/cache/apt/*.bin", "/var/cache/apt/archives/*.deb"):
        for p in root.glob(pattern.lstrip("/")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.name != "lock":
                p.unlink()
    _copy_python(prefix, root, mm)
    n_certs = _host_ca_certs(root)
    (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    chroot_env = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                  "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/root"}
    run(["chroot", str(root), "ldconfig"], log=log, quiet=True)
    run(["chroot", str(root), "update-ca-certificates"], log=log, quiet=True, env=chroot_env)
    run(["chroot", str(root), f"python{mm}", "-m", "ensurepip", "--default-pip"], log=log, quiet=True, env=chroot_env)
    run(["chroot", str(root), "python3", "-c", "import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid, readline; "
         "print('stand-in python ok')"], log=log, quiet=True, env=chroot_env)
    for pyc in (root / "usr/local/lib").rglob("__pycache__"):
        shutil.rmtree(pyc, ignore_errors=True)
    say(f"stand-in: {len(include)} packages, {n_certs} host CA certificate(s) added")


# ---------------------------------------------------------------------------
# The local torch index (buildah only)
# ---------------------------------------------------------------------------
def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def ensure_torch_index(version: str, log: Path) -> Path:
    """A PEP 503 file index holding the torch ``version`` CPU wheel and its dependencies."""
    constraints = REPO / "python" / "constraints.txt"
    key = hashlib.sha256(constraints.read_bytes() + version.encode()).hexdigest()[:12]
    index = cache_dir() / f"torch-index-{version}-{key}"
    if (index / "simple" / "index.html").exists():
        return index
    tmp = Path(tempfile.mkdtemp(prefix="torch-index-", dir=cache_dir()))
    files = tmp / "files"
    say(f"local torch index: pip download torch=={version}+cpu and its dependencies")
    pins = [line for line in constraints.read_text().splitlines() if not line.startswith("torch==")]
    (tmp / "constraints.txt").write_text("\n".join(pins) + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(files), "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
           "--platform", "manylinux_2_28_x86_64", "-c", str(tmp / "constraints.txt"),
           f"torch=={version}+cpu", "setuptools"]
    if run(cmd, log=log, quiet=True, check=False).returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"no torch {version}+cpu wheel from this machine's pip sources (download.pytorch.org "
                         "is not needed when the wheel is in a find-links folder, e.g. PIP_FIND_LINKS); "
                         f"see {log}")
    if any(_normalize(f.name).startswith("nvidia-") for f in files.iterdir()):
        raise BuildError("the torch index would hold CUDA wheels (nvidia-*); use the +cpu wheel")
    projects: dict[str, list[Path]] = {}
    for f in sorted(files.iterdir()):
        projects.setdefault(_normalize(f.name.split("-")[0]), []).append(f)
    for project, wheels in projects.items():
        page = tmp / "simple" / project / "index.html"
        page.parent.mkdir(parents=True)
        links = "".join(f'<a href="../../files/{w.name}#sha256={file_digest(w)}">{w.name}</a>\n' for w in wheels)
        page.write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    (tmp / "simple" / "index.html").write_text(
        "<!DOCTYPE html>\n<html><body>\n" + "".join(f'<a href="{p}/">{p}</a>\n' for p in projects) + "</body></html>\n")
    shutil.rmtree(index, ignore_errors=True)
    tmp.rename(index)
    return index


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def choose_builder(wanted: str, log: Path) -> Buildah:
    if wanted in ("auto", "docker") and docker_available():
        return Docker()
    if wanted == "docker":
        raise Unavailable("--builder docker: no Docker daemon answers 'docker info'")
    ensure_packages(log)
    return Buildah()


def build_one(builder: Buildah, name: str, common: dict, log_dir: Path, force: bool, keep: int) -> dict:
    build_args: dict[str, str] = {}
    volumes: list[str] = []
    extra = {"builder": builder.name, "base": common.get("base")}
    if name == "trainer" and builder.name == "docker" and common.get("torch") == "cpu":
        build_args["TORCH_INDEX_URL"] = CPU_TORCH_INDEX
    if name == "trainer" and builder.name == "buildah":
        index = common["torch_index"]
        build_args["TORCH_INDEX_URL"] = "file:///torch-index/simple"
        volumes.append(f"{index}:/torch-index:ro")
        extra["torch_index"] = sorted(p.name for p in (Path(index) / "files").iterdir())
    extra["build_args"] = build_args
    digest = inputs_hash(name, extra)
    ref = f"{BUILD_REPO}/{name}:{digest}"
    alias = chart_reference(name)
    info = {"ref": ref, "alias": alias, "hash": digest, "built": False, "seconds": 0.0}
    have = builder.inspect(ref)
    if have and have["labels"].get(LABEL) == digest and not force:
        say(f"{name}: inputs unchanged ({digest}), reusing {ref}")
    else:
        say(f"{name}: building {ref} with {builder.name}")
        started = time.monotonic()
        builder.build(name, ref, {LABEL: digest}, build_args, volumes, log_dir / f"{name}.log")
        info.update(built=True, seconds=round(time.monotonic() - started, 1))
        say(f"{name}: built in {info['seconds']:.0f}s")
    builder.tag(ref, alias)
    info["size"] = builder.size(ref)
    ours = [t for t in builder.list_tags(f"{BUILD_REPO}/{name}") if t[0].startswith(f"{BUILD_REPO}/{name}:")]
    for old, _ in sorted(ours, key=lambda t: t[1], reverse=True)[keep:]:
        if old != ref:
            builder.remove(old)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", action="append", choices=NAMES, help="Only this image (repeatable).")
    parser.add_argument("--force", action="store_true", help="Build even when the inputs hash exists.")
    parser.add_argument("--builder", choices=("auto", "docker", "buildah"), default="auto")
    parser.add_argument("--keep", type=int, default=2, help="Hash tags kept per image (default 2).")
    parser.add_argument("--serial", action="store_true", help="One image at a time (default: both at once).")
    parser.add_argument("--torch", choices=("default", "cpu"), default="default",
                        help="Trainer's torch: the Dockerfile's CUDA index (default; with buildah here always the "
                             "local CPU index) or CPU (the tests: a ~1 GB smaller image).")
    parser.add_argument("--result", help="Write what was built/reused (refs, hashes, sizes, seconds) as JSON.")
    args = parser.parse_args(argv)
    names = args.image or list(NAMES)
    logs = cache_dir() / "logs"
    logs.mkdir(exist_ok=True)
    started = time.monotonic()
    result: dict = {"ok": False, "images": {}}
    try:
        with locked(cache_dir() / "build.lock"):
            builder = choose_builder(args.builder, logs / "setup.log")
            result["builder"] = builder.name
            common: dict = {"builder": builder.name, "torch": args.torch}
            if builder.name == "buildah":
                bases = {from_image(n) for n in names}
                common["base"] = {b: ensure_standin(builder, b, logs / "base.log") for b in sorted(bases)}
                if "trainer" in names:
                    common["torch_index"] = str(ensure_torch_index(dockerfile_arg("trainer", "TORCH_VERSION"),
                                                                   logs / "torch-index.log"))
            with concurrent.futures.ThreadPoolExecutor(1 if args.serial else len(names)) as pool:
                futures = {n: pool.submit(build_one, builder, n, common, logs, args.force, args.keep) for n in names}
                for n, fut in futures.items():
                    result["images"][n] = fut.result()
        result["ok"] = True
        code = 0
    except Unavailable as exc:
        result["unavailable"] = str(exc)
        print(f"make images: cannot build images here: {exc}", file=sys.stderr)
        code = EXIT_UNAVAILABLE
    except BuildError as exc:
        result["error"] = str(exc)
        print(f"make images: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    result["seconds"] = round(time.monotonic() - started, 1)
    if args.result:
        Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    for n, info in result["images"].items():
        say(f"{n}: {info['alias']} = {info['ref']} ({info['size'] / 1e6:.0f} MB, "
            f"{'built in %.0fs' % info['seconds'] if info['built'] else 'reused'})")
    return code


if __name__ == "__main__":
    sys.exit(main())
