"""The CompositionPool custom resource, and the hand-off protocol between operator and workers.

A pool is a set of warm GPU worker pods for one model profile. The operator reconciles it into a
Deployment of ``compose worker`` pods, scales it from the demand of the jobs that name it, and
dispatches those jobs to idle workers. The CRD is generated from these models like the
CompositionJob's (``compose_api.crdgen``).

The hand-off is *push*: the operator is the one writer that decides, so priority, the per-namespace
cap and suspend stay in one place (``compose_operator.queueing``).

1. **Worker ready.** A worker loads its profile, runs one warm-up generation, and only then creates
   its ``coordination.k8s.io/v1`` Lease (named after its pod, labelled ``POOL_LABEL``,
   ``holderIdentity`` = ``<pod>/<instance>`` where the instance is new for every process start)
   and answers its readiness probe. It renews the Lease every ``leaseSeconds / 3``. A worker that
   cannot renew within ``leaseSeconds`` stops taking work (fencing).
2. **Assign.** For a queued pool job and an idle worker (fresh Lease, state ``ready``, no job
   assigned), the operator writes ``status.assignment`` (worker, instance, attempt, seed, bucket,
   key prefix) and then sets the label ``WORKER_LABEL=<worker pod>`` on the CompositionJob.
3. **Accept.** The worker watches only the CompositionJobs labelled with its pod name. For an
   assignment to its own instance that has no report yet, it writes ``status.workerReport``
   (accepted) as a merge patch carrying the ``resourceVersion`` it read: if the operator has
   changed the job since (reassigned it), the write fails with 409 and the worker drops it. A
   job therefore runs only on the worker whose accept won against the current assignment.
4. **Run and report.** The worker builds the resolved job document from the spec, the assignment
   and its profile (``contract.job_document``), runs it without loading models, uploads the result
   to the job's one key, and writes ``status.workerReport`` again with the exit code, reason,
   message, result and timings: the same fields as a Job pod's termination message.
5. **Finish.** The operator maps the report to conditions, ``attempts[]`` and the result exactly as
   it maps a Job pod's termination message; retryable failures get a new attempt on a worker.
6. **Worker lost.** An assignment whose worker Lease is gone, expired (``renewTime`` older than
   ``leaseDurationSeconds``) or held by another instance (the container restarted) is lost. Not
   yet accepted: it is assigned again under the same attempt. Accepted: the attempt ends as
   ``WorkerLost`` (``Interrupted`` and not counted when the worker pod was disrupted, e.g. a spot
   interruption; counted against ``backoffLimit`` otherwise) and the next attempt is assigned. The
   reassignment is a write conditional on the ``resourceVersion`` the operator decided on.
   A job is thus run again within about ``leaseSeconds`` plus one reconcile after its worker died.
7. **Drain.** On SIGTERM a worker marks its Lease ``draining`` (no new assignments), finishes the
   job it has, reports it, deletes its Lease and exits. An assignment it has not accepted is
   declined: the operator assigns it elsewhere once it sees the draining Lease.
"""

from __future__ import annotations

import datetime
import enum

import pydantic

from compose_api import models

KIND = "CompositionPool"
PLURAL = "compositionpools"
SINGULAR = "compositionpool"
SHORT_NAMES = ("cpool",)

# On a CompositionJob: the worker pod its current attempt is assigned to (the workers' watch
# selects on it).
WORKER_LABEL = f"{models.GROUP}/worker"
# On the pool's Deployment, its pods and the workers' Leases.
POOL_LABEL = f"{models.GROUP}/pool"
# On a worker Lease: "ready" (takes work) or "draining" (finishes its job, takes no new one).
STATE_ANNOTATION = f"{models.GROUP}/worker-state"
STATE_READY = "ready"
STATE_DRAINING = "draining"
CONTAINER_NAME = "worker"
PROBE_PORT = 8080

# The worker's environment (the pool's Deployment sets them).
POD_ENV = "COMPOSE_WORKER_POD"  # downward API: metadata.name
NAMESPACE_ENV = "COMPOSE_WORKER_NAMESPACE"  # downward API: metadata.namespace
NODE_ENV = "COMPOSE_WORKER_NODE"  # downward API: spec.nodeName
POOL_ENV = "COMPOSE_WORKER_POOL"
PROFILE_ENV = "COMPOSE_WORKER_PROFILE"  # the ModelProfile as JSON
LEASE_SECONDS_ENV = "COMPOSE_WORKER_LEASE_SECONDS"
PORT_ENV = "COMPOSE_WORKER_PORT"


# Exactly the API permissions a worker uses, in its own namespace: (group, resource, verbs, why).
# The chart's worker Role is checked against this list.
WORKER_PERMISSIONS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("coordination.k8s.io", "leases", ("create", "get", "patch", "delete"),
     "its own Lease: created when warm, renewed, marked draining, deleted on exit"),
    (models.GROUP, models.PLURAL, ("get", "list", "watch"),
     "the CompositionJobs labelled with its pod name (its assignments)"),
    (models.GROUP, f"{models.PLURAL}/status", ("patch",),
     "status.workerReport: accepted (conditional on resourceVersion), then finished"),
)  # fmt: skip


