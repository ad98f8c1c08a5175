"""Run a row function over a dataset, its cache file in node-local scratch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...core.errors import FinetuneError, UserError
from ...core.retry import describe


def map_rows(ds, fn, kwargs, scratch: Path, tag: str, **extra):
    """``ds.map(fn, fn_kwargs=kwargs)`` replacing the columns; a row that does not fit is a UserError."""
    # An explicit cache file in scratch: a dataset loaded from a read-only volume cannot take
    # datasets' cache files next to it; later maps (TRL's) follow this file into scratch.
    scratch.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([ds._fingerprint, tag, fn.__name__, kwargs, sorted(extra)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:20]
    try:
        return ds.map(fn, fn_kwargs=kwargs, remove_columns=ds.column_names, cache_file_name=str(scratch / f"{tag}-{key}.arrow"),
                      desc=None, **extra)
    except FinetuneError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"cannot convert the dataset rows ({tag}): {describe(exc)}", field="data.format",
                        hint="check that every row has the configured columns with the right types") from None
