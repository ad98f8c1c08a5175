"""A model or dataset already on the volume (``file:///workspace/x`` or ``/workspace/x``).

Nothing is copied and nothing is written into it: the path is checked (a model folder has
``config.json`` and weights; a dataset has a layout the trainer can load, see
:mod:`~llm_finetune.core.layout`) and the trainer uses it in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.config import local_source_path
from ..core.errors import InternalError, UserError
from ..core.layout import dataset_load_spec
from ..core.volume import walk_files
from .base import Provider, check_model_files


class LocalProvider(Provider):
    schemes = ("file",)

    def in_place(self) -> Path:
        req = self.request
        path = Path(local_source_path(req.uri) or req.uri)
        if not path.exists():
            raise UserError(f"{path} does not exist", field=f"{req.field}.uri",
                            hint="put the files on the volume first, or use hf://org/name or s3://bucket/prefix")
        if req.kind == "model":
            if not path.is_dir():
                raise UserError(f"{path} is not a directory", field="model.uri",
                                hint="point it at a folder written by save_pretrained")
            check_model_files(walk_files(path), where=str(path))
            return path
        spec = dataset_load_spec(path, file_type=req.file_type)
        if spec["layout"] == "files":
            files = [Path(f) for fs in spec["dataFiles"].values() for f in fs]
            if not any(f.stat().st_size > 0 for f in files):
                raise UserError(f"the data files in {path} are empty", field="dataset.uri")
        return path

    def fetch(self, target: Path) -> dict[str, Any]:  # pragma: no cover - in_place() always answers
        raise InternalError("a local path is used in place, never fetched")
