"""``llm-finetune run-local``: render the chart with the real ``helm template`` and run it here.

    llm-finetune run-local -f values.yaml [-f more.yaml] [--set a.b=c] [--workdir DIR] [--runtime container]

1. the values are validated (schema + semantic rules); problems stop the run before
   anything starts (exit 1);
2. ``helm template`` renders the chart; the ConfigMap and the job (PyTorchJob, or TrainJob and
   its TrainingRuntime with ``backend: trainjob``) are read back;
3. every pod of the job runs as local processes (``plan.py``, ``runner.py``, ``executor.py``) with
   ``/workspace``, ``/output``, ``/tmp`` and the config mount mapped to ``--workdir``, or with
   ``--runtime container`` as real containers from the rendered images (``containers.py``), the
   same plan applied as the kubelet would (users, read-only root, capabilities, volumes, limits);
   a PyTorchJob's pods are created, deleted and recreated as the Training Operator v1.9 does
   (``operator_v1.py``); the job's end state, its Events and each pod's attempts are printed and
   saved in ``<workdir>/status.json``;
4. a summary says where the output, the loss curve and the before/after samples are.

``--demo`` (what ``make run`` uses) builds the deterministic tiny model and dataset,
serves them from a local SeaweedFS S3 server with credentials passed as the chart's
Secret-backed env (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), and points the
values' S3 endpoints at it — so the initializer's real S3 provider does the download.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..core.errors import guarded

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--values", action="append", default=[], metavar="FILE",
                        help="Values file (repeatable; later files win, as with helm).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_values",
                        help="Set a value (helm --set syntax; repeatable).")
    parser.add_argument("--workdir", default=".run", help="Local folder standing in for volumes and pods (default .run).")
    parser.add_argument("--chart", default=None, help="Chart folder (default: the repo's chart/).")
    parser.add_argument("--helm", default=None, help="helm binary (default: $HELM_BIN or helm on PATH).")
    parser.add_argument("--release", default="local", help="Release name (default local).")
    parser.add_argument("--namespace", default="default", help="Namespace to render for.")
    parser.add_argument("--dry-run", action="store_true", help="Print the planned processes as JSON and stop.")
    parser.add_argument("--demo", action="store_true",
                        help="Serve the built-in tiny model and dataset from a local S3 server (make run).")
    parser.add_argument("--no-report", action="store_true", help="Skip the loss curve and before/after samples.")
    parser.add_argument("--runtime", choices=("process", "container"), default="process",
                        help="process (default): each container's command as a local process; container: each "
                             "container as a real container from its image (podman; see 'make images').")
    parser.add_argument("--max-pod-starts", type=int, default=10, metavar="N",
                        help="Stop when one pod has been created N times (the operator would go on; default 10).")


def _validate(values_files: list[str], set_values: list[str], chart: Path) -> None:
    """Stop before anything starts when the values are wrong: every problem, then exit 1."""
    from ..core.errors import UserError
    from ..validate import validate_files
    from ..validate.command import print_report

    report = validate_files(values_files, [("typed", s) for s in set_values], chart)
    if report.problems:
        print_report(report, "text", file=sys.stderr)  # stdout is the plan's (--dry-run)
    if not report.ok:
        first = report.errors[0]
        raise UserError(f"{len(report.errors)} problem(s) in the values, nothing was started; first: "
                        f"{first.render()}")


@guarded("run-local")
def run(args: argparse.Namespace) -> int:
    from ..core import helm
    from .plan import build_plan
    from .lock import lock_workdir
    from .s3server import free_port

    chart = helm.find_chart(args.chart)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    lock = None if args.dry_run else lock_workdir(workdir)  # held until every process started here has ended
    local_env = dict(os.environ)
    set_values = list(args.set_values)
    server = None
    try:
        if args.demo:
            from .demo import demo_sets, serve_demo

            _validate(args.values, demo_sets("http://127.0.0.1:8333") + set_values, chart)
            server, sets, demo_env = serve_demo(workdir)
            set_values = sets + set_values
            local_env.update(demo_env)
        else:
            _validate(args.values, set_values, chart)
        manifests = helm.load_manifests(helm.template(chart, values_files=args.values, set_values=set_values,
                                                      release=args.release, namespace=args.namespace, helm=args.helm))
        # A free port instead of the operator's 23456, so that local runs side by side do not clash.
        plan = build_plan(manifests, workdir, local_env=local_env, master_port=free_port())
        if args.dry_run:
            print(json.dumps(plan_as_dict(plan, args.runtime), indent=2, sort_keys=True))
            return 0
        log.info("run-local: job %s, %d pod(s), workdir %s, runtime %s", plan.job_name, len(plan.pods), workdir,
                 args.runtime)
        execute(plan, max_pod_starts=args.max_pod_starts, keep_fds=(lock,) if lock is not None else (),
                executor=_executor(args.runtime))
    finally:
        if server is not None:
            server.stop()
    from .report import report

    report(plan, make_samples=not args.no_report)
    return 0


def _executor(runtime: str):
    if runtime == "container":
        from .containers import ContainerExecutor

        return ContainerExecutor()
    from .executor import ProcessExecutor

    return ProcessExecutor()


def execute(plan, *, max_pod_starts: int, keep_fds: tuple[int, ...] = (), executor=None) -> None:
    """Run the job like the cluster; print and save (``<workdir>/status.json``) its end state; raise when it failed."""
    from .runner import StepFailed, failure_message, run_job

    result, failed = run_job(plan, max_pod_starts=max_pod_starts, keep_fds=keep_fds, executor=executor)
    Path(plan.workdir, "status.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")
    print(summary(plan.job.kind, plan.job_name, result), flush=True)
    if result.state in ("Succeeded", "Complete"):
        return
    message = failure_message(failed) if failed else ""
    code = _failed_code(failed)
    if result.stopped:
        message = f"{result.stopped}; last failure: {message or 'none reported'}"
    elif not message:
        message = result.status.message("Failed") or f"the job ended {result.state or 'without a state'}"
    raise StepFailed(failed.failed_spec if failed else None, code, message)


def _failed_code(failed) -> int:
    """The exit code of the container whose failure ended the job (1 when there is none)."""
    if failed is None or failed.failed_spec is None:
        return 1
    codes = {**failed.status.init_exit_codes, **failed.status.exit_codes}
    return codes.get(failed.failed_spec.container) or 1


def summary(kind: str, job: str, result) -> str:
    """What `kubectl get/describe pytorchjob|trainjob` would show, and how often each pod ran."""
    lines = [f"{kind} {job}: {result.state or 'no condition'}" + (f" (run-local stopped it: {result.stopped})" if result.stopped else "")]
    if getattr(result.status, "restarts", 0):
        lines.append(f"  JobSet restarts: {result.status.restarts} ({result.status.last_restart})")
    lines += [f"  condition {c.type}={c.status} {c.reason}: {c.message}" for c in result.status.conditions]
    lines += [f"  event {e.type} {e.reason} (x{e.count}, {e.source}): {e.message}" for e in result.events]
    for name, record in result.pods.items():
        lines.append(f"  pod {name}: created {record.starts} time(s), main container exit codes {record.exit_codes}")
    if result.left_running:
        lines.append(f"  left running by cleanPodPolicy: {', '.join(result.left_running)} (stopped by run-local)")
    return "\n".join(lines)


def plan_as_dict(plan, runtime: str = "process") -> dict:
    """The plan without secret values (they come from the environment and are never printed)."""
    from ..core.log import SECRET_ENV_VARS

    if runtime == "container":  # what each container is started with (secrets only by name)
        from .containers import run_args

        hosts = [p.name for p in plan.pods]
        return {"job": plan.job_name, "config": plan.config_file, "pods": [{
            "name": p.name, "replicaType": p.replica_type, "index": p.index, "containers": [{
                "container": s.container, "init": s.init,
                "run": run_args(["podman"], s, name=f"{s.pod}-{s.container}", run_key="dry-run", hosts=hosts),
            } for s in p.processes]} for p in plan.pods]}

    return {
        "job": plan.job_name,
        "config": plan.config_file,
        "pods": [{
            "name": p.name, "replicaType": p.replica_type, "index": p.index, "stage": p.stage,
            "processes": [{
                "container": s.container, "init": s.init, "argv": s.argv, "rendered": s.rendered_argv,
                "env": {k: ("***" if k in SECRET_ENV_VARS else v) for k, v in sorted(s.env.items())},
            } for s in p.processes],
        } for p in plan.pods],
    }
