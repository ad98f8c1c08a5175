"""Semantic rules: mistakes the schema cannot see, each reported as a :class:`Problem`.

Rules read a values-shaped mapping (the merged values, or the view of a rendered config
that the preflight hook builds: see :func:`llm_finetune.validate.config_values`). A rule whose inputs are
absent from that mapping is skipped, so the same rules serve ``llm-finetune validate`` and
the in-cluster preflight.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterator

from ..core.config import CAUSAL_LM
from ..core.contract import fsdp_problems, merge_problems, qlora_gpu_problems, task_problems
from ..core.defaults import V1_MODE
from ..core.problems import ERROR, NOTICE, WARNING, Problem
from .credentials import rule_credentials
from .envvars import rule_env
from .prompt import rule_prompt_template

MISSING: Any = object()
GPU_RESOURCE = "nvidia.com/gpu"
# A claim several pods mount: every pod mounts it read-write (both backends), so only ReadWriteMany
# works. ReadWriteOnce + ReadOnlyMany (the v1 SDK's default) does not: aws-ebs-csi-driver refuses
# MULTI_NODE_READER_ONLY (kubernetes-sigs/aws-ebs-csi-driver@v1.64.0:pkg/driver/controller.go:783-803,
# the PVC stays Pending), local-path-provisioner refuses anything but RWO/RWOP
# (rancher/local-path-provisioner@v0.0.37:provisioner.go:381-385), and a block volume attached
# read-only on another node does not see what the writer's node has in its page cache.
SHAREABLE_ACCESS_MODES = ("ReadWriteMany",)
PYTORCHJOB, TRAINJOB = "pytorchjob", "trainjob"  # values.backend
# Set by Kubeflow Trainer's torch plugin; its webhook rejects them in spec.trainer.env
# (kubeflow/trainer v2.3.0 pkg/constants/constants.go TorchRunReservedEnvNames).
TORCHRUN_RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
# Hub organisations whose models are gated (a token of an account that accepted the licence is needed).
GATED_HF_ORGS = ("meta-llama", "mistralai", "google", "bigcode", "tiiuae")

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_QUANTITY = re.compile(r"^([+-]?)(\d+\.?\d*|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_HF_REPO = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "m": Decimal("0.001"), "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def get(values: Any, path: str | list[str], default: Any = MISSING) -> Any:
    """``values`` at ``path`` ("a.b" or ["a", "b.c"]); ``default`` when absent or not a mapping on the way."""
    node = values
    for part in (path.split(".") if isinstance(path, str) else path):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity (``500m``, ``2Gi``, ``1e3``, ``4``) as a number; ValueError when malformed."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a quantity")
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    if not isinstance(value, str):
        raise ValueError(f"a {type(value).__name__} is not a quantity")
    m = _QUANTITY.fullmatch(value)
    if not m:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    sign, number, suffix = m.group(1), m.group(2), m.group(3) or ""
    try:
        amount = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from None
    factor = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else Decimal(_SUFFIX[suffix])
    return (-1 if sign == "-" else 1) * amount * factor


def is_dns1123_label(name: str) -> bool:
    return len(name) <= 63 and bool(_DNS1123_LABEL.match(name))


def is_dns1123_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(_DNS1123_SUBDOMAIN.match(name))


def trainer_resources(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """job.resources as {requests, limits}: the v1 shorthand {cpu, memory, gpu} means requests = limits."""
    res = get(values, "job.resources", {})
    if not isinstance(res, dict):
        return {"requests": {}, "limits": {}}
    if any(k in res for k in ("cpu", "memory", "gpu")):
        flat = {("nvidia.com/gpu" if k == "gpu" else k): v for k, v in res.items() if k in ("cpu", "memory", "gpu")}
        return {"requests": dict(flat), "limits": dict(flat)}
    return {"requests": res.get("requests") or {}, "limits": res.get("limits") or {}}


def gpus_per_pod(values: dict[str, Any]) -> int | None:
    """GPUs the trainer container gets (limits win, as Kubernetes uses them); None when unparseable."""
    res = trainer_resources(values)
    raw = res["limits"].get(GPU_RESOURCE, res["requests"].get(GPU_RESOURCE, 0))
    try:
        q = parse_quantity(raw)
    except ValueError:
        return None
    return int(q) if q == q.to_integral_value() else None


def claim_is_shared(mode: str, num_workers: int, backend: str, output_to_claim: bool) -> bool:
    """Whether several pods of the job mount the claim (see shared_storage_problem)."""
    return num_workers > 1 and (mode == "shared" or (backend == TRAINJOB and mode == "perPod" and output_to_claim))


def shared_storage_problem(mode: str, num_workers: int, access_modes: list[str], where: str,
                           claim: str = "", backend: str = PYTORCHJOB, output_to_claim: bool = True) -> Problem | None:
    """A claim several pods mount needs access modes that several nodes can use; None when fine.

    Used by the values rule (the claim the chart creates) and by the preflight (an existing claim).
    Every pod mounts it read-write: PyTorchJob's Workers (one template; a Master only in perPod
    mode, where it alone mounts the claim) and a TrainJob's node pods (an Indexed Job's one
    template, in shared mode and, for the output, in perPod mode): ReadWriteMany.
    """
    v2 = backend == TRAINJOB
    if not claim_is_shared(mode, num_workers, backend, output_to_claim):
        return None
    what = f"claim {claim!r}" if claim else "the claim"
    if v2 and mode == "perPod":
        fix = "use a ReadWriteMany claim, or storage.perPod.outputToClaim=false with output.export.uri, or backend pytorchjob (the claim on the Master only)"
    elif v2:
        fix = "use a ReadWriteMany claim, or set storage.mode=perPod with storage.perPod.outputToClaim=false"
    else:
        fix = ("use ReadWriteMany on a storage class that supports it (NFS, EFS, CephFS, Filestore...), "
               "or set storage.mode=perPod (works with any storage class)")
    if "ReadWriteOncePod" in access_modes:
        return Problem(where, f"{what} is ReadWriteOncePod: only one pod can mount it, but {num_workers} pods share it in {mode} mode",
                       fix, ERROR, "storage-sharing")
    if not any(m in access_modes for m in SHAREABLE_ACCESS_MODES):
        why = (f"backend trainjob mounts it read-write in all {num_workers} node pods (a TrainJob's nodes share one pod template)"
               if v2 else f"{num_workers} pods on different nodes mount it read-write in shared mode, which needs "
               "ReadWriteMany (ReadOnlyMany is refused by common drivers: aws-ebs-csi-driver, local-path-provisioner)")
        return Problem(where, f"{what} has access modes {access_modes or '[]'}: {why}", fix, ERROR, "storage-sharing")
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------
def rule_names(v: dict[str, Any]) -> Iterator[Problem]:
    label_hint = "use lowercase letters, digits and '-', starting and ending with a letter or digit (DNS-1123 label, at most 63 characters)"
    sub_hint = "use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (DNS-1123 subdomain)"
    # runId is checked by the schema alone (pattern, maxLength): one limit, which Helm applies too.
    for path in ("nameOverride", "fullnameOverride"):
        name = get(v, path, "")
        if isinstance(name, str) and name and not is_dns1123_label(name):
            yield Problem(path, f"{name!r} is not a valid Kubernetes name", label_hint, ERROR, "names")
    for path in ("storage.existingClaim", "secrets.hf.existingSecret", "secrets.s3.existingSecret",
                 "serviceAccount.name", "job.priorityClassName", "trainjob.runtimeRef.name"):
        name = get(v, path, "")
        if isinstance(name, str) and name and not is_dns1123_subdomain(name):
            yield Problem(path, f"{name!r} is not a valid Kubernetes object name", sub_hint, ERROR, "names")
    queue = get(v, "job.queueName", "")
    if isinstance(queue, str) and queue and not (len(queue) <= 63 and _LABEL_VALUE.match(queue)):
        yield Problem("job.queueName", f"{queue!r} is not a valid label value", "at most 63 letters, digits, '-', '_' or '.'", ERROR, "names")
    for path in ("secrets.hf.tokenKey", "secrets.s3.accessKeyIdKey", "secrets.s3.secretAccessKeyKey", "secrets.s3.sessionTokenKey"):
        key = get(v, path, "")
        if isinstance(key, str) and key and not _SECRET_KEY.match(key):
            yield Problem(path, f"{key!r} is not a valid Secret key", "use letters, digits, '-', '_' and '.'", ERROR, "names")


def rule_storage_sharing(v: dict[str, Any]) -> Iterator[Problem]:
    mode, workers = get(v, "storage.mode"), _int(get(v, "job.numWorkers"))
    backend, to_claim = get(v, "backend", PYTORCHJOB), get(v, "storage.perPod.outputToClaim", True) is not False
    if mode is MISSING or workers is None or not claim_is_shared(mode, workers, backend, to_claim):
        return
    claim = get(v, "storage.existingClaim", "")
    if claim:
        yield Problem("storage.existingClaim", f"{mode} mode with {workers} pods: the access modes of claim {claim!r} are not known here",
                      "it must be ReadWriteMany; the preflight hook checks it in the cluster", WARNING, "storage-sharing")
        return
    modes = get(v, "storage.accessModes")
    if isinstance(modes, list):  # absent in a config view (preflight): the created claim's modes are unknown there
        problem = shared_storage_problem(mode, workers, [str(m) for m in modes], "storage.accessModes",
                                         backend=backend, output_to_claim=to_claim)
        if problem:
            yield problem


def rule_backend(v: dict[str, Any]) -> Iterator[Problem]:
    """Values a backend cannot honour, and values that act differently on Kubeflow Trainer v2."""
    backend = get(v, "backend", PYTORCHJOB)
    if backend != TRAINJOB:
        for path in ("trainjob.runtimeRef.name", "trainjob.runtimeAnnotations"):
            if get(v, path, None):
                yield Problem(path, "does not apply to backend pytorchjob", "set backend=trainjob, or remove it", NOTICE, "backend")
        return
    if get(v, "job.restartPolicy") == "Always":
        yield Problem("job.restartPolicy", "Always does not apply to backend trainjob (it restarts a pod even after it succeeded)",
                      "use ExitCode (retry exit codes 128-255), OnFailure or Never", ERROR, "backend")
    clean = get(v, "job.runPolicy.cleanPodPolicy")
    if clean == "All":
        yield Problem("job.runPolicy.cleanPodPolicy", "All does not apply to backend trainjob: a finished JobSet deletes the pods "
                      "still running and keeps the finished ones (their logs)", "use Running (what it does), or backend pytorchjob", ERROR, "backend")
    elif clean == "None":
        yield Problem("job.runPolicy.cleanPodPolicy", "backend trainjob deletes the pods still running when the job ends (as Running): "
                      "None cannot keep them", "set Running to say so", NOTICE, "backend")
    if get(v, "job.runPolicy.ttlSecondsAfterFinished", None) is not None:
        yield Problem("job.runPolicy.ttlSecondsAfterFinished", "backend trainjob deletes the JobSet and its pods then; the TrainJob "
                      "and its conditions stay (helm test still reads them)", "", NOTICE, "backend")
    env = get(v, "job.env", [])
    reserved = sorted({e.get("name") for e in env if isinstance(e, dict)} & set(TORCHRUN_RESERVED_ENV)) if isinstance(env, list) else []
    if reserved:
        yield Problem("job.env", f"{', '.join(reserved)} are set by Kubeflow Trainer's torch plugin; its webhook rejects a TrainJob that sets them",
                      "remove them from job.env (job.numWorkers and job.nprocPerNode set them)", ERROR, "backend")


def _resource_maps(v: dict[str, Any]) -> Iterator[tuple[str, bool, dict[str, Any], dict[str, Any]]]:
    """(values path, shorthand?, requests, limits) of every container's resources."""
    for section in ("job", "initializer", "preflight", "tests"):
        res = get(v, f"{section}.resources")
        if not isinstance(res, dict):
            continue
        if section == "job" and any(k in res for k in ("cpu", "memory", "gpu")):
            yield "job.resources", True, {k: res[k] for k in ("cpu", "memory", "gpu") if k in res}, {}
            continue
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        yield f"{section}.resources", False, req if isinstance(req, dict) else {}, lim if isinstance(lim, dict) else {}


