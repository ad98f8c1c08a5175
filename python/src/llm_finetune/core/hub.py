"""Hugging Face Hub helpers shared by the initializer (downloads) and the trainer (export).

The token comes from ``HF_TOKEN`` only (a Kubernetes Secret); it is never part of the config.
huggingface_hub is imported inside the functions that need it.
"""

from __future__ import annotations

import os
import re

from .errors import ConfigError, UserError
from .retry import describe

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TOKEN_HINT = "check the token in the Secret named by secrets.hf.existingSecret (an export needs write access)"


def parse_hf_uri(uri: str, field: str) -> str:
    """``hf://org/name`` -> ``org/name``."""
    repo_id = uri[len("hf://"):].strip("/") if uri.startswith("hf://") else ""
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ConfigError(f"{uri!r} is not a Hub repo URI", field=field, hint="write hf://org/name")
    return repo_id


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


def is_transport_error(exc: BaseException) -> bool:
    """httpx(2) transport errors (connect/read/protocol), without importing a specific httpx."""
    return any(c.__name__ == "TransportError" and c.__module__.startswith("httpx") for c in type(exc).__mro__)


def classify_error(exc: BaseException, *, uri: str, field: str, revision: str = "") -> BaseException | None:
    """Sort a huggingface_hub exception for :class:`~llm_finetune.core.retry.RetryPolicy`.

    ``field`` is the config section of ``uri`` (``model``, ``dataset``, ``output.export``).
    Returns None when it is transient (connection trouble, 429, 5xx), a ``UserError`` naming
    the field and the fix when it is permanent (gated, missing repo or revision, refused
    token, offline), or ``exc`` itself (or its cause) when it is unexpected.
    """
    from huggingface_hub import errors as he

    if isinstance(exc, he.GatedRepoError):
        if not hf_token():
            return UserError(f"{uri} is a gated repo and no token is set", field=f"{field}.uri",
                             hint="set secrets.hf.existingSecret to a Secret with a token that has access")
        return UserError(f"{uri} is a gated repo and the token (HF_TOKEN) was refused ({http_status(exc)})",
                         field=f"{field}.uri",
                         hint="request access on the Hub, or put a token with access in secrets.hf.existingSecret")
    if isinstance(exc, he.RevisionNotFoundError):
        return UserError(f"revision {revision!r} not found in {uri}", field=f"{field}.revision",
                         hint="use an existing branch, tag or commit sha")
    if isinstance(exc, he.RepositoryNotFoundError):
        return UserError(f"{uri} not found (or private)", field=f"{field}.uri",
                         hint="check the repo id; for a private repo set secrets.hf.existingSecret (HF_TOKEN)")
    if isinstance(exc, he.HfHubHTTPError):
        return _http_error(exc, he, uri=uri, field=field)
    if isinstance(exc, he.OfflineModeIsEnabled):
        return UserError(f"{uri} is not on the volume and offline mode is on", field="download.offline",
                         hint="run once with download.offline: false")
    if isinstance(exc, he.HFValidationError):
        return UserError(f"{uri}: {describe(exc)}", field=f"{field}.uri")
    if isinstance(exc, he.LocalEntryNotFoundError):
        # snapshot_download hides the network error behind "not found locally".
        cause = exc.__cause__ or exc.__context__
        return classify_error(cause, uri=uri, field=field, revision=revision) if cause is not None else None
    if isinstance(exc, (ConnectionError, TimeoutError)) or is_transport_error(exc):
        return None
    return exc


def _http_error(exc: BaseException, he, *, uri: str, field: str) -> BaseException | None:
    status = http_status(exc)
    if status == 429 or status >= 500:
        return None
    if status in (401, 403):
        return UserError(f"access to {uri} refused ({status})", field=f"{field}.uri", hint=_TOKEN_HINT)
    if isinstance(exc, he.RemoteEntryNotFoundError):
        return UserError(f"a file of {uri} is missing on the Hub: {describe(exc)}", field=f"{field}.uri")
    return UserError(f"the Hub refused a request for {uri}: {describe(exc)}", field=f"{field}.uri",
                     hint="check the repo id and the token's access to it")
