"""``llm-finetune preflight``: the chart's pre-install/pre-upgrade hook (initializer image).

Before Helm creates anything, check what would make the job fail later, report
every problem at once and exit 1 (the message also goes to the termination log, so
``helm install`` shows it):

1. the rendered config (``--config``, the hook's own ConfigMap): the strict config loader,
   the chart's schema for each values section, and the validator's rules that apply to a
   config (``llm_finetune.validate.validate_config``);
2. the job's API is served (discovery: allowed for every authenticated user, no cluster-wide
   RBAC): ``GET /apis/kubeflow.org/v1`` lists ``pytorchjobs``; for ``backend: trainjob``
   ``/apis/trainer.kubeflow.org/v1alpha1`` lists ``trainjobs`` and the runtime's kind, and
   ``/apis/jobset.x-k8s.io/v1alpha2`` lists ``jobsets`` (the trainer runs a TrainJob as a JobSet);
   then the runtime the TrainJob references exists and has a ``node`` job with a ``node``
   container (the chart's own TrainingRuntime is a hook created just before this one);
3. every referenced Secret exists and has its keys (values are never logged);
4. ``storage.existingClaim`` exists, is Bound (or Pending on a WaitForFirstConsumer
   storage class) and its access modes fit the storage mode and the number of pods;
5. what the cluster's controllers will do (:mod:`.cluster`): a live PyTorchJob of the same name
   must have the same spec (a run is never changed in place), the Kueue LocalQueue exists, and
   a job with a Master replica is not headed for a namespace enforcing Pod Security
   "restricted". A failed check deletes its own RoleBinding(s) before it exits.

Contract with ``chart/templates/hooks/preflight.yaml`` (env of the hook Job: names only,
never secret values):

=====================  =================================================================
``POD_NAMESPACE``      the release namespace (downward API)
``PREFLIGHT_SECRETS``  ``secret:key,secret:key,...``: every Secret key the job's pods read
                       through ``secretKeyRef`` (secrets.hf, secrets.s3); empty: none
``PREFLIGHT_CLAIM``    ``storage.existingClaim``; empty when the chart creates the claim
``PREFLIGHT_NUM_WORKERS``  ``job.numWorkers`` (pods of the job)
``PREFLIGHT_BACKEND``  ``backend``: ``pytorchjob`` (default) or ``trainjob``
``PREFLIGHT_RUNTIME``  ``trainjob``: ``<TrainingRuntime|ClusterTrainingRuntime>/<name>`` the TrainJob references
``PREFLIGHT_CONFIGMAP``  ``trainjob``: the release's config ConfigMap (the runtime's pods must mount it)
``PREFLIGHT_JOB``      the PyTorchJob's or TrainJob's name; ``PREFLIGHT_SPEC_CHECKSUM``,
                       ``PREFLIGHT_CONFIG_CHECKSUM``: what its spec and config will be
``PREFLIGHT_QUEUE``    ``job.queueName``
``PREFLIGHT_POD_SECURITY``  ``true``: the PyTorchJob has a Master and Workers; check the namespace
``PREFLIGHT_RBAC``     the hook's RoleBinding [and ClusterRoleBinding] names (deleted on failure)
=====================  =================================================================

RBAC (the hook's Role): ``get`` on ``secrets`` limited by ``resourceNames`` to those
Secrets, ``get`` on ``persistentvolumeclaims`` limited to the claim, ``get`` on that
``trainingruntimes``, on that ``pytorchjobs`` or ``trainjobs`` and ``localqueues``, ``delete`` on its own
RoleBinding; with ``PREFLIGHT_POD_SECURITY`` a ClusterRole: ``get`` on this namespace,
``delete`` on its own ClusterRoleBinding. Reading the claim's StorageClass or a
ClusterTrainingRuntime (cluster-scoped) is optional: when forbidden, a warning.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field

from ..core.config import DEFAULT_CONFIG_PATH
from ..core.errors import UserError, guarded
from ..core.problems import ERROR, WARNING, Problem

log = logging.getLogger(__name__)

RUNTIME_PLURALS = {"TrainingRuntime": "trainingruntimes", "ClusterTrainingRuntime": "clustertrainingruntimes"}


@dataclass
class Request:
    """What the hook Job's env asks to check (see the module docstring)."""

    secrets: dict[str, list[str]] = field(default_factory=dict)  # secret name -> keys
    claim: str = ""
    num_workers: int = 1
    backend: str = "pytorchjob"
    runtime: tuple[str, str] = ("", "")  # (kind, name) of the TrainJob's runtime
    job: str = ""
    spec_checksum: str = ""
    config_checksum: str = ""
    queue: str = ""
    pod_security: bool = False
    rbac: list[str] = field(default_factory=list)
    config_map: str = ""  # trainjob: the ConfigMap the runtime's pods must mount

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Request":
        env = dict(os.environ if env is None else env)
        secrets: dict[str, list[str]] = {}
        for item in filter(None, (s.strip() for s in env.get("PREFLIGHT_SECRETS", "").split(","))):
            name, sep, key = item.partition(":")
            if not sep or not name or not key:
                raise UserError(f"bad entry {item!r}", field="PREFLIGHT_SECRETS", hint="the chart sets secret:key,...; re-render the hook")
            secrets.setdefault(name, [])
            if key not in secrets[name]:
                secrets[name].append(key)
        raw = env.get("PREFLIGHT_NUM_WORKERS", "1") or "1"
        if not raw.isdigit() or int(raw) < 1:
            raise UserError(f"{raw!r} is not a positive integer", field="PREFLIGHT_NUM_WORKERS")
        backend = env.get("PREFLIGHT_BACKEND", "") or "pytorchjob"
        if backend not in ("pytorchjob", "trainjob"):
            raise UserError(f"{backend!r} is not a backend", field="PREFLIGHT_BACKEND", hint="pytorchjob or trainjob; re-render the hook")
        kind, _, runtime = env.get("PREFLIGHT_RUNTIME", "").partition("/")
        if backend == "trainjob" and (kind not in RUNTIME_PLURALS or not runtime):
            raise UserError(f"{env.get('PREFLIGHT_RUNTIME', '')!r} is not <kind>/<name> of a runtime", field="PREFLIGHT_RUNTIME",
                            hint="the chart sets TrainingRuntime/<name> or ClusterTrainingRuntime/<name>; re-render the hook")
        return cls(secrets, env.get("PREFLIGHT_CLAIM", "").strip(), int(raw), backend, (kind, runtime),
                   env.get("PREFLIGHT_JOB", ""), env.get("PREFLIGHT_SPEC_CHECKSUM", ""),
                   env.get("PREFLIGHT_CONFIG_CHECKSUM", ""), env.get("PREFLIGHT_QUEUE", "").strip(),
                   env.get("PREFLIGHT_POD_SECURITY") == "true", env.get("PREFLIGHT_RBAC", "").split(),
                   env.get("PREFLIGHT_CONFIGMAP", "").strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="the rendered job config (the hook's ConfigMap)")
    parser.add_argument("--chart", default=None, help=argparse.SUPPRESS)  # schema location for tests; images ship it