def rule_quantities(v: dict[str, Any]) -> Iterator[Problem]:
    for path in ("storage.size", "storage.perPod.size", "job.shmSizeLimit", "job.tmpSizeLimit"):
        raw = get(v, path)
        if raw is MISSING or raw in ("", None):
            continue
        try:
            if parse_quantity(raw) <= 0:
                yield Problem(path, f"{raw!r} must be larger than zero", "e.g. 10Gi", ERROR, "quantities")
        except ValueError as exc:
            yield Problem(path, str(exc), "write a size like 500Mi, 10Gi or 1Ti", ERROR, "quantities")
    for base, shorthand, requests, limits in _resource_maps(v):
        parsed: dict[str, dict[str, Decimal]] = {"requests": {}, "limits": {}}
        for kind, mapping in (("requests", requests), ("limits", limits)):
            for name, raw in mapping.items():
                path = f"{base}.{name}" if shorthand else f"{base}.{kind}.{name}"
                try:
                    q = parse_quantity(raw)
                except ValueError as exc:
                    yield Problem(path, str(exc), "write a quantity like 500m, 2, 8Gi", ERROR, "quantities")
                    continue
                if q < 0:
                    yield Problem(path, f"{raw!r} is negative", "resources must be zero or more", ERROR, "quantities")
                    continue
                parsed[kind][name] = q
                if (name == "gpu" or name.endswith("/gpu")) and q != q.to_integral_value():
                    yield Problem(path, f"{raw!r} is not a whole number of GPUs", "GPUs are requested in whole units", ERROR, "quantities")
        for name, req in parsed["requests"].items():
            lim = parsed["limits"].get(name)
            if lim is not None and req > lim:
                yield Problem(f"{base}.requests.{name}", f"request {requests[name]!r} is larger than the limit {limits[name]!r}",
                              "lower the request or raise the limit", ERROR, "quantities")
            if not shorthand and "/" in name and "." in name.split("/")[0] and name not in limits:
                yield Problem(f"{base}.requests.{name}", "an extended resource (GPU) needs a limit",
                              f"set {base}.limits.{name} (Kubernetes schedules extended resources by their limit)", ERROR, "quantities")


