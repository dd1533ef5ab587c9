"""The gateway's configuration, read once from environment variables at start-up.

``__main__`` builds one :class:`Settings` and hands it to ``app.create_app``; nothing else reads
the environment. The Helm chart sets these variables (every name is listed in
``gateway/README.md``); tests build a ``Settings`` directly.

All names are prefixed ``COMPOSE_GATEWAY_`` except a few shared with the rest of the project:
``COMPOSE_KUBE_URL`` (the Kubernetes API from outside a cluster: ``https://`` with the optional
``COMPOSE_KUBE_TOKEN_FILE`` and ``COMPOSE_KUBE_CA_FILE``, or plain ``http://`` without auth for the
tests' emulator; unset in a cluster, where the service-account token and CA are used) and the S3
endpoint and region,
which also honour ``COMPOSE_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` and ``AWS_REGION`` /
``AWS_DEFAULT_REGION`` as the operator and the inference image do.

Lists (CORS origins, callback allow-list) are comma-separated, or a JSON array.
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
import re
from typing import Annotated, Any

import pydantic
import pydantic_settings

from compose_api import models

ENV_PREFIX = "COMPOSE_GATEWAY_"
DEFAULT_API_KEYS_FILE = pathlib.Path("/etc/compose-gateway/api-keys/api-keys.yaml")
DEFAULT_CALLBACK_SECRET_FILE = pathlib.Path("/etc/compose-gateway/callback/secret")

CommaList = Annotated[list[str], pydantic_settings.NoDecode]


def _split(value: Any) -> Any:
    """``a,b`` or ``["a","b"]`` from the environment; lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(pydantic_settings.BaseSettings):
    """Every setting of the gateway. Field ``x`` is read from ``COMPOSE_GATEWAY_X``."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    # --- serving
    host: str = pydantic.Field(default="0.0.0.0", description="Address uvicorn listens on.")
    port: int = pydantic.Field(default=8080, ge=1, le=65535, description="HTTP port.")
    root_path: str = pydantic.Field(
        default="", description="Path prefix when served behind a proxy that strips it."
    )
    log_level: str = pydantic.Field(default="info", description="debug, info, warning, error.")

    # --- Kubernetes
    namespace: str = pydantic.Field(
        default="default",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="The one namespace the gateway creates CompositionJobs in.",
    )
    kube_url: str | None = pydantic.Field(
        default=None,
        validation_alias=pydantic.AliasChoices("COMPOSE_KUBE_URL"),
        description=(
            "URL of the Kubernetes API from outside a cluster: https:// (with the token and CA "
            "files below) or plain http:// without auth (tests); unset: in-cluster config."
        ),
    )
    kube_token_file: pathlib.Path | None = pydantic.Field(
        default=None,
        validation_alias=pydantic.AliasChoices("COMPOSE_KUBE_TOKEN_FILE"),
        description="Bearer token for COMPOSE_KUBE_URL (https only); re-read when it changes.",
    )
    kube_ca_file: pathlib.Path | None = pydantic.Field(
        default=None,
        validation_alias=pydantic.AliasChoices("COMPOSE_KUBE_CA_FILE"),
        description="CA bundle that signs COMPOSE_KUBE_URL's certificate; unset: system CAs.",
    )
    kube_timeout_seconds: float = pydantic.Field(
        default=10.0, gt=0, le=120, description="Timeout of one Kubernetes API request."
    )
    profile: str | None = pydantic.Field(
        default=None,
        description="Model profile of the jobs it creates; unset: the CRD's default.",
    )
    default_pool: str | None = pydantic.Field(
        default=None,
        max_length=63,
        pattern=models.DNS_LABEL_PATTERN,
        description="CompositionPool that runs the jobs it creates when a request names none "
        "(warm workers: no cold start); unset: the operator's default for the profile.",
    )
    pools: CommaList = pydantic.Field(
        default_factory=list,
        description="Comma-separated pools a request may name in its 'pool' field (besides the "
        "default pool).",
    )
    output_bucket: str | None = pydantic.Field(
        default=None, description="spec.output.bucket of new jobs; unset: the operator's bucket."
    )
    output_prefix: str = pydantic.Field(default="", description="spec.output.prefix of new jobs.")

    # --- S3: uploads and result URLs
    inputs_bucket: str | None = pydantic.Field(
        default=None,
        description="Bucket multipart uploads are stored in; unset: uploads are refused (415).",
    )
    inputs_prefix: str = pydantic.Field(
        default="uploads/",
        description="Key prefix of uploads: <prefix><key id>/<job id>/<sha256>.<ext>.",
    )
    s3_endpoint_url: str | None = pydantic.Field(
        default=None,
        validation_alias=pydantic.AliasChoices(
            "COMPOSE_GATEWAY_S3_ENDPOINT_URL",
            "COMPOSE_S3_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ),
        description="S3-compatible endpoint (MinIO, tests); unset: AWS.",
    )
    aws_region: str | None = pydantic.Field(
        default=None,
        validation_alias=pydantic.AliasChoices(
            "COMPOSE_GATEWAY_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"
        ),
        description="Region of the buckets.",
    )
    presign_expires_seconds: int = pydantic.Field(
        default=3600, ge=1, le=604800, description="Lifetime of presigned result URLs."
    )
    cdn_base_url: str | None = pydantic.Field(
        default=None,
        description="When set, imageUrl is <cdn_base_url>/<key> instead of a presigned URL.",
    )

    # --- authentication and limits
    api_keys_file: pathlib.Path = pydantic.Field(
        default=DEFAULT_API_KEYS_FILE,
        description="Hashed API keys, mounted from a Secret (see README: one 'id: hash' a line).",
    )
    rate_limit_per_minute: float = pydantic.Field(
        default=60.0, ge=0, description="Sustained requests per minute per key; 0: no limit."
    )
    rate_limit_burst: int = pydantic.Field(
        default=20, ge=1, description="Requests a key may make at once before the limit applies."
    )
    rate_limit_redis_url: str | None = pydantic.Field(
        default=None,
        pattern=r"^rediss?://\S+$",
        description=(
            "redis:// (or rediss://) URL of a Redis shared by the replicas, so the per-key rate "
            "limit holds across them; unset: each replica limits on its own."
        ),
    )
    auth_failures_per_minute: float = pydantic.Field(
        default=30.0,
        ge=0,
        description="Sustained requests with an invalid key per minute per client address; 0: "
        "no limit.",
    )
    auth_failure_burst: int = pydantic.Field(
        default=10,
        ge=1,
        description="Invalid keys an address may send at once before it is refused (429).",
    )
    max_json_bytes: int = pydantic.Field(
        default=64 * 1024, ge=1024, description="Largest JSON request body (413 beyond)."
    )
    max_upload_bytes: int = pydantic.Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest uploaded image (413 beyond)."
    )
    max_request_bytes: int = pydantic.Field(
        default=48 * 1024 * 1024, ge=1024, description="Largest multipart request (413 beyond)."
    )
    upload_buffer_bytes: int = pydantic.Field(
        default=96 * 1024 * 1024,
        ge=8 * 1024 * 1024,
        description=(
            "Memory this replica lends to uploads in progress: each holds about 5.25 MiB (one S3 "
            "part), so the default admits 18 at once; beyond, 503 with Retry-After."
        ),
    )
    upload_timeout_seconds: float = pydantic.Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Longest time to receive one multipart body (408 beyond), so a slow client "
        "cannot hold an upload slot for ever.",
    )
    max_concurrent_uploads_per_key: int = pydantic.Field(
        default=4, ge=1, le=1000, description="Uploads one key may have in progress (429 beyond)."
    )
    max_outstanding_jobs_per_key: int = pydantic.Field(
        default=20,
        ge=0,
        description="Jobs one key may have not yet finished (429 beyond); 0: no limit.",
    )
    max_retained_jobs_per_key: int = pydantic.Field(
        default=1000,
        ge=0,
        le=100_000,
        description=(
            "Jobs one key may keep in the cluster, finished or not (429 beyond); 0: no limit. "
            "Each submission reads up to this many of the key's jobs."
        ),
    )
    job_ttl_seconds_after_finished: int | None = pydantic.Field(
        default=None,
        ge=0,
        le=models.MAX_TTL_SECONDS_AFTER_FINISHED,
        description=(
            "spec.ttlSecondsAfterFinished of new jobs: how long a finished job stays in the "
            "history before the operator deletes it; unset: the operator's default."
        ),
    )
    max_wait_seconds: float = pydantic.Field(
        default=120.0, ge=0, le=3600, description="Cap on ?wait= / Prefer: wait=."
    )
    job_poll_seconds: float = pydantic.Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often a waiting request or an event stream re-reads its job.",
    )
    events_max_seconds: float = pydantic.Field(
        default=300.0,
        gt=0,
        le=3600,
        description=(
            "Longest a GET /jobs/{id}/events stream stays open before the client reconnects."
        ),
    )
    studio_enabled: bool = pydantic.Field(
        default=True, description="Serve the studio web page at /studio."
    )
    cors_origins: CommaList = pydantic.Field(
        default_factory=list, description="Origins allowed by CORS; '*' allows any; empty: none."
    )

    # --- callbacks
    callback_secret_file: pathlib.Path | None = pydantic.Field(
        default=None,
        description="File holding the master secret each key's callback secret derives from.",
    )
    callback_allow_cidrs: CommaList = pydantic.Field(
        default_factory=list,
        description="CIDRs callbacks may reach despite being private (tests only).",
    )
    callback_allow_http: bool = pydantic.Field(
        default=False, description="Allow plain http:// callback URLs (tests only)."
    )
    callback_poll_seconds: float = pydantic.Field(
        default=5.0, gt=0, le=600, description="How often ended jobs with callbacks are looked for."
    )
    callback_timeout_seconds: float = pydantic.Field(
        default=10.0, gt=0, le=120, description="Timeout of one callback POST."
    )
    callback_max_attempts: int = pydantic.Field(
        default=6, ge=1, le=50, description="Attempts before a callback is given up."
    )
    callback_backoff_seconds: float = pydantic.Field(
        default=2.0, gt=0, le=600, description="Delay before the first retry; doubles each time."
    )
    callback_backoff_max_seconds: float = pydantic.Field(
        default=300.0, gt=0, le=3600, description="Longest delay between two attempts."
    )
    callbacks_enabled: bool = pydantic.Field(
        default=True, description="Run the callback loop (one replica may be enough)."
    )

    # --- metrics
    metrics_enabled: bool = pydantic.Field(
        default=True, description="Serve /metrics on metrics_port (never on the API's port)."
    )
    metrics_port: int = pydantic.Field(
        default=9090,
        ge=1,
        le=65535,
        description="Port of /metrics, apart from the API (the chart exposes it in-cluster only).",
    )

    @pydantic.field_validator("cors_origins", "callback_allow_cidrs", "pools", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split(value)

    @pydantic.field_validator("pools")
    @classmethod
    def _pool_names(cls, value: list[str]) -> list[str]:
        for item in value:
            if len(item) > 63 or not re.fullmatch(models.DNS_LABEL_PATTERN, item):
                raise ValueError(f"not a pool name (a DNS label): {item!r}")
        return value

    @pydantic.field_validator("callback_allow_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as error:
                raise ValueError(f"not a CIDR: {item!r}") from error
        return value

    @pydantic.field_validator("cdn_base_url", "kube_url", "s3_endpoint_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @pydantic.field_validator("kube_url")
    @classmethod
    def _kube_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (or http:// for a local test server)")
        return value

    @pydantic.model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.metrics_enabled and self.metrics_port == self.port:
            raise ValueError("metrics_port: must differ from port (metrics stay off the API port)")
        return self

    @pydantic.model_validator(mode="after")
    def _kube_credentials(self) -> Settings:
        https = bool(self.kube_url and self.kube_url.startswith("https://"))
        if self.kube_token_file is not None and not https:
            raise ValueError(
                "kube_token_file (COMPOSE_KUBE_TOKEN_FILE): a bearer token is sent only to an "
                "https:// COMPOSE_KUBE_URL"
            )
        if self.kube_ca_file is not None and not https:
            raise ValueError(
                "kube_ca_file (COMPOSE_KUBE_CA_FILE): needs an https:// COMPOSE_KUBE_URL"
            )
        return self

    @pydantic.field_validator("inputs_prefix", "output_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value if not value or value.endswith("/") else value + "/"
