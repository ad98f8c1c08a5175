"""How a dataset directory on the volume is loaded: the one answer shared by initializer and trainer.

The initializer records the layout in the dataset's completion manifest; for a dataset
given as a local path (no manifest) it is inferred the same way. The trainer calls
:func:`dataset_load_spec` (or :func:`load_dataset_dict`) and never guesses on its own.

Layouts:

* ``save_to_disk`` — a directory written by ``Dataset.save_to_disk`` (``state.json``, the
  HF split materialization of the v1 reference; one Dataset = the ``train`` split) or
  ``DatasetDict.save_to_disk`` (``dataset_dict.json``; its splits).
  Load: ``datasets.load_from_disk(path)``.
* ``files`` — data files (jsonl/json/csv/parquet/arrow) with splits named after files or
  folders as ``datasets`` does: ``data/<split>-00000-of-00001.parquet``, a ``train``/
  ``test``/``validation`` keyword (aliases: training; valid, val, dev; testing, eval,
  evaluation) in a folder or file name, and otherwise everything is ``train``.
  Load: ``datasets.load_dataset(builder, data_files={split: [files]})`` where the builder
  is ``json`` for json and jsonl, else the file type.
* ``snapshot`` — a Hub dataset repo's data files and README.md at one commit, with the split
  (and config) the user asked for (``dataset.split``/``dataset.name``) recorded as ``select``.
  Load: ``datasets.load_dataset(path, name, split=split)`` — the v1 reference's
  ``load_dataset(repo, name, split=...)`` on the verified local copy; one Dataset = ``train``.

This module imports nothing heavy (no boto3, huggingface_hub or datasets at import time).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from .errors import UserError
from .volume import read_manifest
from .volume import walk_files

log = logging.getLogger(__name__)

FILE_TYPES = ("jsonl", "json", "csv", "parquet", "arrow")
EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet", "arrow": "arrow"}
# Hub dataset files fetched by default (data files only, any folder depth).
DEFAULT_DATA_PATTERNS = ("*.parquet", "*.jsonl", "*.json", "*.csv", "*.arrow")
# JSON files that describe a dataset rather than hold rows.
METADATA_FILES = {"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json"}

_SEP = r"[-._ 0-9]"
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_SHARDED = re.compile(r"(?:^|/)data/(?P<split>[^/]+?)-\d{5}-of-\d{5}[^/]*$")


def _keyword_split(text: str) -> str | None:
    for split, words in SPLIT_KEYWORDS.items():
        for word in words:
            if re.search(rf"(?:^|{_SEP}){word}(?:{_SEP}|$)", text, re.IGNORECASE):
                return split
    return None


def split_of(relpath: str) -> str | None:
    """The split a data file belongs to by ``datasets``' naming conventions, or None."""
    m = _SHARDED.search(relpath)
    if m:
        return m.group("split")
    *dirs, name = relpath.split("/")
    for d in dirs:
        split = _keyword_split(d)
        if split:
            return split
    return _keyword_split(name)


def file_type_of(path: str) -> str | None:
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


def _data_files(names: list[str], file_type: str) -> list[str]:
    out = []
    for n in names:
        base = n.rsplit("/", 1)[-1]
        if base.startswith(".") or base in METADATA_FILES or base.lower() in ("readme.md", ".gitattributes"):
            continue
        ext_type = file_type_of(n)
        if ext_type is not None or (file_type and not os.path.splitext(base)[1]):
            out.append(n)
    return out


def infer_files_layout(names: list[str], *, file_type: str = "", where: str) -> dict[str, Any]:
    """Manifest fields (``layout``, ``fileType``, ``splits``) for data files given by relative ``names``."""
    if file_type and file_type not in FILE_TYPES:
        raise UserError(f"unknown file type {file_type!r}", field="dataset.fileType",
                        hint=f"use one of {', '.join(FILE_TYPES)}")
    files = _data_files(names, file_type)
    if not files:
        raise UserError(f"no data files (jsonl, json, csv, parquet, arrow) in {where}",
                        hint="point dataset.uri at the data, check dataset.allowPatterns, or set dataset.fileType")
    if not file_type:
        types = {file_type_of(f) for f in files}
        builders = {BUILDERS[t] for t in types if t}
        if len(builders) > 1:
            raise UserError(f"mixed data file types ({', '.join(sorted(t for t in types if t))}) in {where}",
                            hint="keep one type, or pick one with dataset.allowPatterns (e.g. ['*.parquet'])")
        file_type = "jsonl" if "jsonl" in types else types.pop()
    splits: dict[str, list[str]] = {}
    unmatched = []
    for f in sorted(files):
        split = split_of(f)
        (splits.setdefault(split, []) if split else unmatched).append(f)
    if not splits:
        splits = {"train": unmatched}
    elif unmatched:
        log.warning("%s: ignoring %d data file(s) whose names match no split (%s)", where, len(unmatched),
                    ", ".join(unmatched[:3]) + (", ..." if len(unmatched) > 3 else ""))
    return {"layout": "files", "fileType": file_type, "splits": splits}


