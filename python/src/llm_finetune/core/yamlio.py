"""The one YAML reader of the package, in two flavours.

* Job config (``config.yaml``, the default): ``yaml.safe_load`` that also reads YAML 1.2
  exponent floats such as ``2e-05``. Helm writes a float like 2e-5 as ``2e-05`` (no dot),
  which PyYAML's YAML 1.1 rules read as the *string* "2e-05" (a learning rate would
  silently become text).
* Helm values (``helm=True``): scalars typed as Helm types them: the same floats, and no
  timestamps (dates stay strings, as YAML -> JSON keeps them).

pyyaml is imported on first use: ``llm-finetune --help`` does not pay for it; its libyaml
parser is used when present.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

from .errors import UserError

YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


@functools.cache
def _loader(helm: bool) -> type:
    import yaml

    # libyaml's parser when PyYAML has it: the same resolvers, ten times faster on values.yaml.
    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    if helm:
        Loader.yaml_implicit_resolvers = {
            ch: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP]
            for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789."))
    return Loader


def yaml_load(text: str, *, helm: bool = False) -> Any:
    """Parse one YAML document (``yaml.YAMLError`` when it is not valid YAML)."""
    import yaml

    return yaml.load(text, Loader=_loader(helm))  # noqa: S506 - a SafeLoader subclass


def yaml_error_type() -> type[Exception]:
    import yaml

    return yaml.YAMLError


def read_mapping(path: str | os.PathLike[str], *, what: str, helm: bool = False, error: type[UserError] = UserError,
                 missing_hint: str = "check the path", allow_empty: bool = True) -> dict[str, Any]:
    """The YAML mapping in ``path``; a missing, unreadable or malformed file is ``error`` naming it.

    An empty file is ``{}`` when ``allow_empty``, else an error like any other non-mapping.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found", field=str(p), hint=missing_hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what}: {getattr(exc, 'strerror', None) or exc}", field=str(p)) from None
    try:
        data = yaml_load(text, helm=helm)
    except yaml_error_type() as exc:
        raise error(f"not valid YAML: {' '.join(str(exc).split())}", field=str(p), hint="fix the YAML syntax") from None
    if data is None and allow_empty:
        return {}
    if not isinstance(data, dict):
        kind = "null" if data is None else type(data).__name__
        raise error(f"must hold a mapping, not a {kind}", field=str(p), hint=f"a {what} is a YAML mapping of keys to values")
    return data