class Scaling(enum.StrEnum):
    OPERATOR = "operator"  # the operator scales between min and max from the demand
    EXTERNAL = "external"  # KEDA or an HPA writes spec.replicas through the /scale subresource


class CompositionPoolSpec(models._Model):
    """A set of warm workers for one model profile."""

    model_config = pydantic.ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.minReplicas) || !has(self.maxReplicas)"
                    " || self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must not exceed maxReplicas",
                },
            ],
        },
    )

    profile: str = pydantic.Field(
        max_length=63,
        pattern=models.DNS_LABEL_PATTERN,
        description="Name of a model profile configured in the operator. Immutable.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "spec.profile is immutable"},
            ],
        },
    )
    min_replicas: int = pydantic.Field(
        default=0, ge=0, le=100, description="Workers kept even when idle (0: scale to zero)."
    )
    max_replicas: int = pydantic.Field(default=1, ge=1, le=100, description="Most workers.")
    replicas: int | None = pydantic.Field(
        default=None,
        ge=0,
        le=100,
        description="Workers wanted, written through the /scale subresource by KEDA or an HPA "
        "when scaling is external (clamped to min and max). Ignored when the operator scales.",
    )
    scaling: Scaling = pydantic.Field(
        default=Scaling.OPERATOR,
        description="operator: scaled from the demand (queued + running jobs); external: "
        "spec.replicas decides (KEDA ScaledObject or HPA on the /scale subresource).",
    )
    scale_to_zero_after_seconds: int = pydantic.Field(
        default=600,
        ge=0,
        le=86400,
        description="Seconds without demand before the pool scales down to minReplicas.",
    )
    capacity_type: models.CapacityType = pydantic.Field(
        default=models.CapacityType.ANY, description="spot, on-demand or any."
    )
    image: str | None = pydantic.Field(
        default=None,
        max_length=512,
        description="Worker image. Empty: the profile's image, else the operator's.",
    )
    priority_class_name: str | None = pydantic.Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PriorityClass of the worker pods.",
    )
    lease_seconds: int = pydantic.Field(
        default=15,
        ge=2,
        le=300,
        description="A worker that has not renewed its Lease this long is lost, and its job is "
        "run again elsewhere.",
    )
    drain_seconds: int = pydantic.Field(
        default=300,
        ge=10,
        le=3600,
        description="Grace period of a worker pod: the time a stopping worker has to finish its "
        "job.",
    )

    @pydantic.model_validator(mode="after")
    def _bounds_ordered(self) -> CompositionPoolSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class PoolConditionType(enum.StrEnum):
    ACCEPTED = "Accepted"  # the spec is valid and its profile known
    AVAILABLE = "Available"  # at least one worker is ready


class PoolReason(enum.StrEnum):
    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    UNKNOWN_PROFILE = "UnknownProfile"
    WORKERS_READY = "WorkersReady"
    WORKERS_STARTING = "WorkersStarting"
    SCALED_TO_ZERO = "ScaledToZero"


class CompositionPoolStatus(models._StatusModel):
    observed_generation: int | None = None
    conditions: list[models.Condition] = pydantic.Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    message: str | None = None
    replicas: int | None = pydantic.Field(
        default=None, description="Worker pods that exist (the /scale subresource's status)."
    )
    desired_replicas: int | None = pydantic.Field(
        default=None, description="Workers the pool is scaled to."
    )
    ready_workers: int | None = pydantic.Field(
        default=None, description="Workers with a fresh Lease (loaded and warmed up)."
    )
    busy_workers: int | None = None
    idle_workers: int | None = None
    draining_workers: int | None = None
    queued: int | None = pydantic.Field(default=None, description="Jobs waiting for a worker.")
    running: int | None = pydantic.Field(default=None, description="Jobs assigned to workers.")
    selector: str | None = pydantic.Field(
        default=None, description="Label selector of the worker pods (the /scale subresource's)."
    )
    last_active_time: datetime.datetime | None = pydantic.Field(
        default=None, description="When the pool last had demand."
    )


class CompositionPool(models._Model):
    """A set of warm GPU workers for one profile. Namespaced; short name ``cpool``."""

    model_config = pydantic.ConfigDict(extra="ignore")

    api_version: str = models.API_VERSION
    kind: str = KIND
    metadata: models.ObjectMeta = pydantic.Field(default_factory=models.ObjectMeta)
    spec: CompositionPoolSpec
    status: CompositionPoolStatus = pydantic.Field(default_factory=CompositionPoolStatus)


def deployment_name(pool: str) -> str:
    """The pool's Deployment: ``<pool>-workers`` (a pool name is a DNS label, <= 63)."""
    return f"{pool[:55].rstrip('-')}-workers"


def holder_identity(pod: str, instance: str) -> str:
    return f"{pod}/{instance}"


def lease_fresh(
    renew_time: datetime.datetime | None, duration_seconds: int | None, now: datetime.datetime
) -> bool:
    """Whether a Lease renewed at ``renew_time`` is still held at ``now``."""
    if renew_time is None or not duration_seconds:
        return False
    return (now - renew_time).total_seconds() < duration_seconds