def rule_gpu_procs(v: dict[str, Any]) -> Iterator[Problem]:
    nproc_raw = get(v, "job.nprocPerNode")
    gpus = gpus_per_pod(v)
    if nproc_raw is MISSING or gpus is None or get(v, "job.resources") is MISSING:
        return
    nproc = _int(nproc_raw)
    if nproc is not None and gpus > 0 and nproc > gpus:
        yield Problem("job.nprocPerNode", f"{nproc} processes per pod but only {gpus} GPU(s) per pod: each process needs its own GPU",
                      f"set job.nprocPerNode to {gpus} (or \"auto\"), or request {nproc} GPUs", ERROR, "gpu-procs")
    elif nproc is not None and 0 < nproc < gpus:
        yield Problem("job.nprocPerNode", f"{nproc} process(es) per pod for {gpus} GPUs: {gpus - nproc} GPU(s) stay idle",
                      f"set job.nprocPerNode to {gpus} or \"auto\"", WARNING, "gpu-procs")
    elif str(nproc_raw) == "auto" and gpus == 0 and get(v, "backend", PYTORCHJOB) == TRAINJOB:
        yield Problem("job.nprocPerNode", "\"auto\" without GPUs: Kubeflow Trainer starts one process per requested CPU "
                      "(job.resources cpu; 1 without a request)", "request GPUs (job.resources.gpu) or set a number", NOTICE, "gpu-procs")
    elif str(nproc_raw) == "auto" and gpus == 0:
        yield Problem("job.nprocPerNode", "\"auto\" without GPUs starts one process per CPU core of the node",
                      "request GPUs (job.resources.gpu) or set a number", WARNING, "gpu-procs")


