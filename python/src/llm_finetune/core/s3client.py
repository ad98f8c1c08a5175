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
    """A boto3 S3 client for ``settings`` (endpoint URL for MinIO/Ceph/SeaweedFS, region).

    ``retries`` is botocore's own retry count after the first attempt (0: none, for callers
    that retry themselves, like the initializer, which also retries broken body streams).
    """
    import boto3
    from botocore.config import Config

    cfg = Config(
        max_pool_connections=max(10, max_pool_connections),
        retries={"max_attempts": max(0, retries), "mode": "standard"},
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


# Error codes S3 (and compatible servers) send for throttling and server-side trouble.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "RequestLimitExceeded",
    "TooManyRequests", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
    "OperationAborted", "BandwidthLimitExceeded", "500", "502", "503", "504",
})
AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "AllAccessDisabled", "AccountProblem", "InvalidSecurity", "403", "401",
})
_CREDENTIALS_HINT = ("check the keys in the Secret named by secrets.s3.existingSecret, or the IAM role "
                     "(IRSA / workload identity) of the ServiceAccount, and the bucket policy")


def classify_error(exc: BaseException, *, uri: str, field: str) -> BaseException | None:
    """Sort a boto3/botocore exception for retries.

    Returns None when it is transient (connection reset/refused, timeouts, 5xx, throttling),
    a ``UserError`` naming ``uri``/``field`` and the fix when it is permanent (missing bucket
    or key, denied, no credentials), or ``exc`` itself when it is unexpected.
    """
    from botocore import exceptions as bce
    from urllib3 import exceptions as u3e

    from .errors import ExternalError, UserError

    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return UserError(f"no S3 credentials for {uri}", field=f"{field}.uri", hint=_CREDENTIALS_HINT)
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return None
        if code == "NoSuchBucket":
            return UserError(f"bucket of {uri} does not exist", field=f"{field}.uri",
                             hint=f"check the bucket name and {field}.s3.endpointUrl")
        if code in AUTH_CODES or status in (401, 403):
            return UserError(f"access to {uri} denied ({code})", field=f"{field}.uri", hint=_CREDENTIALS_HINT)
        if code in ("NoSuchKey", "404") or status == 404:
            return UserError(f"object not found under {uri} ({code})", field=f"{field}.uri",
                             hint="check the key/prefix (it is case-sensitive)")
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301"):
            return UserError(f"the bucket of {uri} is in another region ({code})", field=f"{field}.s3.region",
                             hint="set the bucket's region")
        if code in ("PreconditionFailed", "412", "InvalidRange", "416") or status in (412, 416):
            return ExternalError(f"{uri} changed while it was being downloaded ({code})",
                                 hint="the next attempt of the pod lists it again")
        return UserError(f"S3 error for {uri}: {code}: {err.get('Message', '')}".rstrip(": "),
                         field=f"{field}.uri")
    if isinstance(exc, bce.ParamValidationError):
        return UserError(f"invalid S3 request for {uri}: {exc}", field=f"{field}.uri",
                         hint="write s3://bucket/prefix with a valid bucket name")
    transient = (bce.ConnectionError, bce.HTTPClientError, bce.ResponseStreamingError, bce.IncompleteReadError,
                 u3e.HTTPError, ConnectionError, TimeoutError)
    if isinstance(exc, transient):
        return None
    if isinstance(exc, OSError) and exc.errno is None:  # socket-level trouble without an errno
        return None
    return exc