def check_config(path: str, request: Request, chart: str | None = None) -> tuple[list[Problem], str, str]:
    """Validator problems of the rendered config, its storage mode and its runId."""
    from ..validate import validate_config
    from ..validate.values import chart_dir, load_schema, load_yaml_file

    config = load_yaml_file(path, what="config file")
    problems = validate_config(config, load_schema(chart_dir(chart)),
                               extra_values={"job": {"numWorkers": request.num_workers}, "backend": request.backend})
    storage, run = config.get("storage"), config.get("run")
    mode = (storage.get("mode") if isinstance(storage, dict) else None) or "shared"
    return problems, mode, str((run.get("id") if isinstance(run, dict) else None) or "")


def _served(kube, group: str, version: str, plurals: list[str], hint: str) -> list[Problem]:
    """Problems unless discovery of group/version lists every one of ``plurals``."""
    from ..core.kube import Forbidden, NotFound

    what = f"GET /apis/{group}/{version}"
    try:
        resources = kube.call(what, kube.client.CustomObjectsApi(kube.api).get_api_resources, group, version)
    except NotFound:
        return [Problem("", f"the API {group}/{version} is not served: no {', '.join(plurals)} in this cluster", hint, ERROR, "cluster")]
    except Forbidden:
        return [Problem("", f"{what} is forbidden", "API discovery is normally allowed for all authenticated users (ClusterRole system:discovery); ask the cluster admin", ERROR, "cluster")]
    names = {r.name for r in (resources.resources or [])}
    missing = [p for p in plurals if p not in names]
    if missing:
        return [Problem("", f"{group}/{version} is served but has no {', '.join(missing)} (it has: {', '.join(sorted(names)) or 'nothing'})", hint, ERROR, "cluster")]
    log.info("API %s/%s serves %s", group, version, ", ".join(plurals))
    return []


def check_api(kube, request: Request | None = None) -> list[Problem]:
    from ..core.kube import job_api

    if request is None or request.backend == "pytorchjob":
        api = job_api("PyTorchJob")
        return _served(kube, api.group, api.version, [api.plural],
                       "install the Kubeflow Training Operator v1 (it serves the PyTorchJob CRD), or point the release at a cluster that has it")
    api = job_api("TrainJob")
    hint = "install Kubeflow Trainer v2 (v2.2 or later: it serves TrainJob and its runtimes, with JobSet), or use backend pytorchjob"
    return (_served(kube, api.group, api.version, [api.plural, RUNTIME_PLURALS[request.runtime[0]]], hint)
            + _served(kube, "jobset.x-k8s.io", "v1alpha2", ["jobsets"], hint))


