"""S3 client and URI helpers shared by the initializer (downloads) and the trainer (export).

Credentials come from the environment or the default AWS chain only (``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` from a Kubernetes Secret, or IRSA /
workload identity); they are never part of the config.
"""

from __future__ import annotations

from urllib.parse import urlparse

from .config import S3Settings
from .errors import ConfigError


def parse_s3_uri(uri: str, field: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"{uri!r} is not an S3 URI", field=field, hint="write s3://bucket/prefix")
    return parsed.netloc, parsed.path.lstrip("/")


def make_client(settings: S3Settings, *, max_pool_connections: int = 16, retries: int = 5):
    """A boto3 S3 client for ``settings`` (endpoint URL for MinIO/Ceph/SeaweedFS, region)."""
    import boto3
    from botocore.config import Config

    cfg = Config(
        max_pool_connections=max(10, max_pool_connections),
        retries={"max_attempts": max(1, retries), "mode": "adaptive"},
        connect_timeout=20,
        read_timeout=120,
        # Path-style addressing works with every S3-compatible server; AWS accepts it too.
        s3={"addressing_style": "path"} if settings.endpoint_url else {},
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url or None,
        region_name=settings.region or None,
        config=cfg,
    )
