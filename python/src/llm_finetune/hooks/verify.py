"""``llm-finetune verify``: the chart's ``helm test`` hook (trainer image).

After a run (``helm test <release> --logs``) it checks, and exits 1 with one clear line
(also in the termination log) when something is wrong:

1. **The job** ``$JOB_NAME`` (default: the config's ``run.name``) of kind ``$JOB_KIND``
   (``PyTorchJob``, the default, or ``TrainJob``) in ``$POD_NAMESPACE``: its conditions are
   logged; ``Failed`` fails with the operator's message; not ``Succeeded`` (PyTorchJob) /
   ``Complete`` (TrainJob) yet fails with "not finished". Not found (deleted by
   ``ttlSecondsAfterFinished``) is a warning: the output decides. Without any API access
   (outside a pod, no kubeconfig) the check is skipped with a warning.
2. **The output**: ``<paths.run>/output/manifest.json``, which the trainer writes last
   (format: ``llm_finetune.trainer.output``; used here: ``kind`` = ``adapter`` | ``model``,
   ``numLabels``, ``files`` = ``[{path, size, sha256}]``); every listed file is there with its
   size and (up to 2 GiB) its sha256.
3. **It loads** (CPU, local files only): an adapter's ``adapter_config.json`` through peft
   and its weights (safetensors, all finite); then, when the base model is on the volume
   (shared mode; in perPod mode each pod's copy is gone) and its weights fit the memory
   budget, base + adapter through peft and one forward pass with finite logits. A full
   model: its config, then the model and one forward pass when it fits. The budget is
   ``--max-load-gib`` (default: half the container's memory limit).

Contract with ``chart/templates/tests/verify.yaml``: ``--config`` = the job ConfigMap;
env ``POD_NAMESPACE``, ``JOB_NAME``, ``JOB_KIND``, ``HF_HUB_OFFLINE=1``; the claim mounted
read-only (``/workspace``, or ``/output`` in perPod mode); RBAC ``get`` on that one job.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..core.config import DEFAULT_CONFIG_PATH, JobConfig, load_config
from ..core.errors import ExternalError, UserError, guarded
from ..core.log import format_bytes
from ..core.volume import OUTPUT_MANIFEST, sha256_file

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin")
HASH_LIMIT_BYTES = 2 << 30  # larger files (full-model shards) are checked by size and by loading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="the job config (the chart's ConfigMap)")
    parser.add_argument("--max-load-gib", type=float, default=None,
                        help="load models whose weights are at most this size (default: half the memory limit)")


# ---------------------------------------------------------------------------
# 1. The job (PyTorchJob or TrainJob)
# ---------------------------------------------------------------------------
def check_job(name: str, kind: str = "PyTorchJob") -> str:
    """The job's state (its done condition, "missing", "unknown"); UserError when it failed or is not done."""
    from ..core.kube import Forbidden, Kube, NotFound, job_api

    api = job_api(kind)
    try:
        kube = Kube()
    except ExternalError as exc:
        log.warning("%s %s not checked: %s", kind, name, exc.message)
        return "unknown"
    custom = kube.client.CustomObjectsApi(kube.api)
    try:
        job = kube.call(f"GET {kind.lower()} {name}", custom.get_namespaced_custom_object,
                        api.group, api.version, kube.namespace, api.plural, name)
    except NotFound:
        log.warning("%s %s not found in namespace %s (deleted after it finished?): checking the output only", kind, name, kube.namespace)
        return "missing"
    except Forbidden:
        raise UserError(f"reading {kind} {name!r} is forbidden",
                        hint=f"the test Role must allow get on {api.plural}.{api.group} with resourceNames [{name}]") from None
    conditions = (job.get("status") or {}).get("conditions") or []
    for c in conditions:
        log.info("%s %s condition %s=%s %s%s", kind, name, c.get("type"), c.get("status"), c.get("reason") or "",
                 f": {c['message']}" if c.get("message") else "")
    current = {c.get("type"): c for c in conditions if c.get("status") == "True"}
    if "Failed" in current:
        c = current["Failed"]
        raise UserError(f"{kind} {name!r} failed: {c.get('message') or c.get('reason') or 'no message'}",
                        hint=api.logs.format(ns=kube.namespace, name=name))
    if api.done not in current:
        started = conditions or (job.get("status") or {}).get("jobsStatus") or (job.get("status") or {}).get("replicaStatuses")
        state = next((t for t in api.waiting if t in current), "running" if started else "not started")
        raise UserError(f"{kind} {name!r} has not {'succeeded' if api.done == 'Succeeded' else 'completed'} yet ({state})",
                        hint=f"run helm test after it finishes: kubectl -n {kube.namespace} get {kind.lower()} {name} -w")
    return api.done