def _uri_problems(path: str, uri: str, *, export: bool) -> Iterator[Problem]:
    if uri.startswith("hf://"):
        repo = uri[len("hf://"):]
        if not _HF_REPO.match(repo) or ".." in repo or repo.endswith((".git", ".")):
            yield Problem(path, f"{uri!r} is not a Hugging Face repo id", "write hf://org/name (e.g. hf://Qwen/Qwen2.5-0.5B-Instruct)", ERROR, "uris")
    elif uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not _S3_BUCKET.match(bucket) or ".." in bucket:
            yield Problem(path, f"{bucket!r} is not a valid S3 bucket name", "write s3://bucket/prefix (bucket: 3-63 lowercase letters, digits, '.' or '-')", ERROR, "uris")
        elif export and not key.strip("/"):
            yield Problem(path, "exporting to the root of a bucket mixes runs", "write s3://bucket/prefix", WARNING, "uris")
    elif export:
        yield Problem(path, f"{uri!r}: export goes to s3:// or hf:// only", "write s3://bucket/prefix or hf://org/name; leave it empty to keep the output on the volume only", ERROR, "uris")
    elif uri.startswith("file://") or uri.startswith("/"):
        local = uri[len("file://"):] if uri.startswith("file://") else uri
        if not local.startswith("/"):
            yield Problem(path, f"{uri!r} is not an absolute path", "write file:///workspace/... or /workspace/...", ERROR, "uris")
        elif not (local == "/workspace" or local.startswith("/workspace/")):
            yield Problem(path, f"{local!r} is outside the volume (/workspace)", "the pods see the claim at /workspace: point at a path on it", WARNING, "uris")
    else:
        scheme = uri.split("://", 1)[0] + "://" if "://" in uri else uri
        yield Problem(path, f"unsupported source {scheme!r}", "use hf://org/name, s3://bucket/prefix, or a path on the volume (file:///workspace/... or /workspace/...)", ERROR, "uris")