def check_runtime(kube, request: Request) -> list[Problem]:
    """backend trainjob: the runtime exists (the trainer's webhook rejects a TrainJob without it) and runs a `node` job."""
    from ..core.kube import Forbidden, NotFound, job_api

    if request.backend != "trainjob":
        return []
    kind, name = request.runtime
    group, version = job_api("TrainJob").group, job_api("TrainJob").version
    custom = kube.client.CustomObjectsApi(kube.api)
    try:
        if kind == "TrainingRuntime":
            runtime = kube.call(f"GET trainingruntime {name}", custom.get_namespaced_custom_object,
                                group, version, kube.namespace, RUNTIME_PLURALS[kind], name)
        else:
            runtime = kube.call(f"GET clustertrainingruntime {name}", custom.get_cluster_custom_object,
                                group, version, RUNTIME_PLURALS[kind], name)
    except NotFound:
        where = f" in namespace {kube.namespace!r}" if kind == "TrainingRuntime" else ""
        return [Problem("trainjob.runtimeRef.name", f"{kind} {name!r} not found{where}: the trainer rejects a TrainJob whose runtime does not exist",
                        "create it first, or leave trainjob.runtimeRef.name empty so the chart renders its own", ERROR, "cluster")]
    except Forbidden:
        severity = ERROR if kind == "TrainingRuntime" else WARNING  # cluster-scoped: the hook's Role cannot grant it
        return [Problem("trainjob.runtimeRef.name", f"reading {kind} {name!r} is forbidden: not checked",
                        "the preflight Role allows get on that trainingruntime; a ClusterTrainingRuntime needs a ClusterRole the chart does not create",
                        severity, "cluster")]
    return _runtime_shape(kind, name, runtime, request.config_map)


