"""The built-in providers, by URI scheme: the only module that imports them.

To add a provider, write its module (it imports :mod:`.base` and ``core`` only) and list
its class in :data:`PROVIDERS`.
"""

from __future__ import annotations

from ..core.errors import ConfigError
from .base import Context, Provider, Request
from .hf import HubProvider
from .local import LocalProvider
from .s3 import S3Provider

PROVIDERS: tuple[type[Provider], ...] = (HubProvider, S3Provider, LocalProvider)


def provider_for(request: Request, ctx: Context) -> Provider:
    """The provider for ``request``'s URI scheme; a ConfigError naming the field when there is none."""
    by_scheme = {scheme: cls for cls in PROVIDERS for scheme in cls.schemes}
    cls = by_scheme.get(request.scheme)
    if cls is None:
        known = ", ".join(sorted(f"{s}://" for s in by_scheme if s != "file"))
        raise ConfigError(f"unsupported URI {request.uri!r}", field=f"{request.field}.uri",
                          hint=f"use {known} or an absolute path on the volume")
    return cls(request, ctx)
