"""``llm-finetune initialize``: the storage initializer (the PyTorchJob's init container).

Puts ``model.uri`` into ``paths.model`` and ``dataset.uri`` into ``paths.dataset`` (local
paths are checked and used in place), each followed by its completion manifest. A
directory whose manifest matches the request is left alone: reruns download nothing.
With ``--wait`` it only waits for another pod's manifests; with ``--shared`` (every pod of a
shared-mode job runs it) the pod with index 0 fills the volume and the others wait.

Before downloading, the volume must be writable by this pod: a volume whose driver ignored
``fsGroup`` (many ReadWriteMany drivers) is a permanent error naming the fix.

In the chart (``--outcome FILE``) the init container never fails by its exit code: the Training
Operator v1.9 only reads the ``pytorch`` container's code, and an init container's failure
would leave it unset (0xbeef) — retried forever, whatever the cause. The outcome (code and
one-line message) goes to FILE in the pod's ``/tmp`` instead, and ``launch`` exits with it.
It also counts the pod's attempt (:mod:`llm_finetune.core.attempts`) and gives up at once when
the previous attempt was the last the budget allowed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core import attempts
from ..core.config import DEFAULT_CONFIG_PATH, JobConfig, load_config
from ..core.errors import ConfigError, ExternalError, UserError, guarded, last_message, write_outcome
from ..core.log import format_bytes, format_duration
from ..core.pod import pod_index, pod_name
from ..core.retry import disk_error
from ..core.version import __version__
from ..core.volume import manifest_path, read_manifest, unwritable_reason, write_manifest
from .base import JOURNAL_NAME, Context, Request, prune, summarize
from .registry import provider_for

log = logging.getLogger(__name__)
KINDS = ("model", "dataset")
DEFAULT_WAIT_TIMEOUT = 6 * 3600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="job config file (default: %(default)s)")
    parser.add_argument("--wait", action="store_true",
                        help="only wait until the model and dataset on the shared volume are complete")
    parser.add_argument("--shared", action="store_true",
                        help="every pod runs this on one shared volume: the pod with index 0 "
                             "($LLM_FINETUNE_POD_INDEX) fills it, the others wait")
    parser.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_TIMEOUT, metavar="SECONDS",
                        help="give up waiting after this many seconds (default: %(default)s)")
    parser.add_argument("--outcome", default=None, metavar="FILE",
                        help="record the exit code and message in FILE for `launch` and exit 0 (the chart's init container)")


def run(args: argparse.Namespace) -> int:
    code = _run(args)
    if args.outcome:
        message = last_message() if code else ""
        write_outcome(args.outcome, code, message)
        if code:
            log.info("outcome (exit %d) recorded in %s: the pytorch container exits with it", code, args.outcome)
        return 0
    return code


@guarded("initializer", terminated="what was downloaded is kept; the next attempt resumes it")
def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.outcome:
        attempt = attempts.begin(cfg.paths.run, pod_name(), cfg.run.backoff_limit)
        if attempt is not None and attempt.over_budget:
            raise UserError(attempt.give_up(attempt.data.get("lastFailure") or attempts.KILLED))
    if args.wait or (args.shared and pod_index() != 0):
        wait_for_volume(cfg, timeout=args.wait_timeout)
    else:
        check_writable(cfg)
        initialize(cfg)
    return 0


def check_writable(cfg: JobConfig) -> None:
    """The volume this pod fills must take files from its user (the trainer checks the run folder itself)."""
    reason = unwritable_reason(cfg.paths.workspace)
    if reason is not None:
        hint = ("the volume's driver did not apply podSecurityContext.fsGroup (a CSIDriver with fsGroupPolicy None, or "
                "the default ReadWriteOnceWithFSType on a ReadWriteMany volume): make its root directory writable "
                "for podSecurityContext.runAsUser/runAsGroup (e.g. an NFS export owned by that uid), or use a "
                "driver/StorageClass that applies fsGroup (fsGroupChangePolicy: Always re-applies it)")
        if "read-only" in reason:
            hint = "the initializer needs the volume mounted read-write"
        raise UserError(f"{cfg.paths.workspace} is not writable by this pod: {reason}", field="storage", hint=hint)


def prepare_environment(cfg: JobConfig) -> None:
    """Hub client settings; set before huggingface_hub/datasets are imported (they read them once)."""
    tmp = Context(cfg.download, Path(cfg.paths.workspace)).tmp_dir
    os.environ.setdefault("HF_HOME", str(tmp / "hf-home"))  # the root filesystem is read-only in the pod
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if cfg.download.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"


def targets(cfg: JobConfig) -> dict[str, Path]:
    out = {kind: Path(getattr(cfg.paths, kind)) for kind in KINDS}
    workspace = os.path.realpath(cfg.paths.workspace)
    for kind, path in out.items():
        real = os.path.realpath(path)
        if real in ("/", workspace) or real == os.path.realpath(out["dataset" if kind == "model" else "model"]):
            raise ConfigError(f"{path} must be its own folder inside paths.workspace", field=f"paths.{kind}",
                              hint="use the chart's paths (/workspace/model, /workspace/dataset)")
    return out


def initialize(cfg: JobConfig) -> dict[str, dict[str, Any]]:
    """Fill the volume for ``cfg``; returns per kind the manifest (plus ``transferredBytes``) or the in-place path."""
    prepare_environment(cfg)
    ctx = Context(cfg.download, Path(cfg.paths.workspace))
    results = {}
    for kind, target in targets(cfg).items():
        results[kind] = initialize_one(Request.from_config(cfg, kind), target, ctx)
    shutil.rmtree(ctx.tmp_dir, ignore_errors=True)
    return results


def initialize_one(request: Request, target: Path, ctx: Context) -> dict[str, Any]:
    provider = provider_for(request, ctx)
    in_place = provider.in_place()
    if in_place is not None:
        log.info("%s: %s is on the volume; used in place (nothing copied)", request.kind, in_place)
        return {"kind": request.kind, "source": request.uri, "path": str(in_place), "inPlace": True,
                "transferredBytes": 0}
    key = request.source_key()
    current = read_manifest(target)
    if current is not None and current.get("sourceKey") == key:
        log.info("%s: %s already holds %s (%s, revision %s); nothing to download", request.kind, target,
                 request.uri, summarize(current.get("files", [])), current.get("revision", "?"))
        return {**current, "transferredBytes": 0}
    if ctx.download.offline and request.scheme == "hf":
        raise UserError(f"offline mode is on but {target} holds no complete copy of {request.uri}",
                        field="download.offline", hint="run once with download.offline: false to fill the volume")
    started = time.monotonic()
    try:
        if current is not None:
            log.info("%s: %s holds %s, but the request changed: fetching %s", request.kind, target,
                     current.get("source", "another source"), request.uri)
            provider.previous = current
            manifest_path(target).unlink()
        target.mkdir(parents=True, exist_ok=True)
        fields = provider.fetch(target)
        transferred = fields.pop("transferredBytes", None)
        removed = prune(target, keep={f["path"] for f in fields["files"]} | {JOURNAL_NAME})
        if removed:
            log.info("%s: removed %d stale file(s) from %s", request.kind, removed, target)
        manifest = {
            "kind": request.kind, "source": request.uri, "sourceKey": key, "request": request.identity(),
            "createdAt": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tool": f"llm-finetune {__version__}", **fields,
        }
        write_manifest(target, manifest)
        (target / JOURNAL_NAME).unlink(missing_ok=True)
    except OSError as exc:
        err = disk_error(exc, f"writing {target}")
        if err is None:
            raise
        raise err from exc
    elapsed = time.monotonic() - started
    note = f", {format_bytes(transferred)} transferred" if transferred is not None else ""
    log.info("%s: %s ready in %s: %s at revision %s%s", request.kind, target, format_duration(elapsed),
             summarize(manifest["files"]), manifest["revision"], note)
    return {**manifest, "transferredBytes": transferred}


def wait_for_volume(cfg: JobConfig, *, timeout: float = DEFAULT_WAIT_TIMEOUT, interval: float = 2.0) -> None:
    """Block until every remote source's manifest on the volume matches the config (writes nothing)."""
    ctx = Context(cfg.download, Path(cfg.paths.workspace))
    pending: dict[str, tuple[Request, Path]] = {}
    for kind, target in targets(cfg).items():
        request = Request.from_config(cfg, kind)
        provider = provider_for(request, ctx)
        if provider.in_place() is None:
            pending[kind] = (request, target)
    started = last_note = time.monotonic()
    while True:
        for kind, (request, target) in list(pending.items()):
            manifest = read_manifest(target)
            if manifest is not None and manifest.get("sourceKey") == request.source_key():
                log.info("%s: %s is complete (%s)", kind, target, summarize(manifest.get("files", [])))
                del pending[kind]
        if not pending:
            return
        now = time.monotonic()
        what = ", ".join(f"{t} ({r.uri})" for r, t in pending.values())
        if now - started >= timeout:
            raise ExternalError(f"timed out after {format_duration(timeout)} waiting for {what}",
                                hint="the storage-initializer of the job's first pod fills them: check its logs")
        if now - last_note >= 60:
            log.info("waiting for the first pod's initializer: %s (%s so far)", what, format_duration(now - started))
            last_note = now
        time.sleep(min(interval, max(0.05, timeout - (now - started))))