def _runtime_shape(kind: str, name: str, runtime: dict, config_map: str) -> list[Problem]:
    """A runtime the TrainJob can run on: a `node` job with a container `node`, pods that mount this release's config."""
    jobs = {r.get("name"): r for r in (((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []}
    pod = ((((jobs.get("node") or {}).get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    if "node" not in [c.get("name") for c in pod.get("containers") or []]:
        return [Problem("trainjob.runtimeRef.name", f"{kind} {name!r} has no replicated job 'node' with a container 'node' (it has: {', '.join(map(str, jobs)) or 'none'})",
                        "the chart's TrainJob needs a runtime of the chart's shape: leave trainjob.runtimeRef.name empty, or see README (Choosing a backend)", ERROR, "cluster")]
    mounted = sorted({(v.get("configMap") or {}).get("name") for v in pod.get("volumes") or [] if v.get("configMap")})
    if config_map and config_map not in mounted:
        return [Problem("trainjob.runtimeRef.name", f"{kind} {name!r} runs its node pods with ConfigMap {', '.join(mounted) or 'none'}, "
                        f"not this release's config {config_map!r} (its name changes with the config): the pods would never start, "
                        "or train with another config",
                        "render the runtime for these values (helm template with the same values, trainjob.runtimeRef unset, "
                        "--show-only templates/trainingruntime.yaml) and apply it, or leave trainjob.runtimeRef.name empty", ERROR, "cluster")]
    log.info("%s %s is there (replicated jobs: %s)", kind, name, ", ".join(map(str, jobs)))
    return []


def check_secrets(kube, request: Request) -> list[Problem]:
    from ..core.kube import Forbidden, NotFound

    problems = []
    core = kube.client.CoreV1Api(kube.api)
    for name, keys in request.secrets.items():
        try:
            secret = kube.call(f"GET secret {name}", core.read_namespaced_secret, name, kube.namespace)
        except NotFound:
            problems.append(Problem("secrets", f"Secret {name!r} not found in namespace {kube.namespace!r}",
                                    f"create it (kubectl -n {kube.namespace} create secret generic {name} --from-literal={keys[0]}=...) "
                                    "or fix secrets.*.existingSecret", ERROR, "cluster"))
            continue
        except Forbidden:
            problems.append(Problem("secrets", f"reading Secret {name!r} is forbidden",
                                    f"the preflight Role must allow get on secrets with resourceNames [{name}] (the chart renders it; "
                                    "was the hook Role changed or an admission policy added?)", ERROR, "cluster"))
            continue
        present = set(secret.data or {}) | set(secret.string_data or {})
        del secret  # values are never logged or kept
        for key in keys:
            if key in present:
                log.info("Secret %s has key %s", name, key)
            else:
                problems.append(Problem("secrets", f"Secret {name!r} has no key {key!r} (its keys: {', '.join(sorted(present)) or 'none'})",
                                        "add the key to the Secret or set the matching secrets.*.*Key value to one of its keys", ERROR, "cluster"))
    return problems


def check_claim(kube, request: Request, mode: str) -> list[Problem]:
    from ..validate.rules import shared_storage_problem
    from ..core.kube import Forbidden, NotFound

    if not request.claim:
        return []
    name, ns = request.claim, kube.namespace
    core = kube.client.CoreV1Api(kube.api)
    try:
        pvc = kube.call(f"GET persistentvolumeclaim {name}", core.read_namespaced_persistent_volume_claim, name, ns)
    except NotFound:
        return [Problem("storage.existingClaim", f"PersistentVolumeClaim {name!r} not found in namespace {ns!r}",
                        "create the claim first, or leave storage.existingClaim empty so the chart creates one", ERROR, "cluster")]
    except Forbidden:
        return [Problem("storage.existingClaim", f"reading PersistentVolumeClaim {name!r} is forbidden",
                        f"the preflight Role must allow get on persistentvolumeclaims with resourceNames [{name}]", ERROR, "cluster")]
    problems: list[Problem] = []
    phase = (pvc.status.phase if pvc.status else None) or "Pending"
    modes = list((pvc.status.access_modes if pvc.status and pvc.status.access_modes else None) or pvc.spec.access_modes or [])
    if phase == "Pending":
        problems += _pending_claim(kube, name, pvc.spec.storage_class_name)
    elif phase != "Bound":
        problems.append(Problem("storage.existingClaim", f"PersistentVolumeClaim {name!r} is {phase}",
                                f"its volume is gone or failed: kubectl -n {ns} describe pvc {name}", ERROR, "cluster"))
    problem = shared_storage_problem(mode, request.num_workers, modes, "storage.existingClaim", claim=name, backend=request.backend)
    if problem:
        problems.append(problem)
    if not problems:
        log.info("claim %s is %s (%s)", name, phase, ", ".join(modes))
    return problems


def _pending_claim(kube, name: str, storage_class: str | None) -> list[Problem]:
    from ..core.kube import Forbidden, NotFound

    if not storage_class:
        return [Problem("storage.existingClaim", f"PersistentVolumeClaim {name!r} is Pending and has no storage class",
                        "bind it to a volume (or give it a storage class that provisions one)", ERROR, "cluster")]
    storage = kube.client.StorageV1Api(kube.api)
    try:
        sc = kube.call(f"GET storageclass {storage_class}", storage.read_storage_class, storage_class)
    except (Forbidden, NotFound) as exc:
        why = "cannot read" if isinstance(exc, Forbidden) else "cannot find"
        return [Problem("storage.existingClaim", f"PersistentVolumeClaim {name!r} is Pending; {why} StorageClass {storage_class!r} to tell whether it waits for its first pod",
                        "fine with volumeBindingMode WaitForFirstConsumer; otherwise check kubectl describe pvc", WARNING, "cluster")]
    if sc.volume_binding_mode == "WaitForFirstConsumer":
        log.info("claim %s is Pending until its first pod (StorageClass %s: WaitForFirstConsumer)", name, storage_class)
        return []
    return [Problem("storage.existingClaim", f"PersistentVolumeClaim {name!r} is Pending and its StorageClass {storage_class!r} binds immediately: no volume could be provisioned",
                    f"kubectl -n {kube.namespace} describe pvc {name}", ERROR, "cluster")]


@guarded("preflight")
def run(args: argparse.Namespace) -> int:
    from ..core.kube import Kube
    from . import cluster

    request = Request.from_env()
    problems, mode, run_id = check_config(args.config, request, args.chart)
    kube = Kube()
    problems += check_api(kube, request)
    problems += check_runtime(kube, request)
    problems += check_secrets(kube, request)
    problems += check_claim(kube, request, mode)
    problems += cluster.check_existing_job(kube, request.job, request.spec_checksum, request.config_checksum, run_id,
                                           request.backend)
    problems += cluster.check_queue(kube, request.queue, pytorchjob=request.backend == "pytorchjob")
    if request.pod_security:
        problems += cluster.check_pod_security(kube)
    for p in problems:
        (log.error if p.severity == ERROR else log.warning if p.severity == WARNING else log.info)(p.render())
    errors = [p.render() for p in problems if p.severity == ERROR]
    if errors:
        cluster.delete_own_rbac(kube, request.rbac)
        raise UserError(f"{len(errors)} problem(s): " + "; ".join(errors),
                        hint="fix them, then install/upgrade again (preflight.enabled=false skips this check)")
    log.info("preflight passed: config, %s API%s%s", "TrainJob" if request.backend == "trainjob" else "PyTorchJob",
             ", secrets" if request.secrets else "",
             f", claim {request.claim}" if request.claim else "")
    return 0