# ---------------------------------------------------------------------------
# 2. The output
# ---------------------------------------------------------------------------
def read_output_manifest(output_dir: Path) -> dict[str, Any]:
    path = output_dir / OUTPUT_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no output manifest at {path}", hint="the run has not finished (the trainer writes it last), or the claim mounted here is not the run's") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"unreadable output manifest {path}: {exc}", hint="the output is damaged: rerun the job with a new runId") from None
    if not isinstance(manifest, dict) or manifest.get("kind") not in ("adapter", "model"):
        raise UserError(f"{path}: kind must be adapter or model, got {manifest.get('kind') if isinstance(manifest, dict) else manifest!r}",
                        hint="the output was not written by this trainer")
    for entry in manifest.get("files") or []:
        if not isinstance(entry, dict) or not entry.get("path"):
            continue
        f = output_dir / entry["path"]
        if not f.is_file():
            raise UserError(f"{f} is listed in the output manifest but missing", hint="the output is incomplete: rerun the job")
        if "size" in entry and f.stat().st_size != entry["size"]:
            raise UserError(f"{f} has {f.stat().st_size} bytes, the manifest says {entry['size']}", hint="the output is damaged: rerun the job")
        if entry.get("sha256") and f.stat().st_size <= HASH_LIMIT_BYTES and sha256_file(f) != entry["sha256"]:
            raise UserError(f"{f} does not match its sha256 in the manifest", hint="the output is damaged: rerun the job")
    return manifest


