"""S3 plumbing shared by the fetcher, the model store and the uploader.

Builds the boto3 client (endpoint from ``COMPOSE_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3``, for
MinIO and local test servers; credentials and region from the usual AWS chain: the pod's IRSA role
in EKS), parses ``s3://`` URIs, and sorts botocore errors into permanent and transient ones.
botocore's own retries are switched off: the callers retry transient errors themselves, with
backoff, and never retry a missing object.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import boto3
from botocore import config as botocore_config
from botocore import exceptions as botocore_exceptions

ENDPOINT_ENVS = ("COMPOSE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

# Error codes that mean "the object is not there or not yours": retrying cannot help.
PERMANENT_CODES = frozenset(
    {
        "NoSuchKey",
        "NoSuchBucket",
        "NotFound",
        "404",
        "AccessDenied",
        "403",
        "InvalidObjectState",
        "InvalidBucketName",
        "AllAccessDisabled",
    }
)
# Throttling and server-side errors: retried with backoff.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
    }
)
TRANSIENT_EXCEPTIONS: tuple[type[Exception], ...] = (
    botocore_exceptions.ConnectionError,  # endpoint connection, timeouts, closed connections
    botocore_exceptions.ReadTimeoutError,
    botocore_exceptions.IncompleteReadError,
    botocore_exceptions.ResponseStreamingError,
)


@dataclasses.dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_uri(uri: str) -> S3Location:
    """``s3://bucket/key`` -> S3Location; ValueError names the URI when it is not one."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket")
    return S3Location(bucket=bucket, key=key)


def endpoint_url(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    for name in ENDPOINT_ENVS:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def make_client(
    *,
    endpoint: str | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
) -> Any:
    """A boto3 S3 client without botocore retries (callers retry; see module docstring)."""
    config = botocore_config.Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": 1, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint or endpoint_url(), config=config)


def error_code(error: BaseException) -> str | None:
    """The S3 error code of a ClientError (``NoSuchKey``, ``SlowDown``, ``404``), else None."""
    if isinstance(error, botocore_exceptions.ClientError):
        code = error.response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(status) if status else None
    return None


def is_transient(error: BaseException) -> bool:
    """True for throttling, 5xx, timeouts and dropped connections; False for anything else."""
    if isinstance(error, TRANSIENT_EXCEPTIONS):
        return True
    code = error_code(error)
    if code is None:
        return False
    if code in PERMANENT_CODES:
        return False
    return code in TRANSIENT_CODES or code.startswith("5")