def rule_uris(v: dict[str, Any]) -> Iterator[Problem]:
    for path in ("model.uri", "dataset.uri"):
        uri = get(v, path)
        if isinstance(uri, str) and uri:
            yield from _uri_problems(path, uri, export=False)
            local = uri.startswith(("file://", "/"))
            if local and get(v, "storage.mode") == "perPod":
                yield Problem(path, "a path on the volume does not exist in perPod mode: every pod's volume starts empty",
                              "use hf:// or s3://, or storage.mode=shared with the claim that holds it", ERROR, "uris")
    export = get(v, "output.export.uri")
    if isinstance(export, str) and export:
        yield from _uri_problems("output.export.uri", export, export=True)


def rule_secrets(v: dict[str, Any]) -> Iterator[Problem]:
    hf_secret, s3_secret = get(v, "secrets.hf.existingSecret", ""), get(v, "secrets.s3.existingSecret", "")
    if hf_secret and not get(v, "secrets.hf.tokenKey", ""):
        yield Problem("secrets.hf.tokenKey", f"is empty but secrets.hf.existingSecret is {hf_secret!r}", "name the key of the token in that Secret", ERROR, "secrets")
    if s3_secret:
        for key in ("accessKeyIdKey", "secretAccessKeyKey"):
            if not get(v, f"secrets.s3.{key}", ""):
                yield Problem(f"secrets.s3.{key}", f"is empty but secrets.s3.existingSecret is {s3_secret!r}", "name the key in that Secret", ERROR, "secrets")
    export = get(v, "output.export.uri", "")
    if isinstance(export, str) and export.startswith("hf://") and not hf_secret and get(v, "secrets.hf.existingSecret") is not MISSING:
        yield Problem("output.export.uri", "exporting to the Hugging Face Hub needs a write token, and secrets.hf.existingSecret is empty",
                      "create a Secret with a write token and set secrets.hf.existingSecret (and secrets.hf.tokenKey)", ERROR, "secrets")
    model = get(v, "model.uri", "")
    if (isinstance(model, str) and model.startswith("hf://") and not hf_secret and get(v, "secrets.hf.existingSecret") is not MISSING
            and model[len("hf://"):].split("/")[0] in GATED_HF_ORGS):
        yield Problem("secrets.hf.existingSecret", f"{model} is likely gated and no token is configured",
                      "accept the licence on the Hub and set secrets.hf.existingSecret to a Secret with your token", WARNING, "secrets")
    if s3_secret == "" and get(v, "secrets.s3.existingSecret") is not MISSING:
        for section in ("model", "dataset", "output.export"):
            uri, endpoint = get(v, f"{section}.uri", ""), get(v, f"{section}.s3.endpointUrl", "")
            if isinstance(uri, str) and uri.startswith("s3://") and endpoint:
                yield Problem("secrets.s3.existingSecret", f"{section}.uri uses the S3 endpoint {endpoint} without credentials",
                              "workload identity works with AWS only: set secrets.s3.existingSecret for MinIO/Ceph/SeaweedFS", WARNING, "secrets")
                break