def layout_of_names(names: list[str], *, file_type: str = "", where: str) -> dict[str, Any]:
    """Manifest fields for a dataset made of the files ``names`` (relative paths): a
    ``save_to_disk`` folder when its markers are there, else data files."""
    present = set(names)
    if "dataset_dict.json" in present:
        splits = sorted({n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/state.json")})
        if not splits:
            raise UserError(f"{where} has dataset_dict.json but no split folders",
                            hint="rewrite it with DatasetDict.save_to_disk")
        return {"layout": "save_to_disk", "fileType": "arrow", "splits": {s: [s] for s in splits}}
    if "state.json" in present and "dataset_info.json" in present:
        return {"layout": "save_to_disk", "fileType": "arrow", "splits": {"train": ["."]}}
    return infer_files_layout(names, file_type=file_type, where=where)


def snapshot_layout(files_layout: dict[str, Any], *, split: str, name: str = "") -> dict[str, Any]:
    """Manifest fields of a Hub dataset snapshot from which the trainer selects ``split`` of config ``name``."""
    return {**files_layout, "layout": "snapshot", "select": {"split": split, "name": name}}


def infer_layout(path: str | os.PathLike[str], *, file_type: str = "") -> dict[str, Any]:
    """Layout of a dataset directory or single file that has no manifest (a local-path dataset)."""
    p = Path(path)
    if p.is_file():
        if not file_type and file_type_of(p.name) is None:
            raise UserError(f"cannot tell the file type of {p}", field="dataset.fileType",
                            hint=f"use a {'/'.join(EXTENSIONS)} extension or set dataset.fileType")
        return {"layout": "files", "fileType": file_type or file_type_of(p.name), "splits": {"train": ["."]}}
    if not p.is_dir():
        raise UserError(f"{p} does not exist", field="dataset.uri",
                        hint="point it at a dataset directory or file on the volume")
    return layout_of_names(walk_files(p), file_type=file_type, where=str(p))


def dataset_load_spec(path: str | os.PathLike[str], *, file_type: str = "") -> dict[str, Any]:
    """How to load the dataset at ``path`` (a directory the initializer filled, or a local path).

    Returns ``{"layout", "path", "fileType", "splits"}`` and, for ``layout == "files"``,
    ``"builder"`` (a ``datasets`` builder name) and ``"dataFiles"`` (``{split: [absolute paths]}``).
    The manifest's recorded layout is used when present; otherwise it is inferred.
    """
    p = Path(path)
    manifest = read_manifest(p) if p.is_dir() else None
    if manifest and manifest.get("kind") == "dataset" and manifest.get("layout"):
        fields = {k: manifest[k] for k in ("layout", "fileType", "splits", "select") if k in manifest}
    else:
        fields = infer_layout(p, file_type=file_type)
    spec: dict[str, Any] = {"path": str(p), **fields}
    if spec["layout"] == "files":
        spec["builder"] = BUILDERS[spec["fileType"]]
        spec["dataFiles"] = {split: [str(p if f == "." else p / f) for f in files]
                             for split, files in spec["splits"].items()}
    return spec


def load_dataset_dict(path: str | os.PathLike[str], *, file_type: str = "", **kwargs: Any):
    """Load the dataset at ``path`` as a ``datasets.DatasetDict`` following :func:`dataset_load_spec`.

    ``kwargs`` go to ``datasets.load_dataset`` for the ``files`` and ``snapshot`` layouts; in a pod pass
    ``cache_dir`` (e.g. under ``paths.cache``): the root filesystem is read-only.
    """
    import datasets

    spec = dataset_load_spec(path, file_type=file_type)
    if spec["layout"] == "save_to_disk":
        loaded = datasets.load_from_disk(spec["path"])
    elif spec["layout"] == "snapshot":
        select = spec["select"]
        try:
            loaded = datasets.load_dataset(spec["path"], select.get("name") or None, split=select["split"], **kwargs)
        except ValueError as exc:  # an unknown split or config: say which field to fix
            raise UserError(f"cannot select split {select['split']!r}"
                            f"{' of config ' + repr(select['name']) if select.get('name') else ''} in {path}: {exc}",
                            field="dataset.split" if "split" in str(exc).lower() else "dataset.name",
                            hint="check dataset.name (config) and dataset.split against the dataset card") from None
    else:
        return datasets.load_dataset(spec["builder"], data_files=spec["dataFiles"], **kwargs)
    return datasets.DatasetDict({"train": loaded}) if isinstance(loaded, datasets.Dataset) else loaded
