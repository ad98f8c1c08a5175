"""The prepared datasets cached on the volume, keyed by a fingerprint of everything that shapes them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ...core.config import JobConfig, to_dict
from ...core.retry import describe
from ...core.version import __version__
from ...core.volume import read_manifest, sha256_file, walk_files

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
                   "added_tokens.json")


def fingerprint(cfg: JobConfig, extra: dict[str, Any]) -> str:
    """Identity of the prepared data: dataset version, tokenizer files, data config, task, versions."""
    import datasets
    import transformers
    import trl

    manifest = read_manifest(cfg.dataset_dir) if os.path.isdir(cfg.dataset_dir) else None
    if manifest:
        source = {k: manifest.get(k) for k in ("source", "revision", "sourceKey", "files", "layout", "splits")}
    else:
        root = Path(cfg.dataset_dir)
        names = walk_files(root) if root.is_dir() else ["."]
        source = [(n, (root / n).stat().st_size, (root / n).stat().st_mtime_ns) for n in names if (root / n).exists()]
    model_dir = Path(cfg.model_dir)
    tokenizer = {n: sha256_file(model_dir / n) for n in TOKENIZER_FILES if (model_dir / n).is_file()}
    identity = {"source": source, "tokenizer": tokenizer, "data": to_dict(cfg.data), "task": cfg.task,
                "numLabels": cfg.model.num_labels, "versions": [__version__, trl.__version__, transformers.__version__,
                                                                 datasets.__version__], **extra}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(cfg: JobConfig, fp: str) -> Path:
    return Path(cfg.paths.cache) / f"{cfg.task}-{fp[:16]}"


def load_cached(path: Path):
    """(train, eval, info) from a complete cache folder, or None."""
    import datasets

    info_file = path / "info.json"
    if not info_file.is_file():
        return None
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
        train = datasets.load_from_disk(str(path / "train"))
        evalds = datasets.load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt
        log.warning("ignoring damaged data cache %s: %s", path, describe(exc))
        return None
    return train, evalds, info


def save_cache(path: Path, train, evalds, info: dict[str, Any]) -> None:
    """Write the prepared datasets to ``path`` atomically (temp folder + rename); never fatal."""
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        train.save_to_disk(str(tmp / "train"))
        if evalds is not None:
            evalds.save_to_disk(str(tmp / "eval"))
        (tmp / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "info.json").is_file():
                raise
            # another node on the same shared claim cached the same fingerprint first
            log.info("prepared data already cached in %s by another node", path)
            return
        log.info("prepared data cached in %s", path)
    except OSError as exc:
        log.warning("could not cache the prepared data in %s (%s): it is rebuilt next time", path, describe(exc))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