def rule_method_and_task(v: dict[str, Any]) -> Iterator[Problem]:
    """The contract rules (:mod:`llm_finetune.core.contract`) on what the values hold; the trainer
    applies the same rules at start, with the GPUs it sees."""
    method = get(v, "training.method", None)
    gpus = gpus_per_pod(v) if get(v, "job.resources") is not MISSING else None
    yield from qlora_gpu_problems(method, gpus, no_gpu="job.resources requests none")
    yield from task_problems(get(v, "model.transformerType", CAUSAL_LM), packing=get(v, "data.packing") is True,
                             data_format=get(v, "data.format", "auto"))
    yield from merge_problems(method, get(v, "output.mergeAdapter") is True)
    yield from fsdp_problems(get(v, "training.args", None), method)
    if get(v, "model.trustRemoteCode") is True:
        yield Problem("model.trustRemoteCode", "runs Python code from the model repo in the trainer", "enable it only for repos you trust", WARNING, "security")


def rule_defaults(v: dict[str, Any]) -> Iterator[Problem]:
    """training.defaults v1 evaluates nothing unless asked (the recommended defaults evaluate at each checkpoint)."""
    args = get(v, "training.args", {})
    held_out = get(v, "data.evalSplit", "") or get(v, "data.evalRatio", 0)
    if get(v, "training.defaults", None) == V1_MODE and held_out and isinstance(args, dict) and args.get("eval_strategy") is None:
        yield Problem("training.args.eval_strategy", "with training.defaults v1 it is 'no' (as in the v1 reference): "
                      "the evaluation data of data.evalSplit/evalRatio is never used",
                      "set it to steps or epoch, or drop the evaluation data", NOTICE, "defaults")


