"""The operator's configuration, read once at start-up from ``COMPOSE_*`` environment variables.

``__main__`` builds one :class:`OperatorSettings` with :func:`from_environment` and hands it to
every other part; nothing else reads the environment. The Helm chart sets these variables (and
mounts the model profiles from its ConfigMap), so their names are a contract with the chart.
A ConfigMap may also be mounted as an env file (``KEY=VALUE`` lines) named by
``COMPOSE_SETTINGS_FILE``; variables set in the environment win over the file. The one exception
to ``COMPOSE_*``: the standard ``OTEL_*`` export variables, which configure the operator's own
tracing (``compose_api.tracing``) and are handed on to the pods it creates (``tracing_env``).

Every problem is reported as ``COMPOSE_<NAME>: <reason>``, all of them at once.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any, Literal

import pydantic

from compose_api import models, tracing
from compose_api import profiles as profiles_module
from compose_operator import queueing

PREFIX = "COMPOSE_"
SETTINGS_FILE_VARIABLE = "COMPOSE_SETTINGS_FILE"


class SettingsError(ValueError):
    """Raised with one line per bad variable, each naming the variable."""


class OperatorSettings(pydantic.BaseModel):
    """Validated operator settings. Field ``foo_bar`` comes from ``COMPOSE_FOO_BAR``."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    namespaces: tuple[str, ...] = pydantic.Field(
        default=(), description="Namespaces to watch; empty: cluster-wide."
    )
    profiles_path: pathlib.Path = pydantic.Field(
        description="profiles.yaml mounted from the chart's ConfigMap."
    )
    profiles: dict[str, profiles_module.ModelProfile] = pydantic.Field(default_factory=dict)
    inference_image: str = pydantic.Field(
        default="ghcr.io/nextunicorn/compose-inference:0.1.0", min_length=1
    )
    inference_service_account: str = pydantic.Field(default="compose-inference", min_length=1)
    worker_service_account: str = pydantic.Field(
        default="compose-worker",
        min_length=1,
        description="Service account of the pool workers (S3 access, its own Lease, its jobs).",
    )
    default_pools: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="profile=pool,...: the CompositionPool (in the job's namespace) that runs a "
        "job of that profile when its spec names no pool; a profile not listed runs as Jobs.",
    )
    output_bucket: str | None = None
    output_prefix: str = ""
    result_url_base: str | None = pydantic.Field(default=None, pattern=r"^https://\S+$")
    aws_region: str = "us-east-1"
    s3_endpoint_url: str | None = pydantic.Field(default=None, pattern=r"^https?://\S+$")
    max_running_per_namespace: int = pydantic.Field(
        default=0, ge=0, description="Child Jobs not finished per namespace; 0: no cap."
    )
    max_running_per_owner: int = pydantic.Field(
        default=0,
        ge=0,
        description="Child Jobs not finished per owner (the gateway's owner label) and "
        "namespace; 0: no limit. Jobs without the label share one owner.",
    )
    queue_position_refresh_seconds: float = pydantic.Field(
        default=60.0,
        ge=0,
        le=86400,
        description="A waiting job's status.queuePosition is rewritten at most this often "
        "when it has changed (it is written when the job starts waiting); 0: never refreshed.",
    )
    job_ttl_seconds: int = pydantic.Field(default=3600, ge=0)
    metrics_port: int = pydantic.Field(default=8080, ge=0, le=65535)
    health_port: int = pydantic.Field(default=8081, ge=0, le=65535)
    peering_name: str = "compose-operator"
    peering_priority: int = 0
    peering_priority_jitter: bool = pydantic.Field(
        default=True,
        description="Add a stable per-pod offset 0..999 (from the pod name, HOSTNAME) to "
        "peering_priority so that replicas never tie; ignored when standalone.",
    )
    standalone: bool = False
    model_cache: str | None = pydantic.Field(
        default=None,
        description="Model cache: an absolute node path (hostPath) or the name of a PVC.",
    )
    kube_url: str | None = pydantic.Field(default=None, pattern=r"^https?://\S+$")
    reconcile_interval_seconds: float = pydantic.Field(default=10.0, gt=0, le=3600)
    status_coalesce_seconds: float = pydantic.Field(
        default=5.0,
        ge=0,
        le=60,
        description="Progress within one phase is written to status at most once per this "
        "many seconds per job; phase changes and terminal states at once. 0: every change.",
    )
    starting_progress_seconds: float = pydantic.Field(
        default=30.0,
        ge=0,
        le=600,
        description="A starting Job's normal progress (JobCreated -> Scheduling -> "
        "ImagePulling) is written at most once per this many seconds per job (at least "
        "status_coalesce_seconds); a warning (Unschedulable, ImagePullBackOff, Retrying) and "
        "the progress that clears it are written within status_coalesce_seconds.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    tracing_env: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="The OpenTelemetry export settings handed on to the Job pods and pool "
        "workers: the operator's own OTEL_* variables (compose_api.tracing.forwarded), not "
        "COMPOSE_* ones; empty when tracing is off.",
    )

    @pydantic.field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @pydantic.field_validator("default_pools", mode="before")
    @classmethod
    def _split_default_pools(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for part in (item.strip() for item in value.split(",")):
            if not part:
                continue
            profile, sep, pool = (text.strip() for text in part.partition("="))
            if not sep or not profile or not pool:
                raise ValueError(f"{part!r}: expected profile=pool")
            for name in (profile, pool):
                if not re.fullmatch(models.DNS_LABEL_PATTERN, name) or len(name) > 63:
                    raise ValueError(f"{name!r}: not a DNS label (lower case, digits and '-')")
            pairs[profile] = pool
        return pairs

    @pydantic.field_validator(
        "output_bucket",
        "result_url_base",
        "s3_endpoint_url",
        "kube_url",
        "model_cache",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @pydantic.field_validator("output_prefix")
    @classmethod
    def _prefix_ends_with_slash(cls, value: str) -> str:
        return value if not value or value.endswith("/") else value + "/"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def limits(self) -> queueing.Limits:
        return queueing.Limits(
            per_namespace=self.max_running_per_namespace, per_owner=self.max_running_per_owner
        )


def _read_env_file(path: pathlib.Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; blank lines and ``#`` comments ignored; optional quotes stripped."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if not sep:
            raise SettingsError(f"{SETTINGS_FILE_VARIABLE}: {path}:{number}: expected KEY=VALUE")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def from_environment(environ: Mapping[str, str]) -> OperatorSettings:
    """Settings from ``COMPOSE_*`` variables (and the optional env file); raises SettingsError."""
    merged: dict[str, str] = {}
    file_name = environ.get(SETTINGS_FILE_VARIABLE)
    if file_name:
        try:
            merged.update(_read_env_file(pathlib.Path(file_name)))
        except OSError as error:
            raise SettingsError(
                f"{SETTINGS_FILE_VARIABLE}: cannot read {file_name}: {error}"
            ) from None
    merged.update({key: value for key, value in environ.items() if key.startswith(PREFIX)})

    fields = OperatorSettings.model_fields
    raw: dict[str, Any] = {}
    for key, value in merged.items():
        name = key.removeprefix(PREFIX).lower()
        if key.startswith(PREFIX) and name in fields and name not in ("profiles", "tracing_env"):
            raw[name] = value
    raw["tracing_env"] = tracing.forwarded(environ)

    problems: list[str] = []
    if not raw.get("profiles_path"):
        problems.append(
            "COMPOSE_PROFILES_PATH: required: the path of profiles.yaml "
            "(the Helm chart mounts it from its ConfigMap)"
        )
    else:
        path = pathlib.Path(raw["profiles_path"])
        try:
            raw["profiles"] = profiles_module.load_profiles(path.read_text())
        except OSError as error:
            problems.append(f"COMPOSE_PROFILES_PATH: cannot read {path}: {error.strerror}")
        except ValueError as error:
            problems.append(f"COMPOSE_PROFILES_PATH: {path}: {error}")
    if problems:
        raw.pop("profiles_path", None)

    try:
        settings = OperatorSettings.model_validate(raw)
    except pydantic.ValidationError as error:
        for item in error.errors():
            name = str(item["loc"][0]) if item["loc"] else ""
            if name == "profiles_path" and problems:
                continue
            variable = PREFIX + name.upper()
            problems.append(f"{variable}: {str(item['msg']).removeprefix('Value error, ')}")
        raise SettingsError("\n".join(problems)) from None
    if problems:
        raise SettingsError("\n".join(problems))
    return settings
