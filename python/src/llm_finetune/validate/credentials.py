"""Credentials pasted into values: found anywhere, never echoed.

Values are rendered in clear text into the PyTorchJob, the ConfigMaps and the hooks' env, so a
Hugging Face token (``hf_`` + 30 or more letters/digits) or an AWS access key id (``AKIA``/
``ASIA`` + 16) anywhere in them, key or value, is an error; so is an AWS secret access key (40
characters of base64) in a field that names a key of a Secret. The chart refuses the same:
the template ``llm-finetune.checks`` (chart/templates/_helpers.tpl) with :data:`CREDENTIAL_RE`
itself (tests/validate/test_credentials.py compares them), and the schema's ``secretKeyName``
for the key-name fields. Every message the validator prints goes through :func:`redact`.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from ..core.problems import ERROR, Problem

# Go RE2 syntax (no lookbehind): the chart's template uses this exact expression.
HF_TOKEN_RE = r"hf_[A-Za-z0-9]{30,}"
CREDENTIAL_RE = HF_TOKEN_RE + r"|(^|[^A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}([^A-Z0-9]|$)"
AWS_SECRET_RE = r"^[A-Za-z0-9/+]{40}$"
_CREDENTIAL, _HF, _AWS_SECRET = re.compile(CREDENTIAL_RE), re.compile(HF_TOKEN_RE), re.compile(AWS_SECRET_RE)
_REDACT = re.compile(HF_TOKEN_RE + r"|(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"
                     r"|(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
# Fields that name a key of a Secret (beside env valueFrom.*KeyRef.key).
KEY_NAME_FIELDS = ("secrets.hf.tokenKey", "secrets.s3.accessKeyIdKey", "secrets.s3.secretAccessKeyKey",
                   "secrets.s3.sessionTokenKey")


def looks_like_credential(text: str) -> bool:
    return bool(_CREDENTIAL.search(text))


def redact(text: str) -> str:
    """``text`` with every credential-looking part cut to its first 4 characters."""
    return _REDACT.sub(lambda m: m.group(0)[:4] + "…(redacted)", text)


def credential_paths(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, the text) of every string or key in ``value`` that looks like a credential."""
    if isinstance(value, dict):
        for key, child in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and looks_like_credential(key):
                yield where, key
            yield from credential_paths(child, where)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from credential_paths(child, f"{path}[{i}]")
    elif isinstance(value, str) and looks_like_credential(value):
        yield path, value


def _key_name_fields(values: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for dotted in KEY_NAME_FIELDS:
        node: Any = values
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        yield dotted, node
    for section in ("job", "initializer"):
        env = values[section].get("env") if isinstance(values.get(section), dict) else None
        for i, entry in enumerate(env if isinstance(env, list) else []):
            source = entry.get("valueFrom") if isinstance(entry, dict) else None
            for ref in ("secretKeyRef", "configMapKeyRef"):
                if isinstance(source, dict) and isinstance(source.get(ref), dict):
                    yield f"{section}.env[{i}].valueFrom.{ref}.key", source[ref].get("key")


def _fix(path: str, hub: bool) -> str:
    if path.startswith(("job.env", "initializer.env")):
        return "put it in a Secret and reference it: valueFrom.secretKeyRef {name: <secret>, key: <key>}"
    if hub:
        return ("put it in a Secret (kubectl create secret generic hf-token --from-literal=token=...) and set "
                "secrets.hf.existingSecret: hf-token (secrets.hf.tokenKey names the key in it: token)")
    return ("put it in a Secret (kubectl create secret generic s3-credentials --from-literal=AWS_ACCESS_KEY_ID=... "
            "--from-literal=AWS_SECRET_ACCESS_KEY=...) and set secrets.s3.existingSecret: s3-credentials")


def rule_credentials(values: dict[str, Any]) -> Iterator[Problem]:
    """A credential anywhere in values would be rendered in clear text: an error that names the field, never the value."""
    for path, text in credential_paths(values):
        hub = bool(_HF.search(text))
        what = "a Hugging Face token" if hub else "an AWS access key id"
        yield Problem(path, f"looks like {what}: values are rendered in clear text into the PyTorchJob, ConfigMaps and "
                            "hook env", _fix(path, hub), ERROR, "credentials")
    for path, value in _key_name_fields(values):
        if isinstance(value, str) and _AWS_SECRET.match(value):
            yield Problem(path, "looks like an AWS secret access key, not the name of a key in a Secret",
                          _fix(path, False), ERROR, "credentials")