def rule_shm(v: dict[str, Any]) -> Iterator[Problem]:
    """/dev/shm is memory-backed: what the trainer writes there is charged to its memory limit."""
    raw_shm, raw_mem = get(v, "job.shmSizeLimit"), trainer_resources(v)["limits"].get("memory")
    if raw_shm in (MISSING, None, "") or raw_mem in (None, ""):
        return
    try:
        shm, mem = parse_quantity(raw_shm), parse_quantity(raw_mem)
    except ValueError:
        return  # rule_quantities reports it
    if shm >= mem:
        yield Problem("job.shmSizeLimit", f"{raw_shm} of /dev/shm is not less than the trainer's memory limit {raw_mem}: "
                      "pages written there count against that limit, so filling it OOM-kills the trainer (exit 137)",
                      "lower job.shmSizeLimit (2Gi-4Gi is plenty for DataLoader workers and NCCL) or raise the memory limit",
                      WARNING, "shm")
    elif shm * 2 > mem:
        yield Problem("job.shmSizeLimit", f"{raw_shm} of /dev/shm is more than half the trainer's memory limit {raw_mem}: "
                      "what is written there counts against the limit", "lower job.shmSizeLimit or raise the memory limit",
                      WARNING, "shm")


def has_master(v: dict[str, Any]) -> bool:
    """The PyTorchJob's topology (llm-finetune.hasMaster): a Master only for perPod + the claim + several pods."""
    workers = _int(get(v, "job.numWorkers"))
    return (get(v, "backend", PYTORCHJOB) == PYTORCHJOB and get(v, "storage.mode") == "perPod"
            and get(v, "storage.perPod.outputToClaim") is True and workers is not None and workers > 1)


def rule_cluster_semantics(v: dict[str, Any]) -> Iterator[Problem]:
    """What the Training Operator v1.9 and Kueue do with these values on a real cluster (backend pytorchjob)."""
    if get(v, "backend", PYTORCHJOB) != PYTORCHJOB:
        return
    if has_master(v):
        yield Problem("storage.mode", "perPod mode with the claim and several pods needs a Master replica, so the Training "
                      "Operator adds its init-pytorch container to every Worker (image alpine:3.10 from Docker Hub, no "
                      "securityContext): a namespace enforcing Pod Security \"restricted\" rejects those pods, and an "
                      "air-gapped cluster cannot pull the image",
                      "have the operator started with --pytorch-init-container-template-file (a template with "
                      "allowPrivilegeEscalation: false and capabilities.drop: [ALL]) and --pytorch-init-container-image "
                      "(a mirror); or use shared mode with a ReadWriteMany claim, or storage.perPod.outputToClaim=false",
                      WARNING, "cluster")
    no_ledger = get(v, "storage.mode") == "perPod" and get(v, "storage.perPod.outputToClaim") is False
    if no_ledger and get(v, "job.restartPolicy") == "ExitCode" and get(v, "job.runPolicy.activeDeadlineSeconds", None) is None:
        yield Problem("job.runPolicy.activeDeadlineSeconds", "no claim keeps the pods' attempt count: a failure the operator retries (exit >= 128) "
                      "recreates the pod without limit", "set job.runPolicy.activeDeadlineSeconds (a time limit for the job)",
                      WARNING, "cluster")
    if get(v, "job.queueName", ""):
        yield Problem("job.queueName", "Kueue >= v0.19 no longer enables its kubeflow.org/pytorchjob integration by "
                      "default: without it the queue label is ignored and the job starts at once, outside the quota",
                      "make sure the Kueue Configuration's integrations.frameworks lists kubeflow.org/pytorchjob",
                      NOTICE, "cluster")


RULES: tuple[Callable[[dict[str, Any]], Iterator[Problem]], ...] = (
    rule_names, rule_storage_sharing, rule_backend, rule_quantities, rule_gpu_procs, rule_uris, rule_secrets,
    rule_method_and_task, rule_credentials, rule_env, rule_prompt_template, rule_defaults, rule_shm,
    rule_cluster_semantics,
)


def semantic_problems(values: dict[str, Any], *, introspect: bool = True) -> list[Problem]:
    problems: list[Problem] = []
    for rule in RULES:
        problems.extend(rule(values))
    if introspect:
        from .introspect import introspection_problems

        problems.extend(introspection_problems(values))
    return problems


__all__ = ["ERROR", "WARNING", "NOTICE", "MISSING", "Problem", "get", "parse_quantity", "semantic_problems",
           "shared_storage_problem", "gpus_per_pod", "trainer_resources"]