# ---------------------------------------------------------------------------
# 3. Loading
# ---------------------------------------------------------------------------
def memory_limit_bytes() -> int:
    """The container's memory limit (cgroup v2/v1), else the machine's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def weights_size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def _check_tensors(path: Path) -> int:
    """Load a safetensors file; every tensor must be finite. Returns the number of tensors."""
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any decoding error means a damaged file
        raise UserError(f"cannot load {path}: {exc}", hint="the output is damaged: rerun the job") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{path}: tensor {name} has NaN/Inf values", hint="training diverged: lower the learning rate and rerun")
    return len(tensors)


def _auto_class(cfg: JobConfig):
    import transformers

    name = cfg.model.transformer_type
    cls = getattr(transformers, name, None)
    if cls is None:
        raise UserError(f"unknown transformers class {name!r}", field="model.transformerType")
    return cls


def _forward(model, tokenizer_dirs: list[Path], cfg: JobConfig) -> None:
    import torch
    from transformers import AutoTokenizer

    for d in tokenizer_dirs:
        if (d / "tokenizer_config.json").is_file() or (d / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True, trust_remote_code=cfg.model.trust_remote_code)
            break
    else:
        log.info("no tokenizer saved: forward pass skipped")
        return
    batch = tokenizer(["The quick brown fox"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    if not torch.isfinite(logits).all():
        raise UserError("the fine-tuned model produces NaN/Inf logits", hint="training diverged: lower the learning rate and rerun")
    log.info("forward pass OK: logits %s", tuple(logits.shape))


def _model_kwargs(cfg: JobConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": cfg.model.trust_remote_code}
    num_labels = manifest.get("numLabels") or cfg.model.num_labels
    if cfg.task == "sequence-classification" and num_labels:
        kwargs["num_labels"] = num_labels
    return kwargs


def check_loads(cfg: JobConfig, output_dir: Path, manifest: dict[str, Any], budget: int) -> None:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # peft imports it; its CPU warning is noise here
    if manifest["kind"] == "adapter":
        check_adapter_loads(cfg, output_dir, manifest, budget)
    else:
        check_model_loads(cfg, output_dir, manifest, budget)


def check_adapter_loads(cfg: JobConfig, output_dir: Path, manifest: dict[str, Any], budget: int) -> None:
    """The adapter's config and weights; onto the base model and through a forward pass when it fits the budget."""
    from peft import PeftConfig

    try:
        peft_config = PeftConfig.from_pretrained(str(output_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read the adapter config in {output_dir}: {exc}", hint="the output is damaged: rerun the job") from None
    weights = output_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"no adapter weights at {weights}", hint="the output is incomplete: rerun the job")
    n = _check_tensors(weights)
    log.info("adapter %s (%s) loads: %d tensors, all finite", type(peft_config).__name__, getattr(peft_config.peft_type, "value", peft_config.peft_type), n)
    base = Path(cfg.model_dir)
    if not (base / "config.json").is_file():
        log.warning("base model not on this volume (%s; perPod mode keeps it per pod): adapter checked without it", base)
        return
    size = weights_size(base)
    if size > budget:
        log.warning("base model weights (%s) exceed the load budget (%s): not loaded (--max-load-gib)", format_bytes(size), format_bytes(budget))
        return
    from peft import PeftModel

    try:
        model = _auto_class(cfg).from_pretrained(str(base), **_model_kwargs(cfg, manifest))
        model = PeftModel.from_pretrained(model, str(output_dir), is_trainable=False)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"the adapter does not load onto the base model {base}: {type(exc).__name__}: {exc}",
                        hint="was the base model on the volume replaced? rerun the job") from None
    model.eval()
    log.info("base model + adapter load (%s)", format_bytes(size))
    _forward(model, [output_dir, base], cfg)


def check_model_loads(cfg: JobConfig, output_dir: Path, manifest: dict[str, Any], budget: int) -> None:
    """A full fine-tune: its config, weights, and a forward pass when it fits the budget (headers only otherwise)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(output_dir), local_files_only=True, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read the model config in {output_dir}: {exc}", hint="the output is damaged: rerun the job") from None
    size = weights_size(output_dir)
    if size == 0:
        raise UserError(f"no model weights in {output_dir}", hint="the output is incomplete: rerun the job")
    if size > budget:
        for f in sorted(output_dir.glob("*.safetensors")):
            from safetensors import safe_open

            with safe_open(str(f), "pt") as fh:  # headers only: the file is complete and parseable
                fh.keys()
        log.warning("model weights (%s) exceed the load budget (%s): headers checked, not loaded", format_bytes(size), format_bytes(budget))
        return
    try:
        model = _auto_class(cfg).from_pretrained(str(output_dir), **_model_kwargs(cfg, manifest))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"the model in {output_dir} does not load: {type(exc).__name__}: {exc}", hint="the output is damaged: rerun the job") from None
    model.eval()
    log.info("model loads (%s)", format_bytes(size))
    _forward(model, [output_dir], cfg)


@guarded("verify")
def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    job = os.environ.get("JOB_NAME") or cfg.run.name
    kind = os.environ.get("JOB_KIND") or "PyTorchJob"
    state = check_job(job, kind)
    output_dir = Path(cfg.output_dir)
    manifest = read_output_manifest(output_dir)
    log.info("output manifest: %s (%s)", output_dir / OUTPUT_MANIFEST, manifest["kind"])
    budget = int(args.max_load_gib * 2**30) if args.max_load_gib is not None else memory_limit_bytes() // 2
    check_loads(cfg, output_dir, manifest, budget)
    log.info("verify passed: %s %s %s, %s at %s loads", kind, job, state, manifest["kind"], output_dir)
    return 0


__all__ = ["run", "add_arguments", "check_job", "read_output_manifest", "check_loads"]
