"""The CompositionPool custom resource, and the hand-off protocol between operator and workers.

A pool is a set of warm GPU worker pods for one model profile. The operator reconciles it into a
Deployment of ``compose worker`` pods, scales it from the demand of the jobs that name it, and
dispatches those jobs to idle workers. The CRD is generated from these models like the
CompositionJob's (``compose_api.crdgen``).

The hand-off is *push*: the operator is the one writer that decides, so priority, the per-namespace
cap and suspend stay in one place (``compose_operator.queueing``). It costs no API object per job
beyond the CompositionJob itself, and the worker's writes are two per attempt.

1. **Worker ready.** A worker loads its profile, runs one warm-up generation, and only then creates
   its ``coordination.k8s.io/v1`` Lease (:func:`lease_body`: named after its pod, owned by the pod
   so that it goes with it, labelled ``POOL_LABEL``, ``holderIdentity`` = ``<pod>/<instance>``
   where the instance is new for every process start) and answers its readiness probe. It renews
   the Lease every ``leaseSeconds / 3`` (:func:`renew_patch`). A worker that has not renewed for
   ``leaseSeconds`` takes no new work until it renews again (fencing).
2. **Assign.** For a queued pool job and an idle worker (fresh Lease, state ``ready``, no job
   assigned to its instance), the operator writes ``status.assignment`` (worker, instance,
   attempt, seed, bucket, key prefix) in one status write, conditional on the
   ``resourceVersion`` it decided on.
3. **Accept.** The worker watches only the CompositionJobs assigned to its pod: the CRD declares
   ``.status.assignment.worker`` a selectable field, so the watch is a field selector
   (:func:`assigned_selector`, Kubernetes >= 1.32). For an assignment to its own instance that it
   has not accepted, it writes ``status.workerReport`` (accepted) with a JSON patch whose ``test``
   operations check that the assignment still names its instance and attempt
   (:func:`accept_patch`): if the operator has reassigned the job since, the patch fails (422) and
   the worker drops it. Because the operator's reassignment is conditional on the
   ``resourceVersion`` it read, an accept that lands first makes the reassignment fail instead
   (409): a job runs only on the worker whose accept won against the current assignment.
4. **Run and report.** The worker builds the resolved job document from the spec, the assignment
   and its profile (``contract.assigned_document``), runs it without loading models, uploads the
   result to the job's one key (the same for every attempt, so a job has one result object), and
   writes ``status.workerReport`` again with the exit code, reason, message, result and timings
   (:func:`report_patch`, under the same ``test`` operations): the same fields as a Job pod's
   termination message. A report for an assignment that was taken away is refused the same way.
5. **Finish.** The operator maps the report to conditions, ``attempts[]`` and the result exactly as
   it maps a Job pod's termination message; retryable failures get a new attempt on a worker.
6. **Worker lost.** An assignment whose worker Lease is gone, expired (``renewTime`` older than
   ``leaseDurationSeconds``) or held by another instance (the container restarted) is lost. Not
   yet accepted: it is assigned again under the same attempt. Accepted: the attempt ends as
   ``WorkerLost`` (``Interrupted`` and not counted when the worker pod was disrupted, e.g. a spot
   interruption; counted against ``backoffLimit`` otherwise) and the next attempt is assigned. The
   reassignment is a write conditional on the ``resourceVersion`` the operator decided on.
   A job is thus run again within about ``leaseSeconds`` plus one reconcile after its worker died.
7. **Drain.** On SIGTERM a worker marks its Lease ``draining`` (:func:`state_patch`; no new
   assignments), finishes the job it has, reports it, deletes its Lease and exits. An assignment
   it has not accepted is declined by not accepting it: the operator assigns it elsewhere once it
   sees the draining Lease.
8. **Taken back.** When the operator removes an assignment (the job was suspended or deleted),
   the worker's watch no longer selects the job: the worker stops the run at its next stage
   boundary and uploads nothing; a report it still sends is refused by the ``test`` operations.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping
from typing import Any

import pydantic

from compose_api import models

KIND = "CompositionPool"
PLURAL = "compositionpools"
SINGULAR = "compositionpool"
SHORT_NAMES = ("cpool",)

# The CompositionJob's selectable field naming the worker pod its attempt is assigned to: each
# worker watches only its own assignments (a field selector on it).
ASSIGNED_WORKER_FIELD = "status.assignment.worker"
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
POD_UID_ENV = "COMPOSE_WORKER_POD_UID"  # downward API: metadata.uid (the Lease's owner)


# Exactly the API permissions a worker uses, in its own namespace: (group, resource, verbs, why).
# The chart's worker Role is checked against this list.
WORKER_PERMISSIONS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("coordination.k8s.io", "leases", ("create", "patch", "delete"),
     "its own Lease: created when warm (taken over by a merge patch after a container "
     "restart), renewed, marked draining, deleted on exit"),
    (models.GROUP, models.PLURAL, ("list", "watch"),
     "the CompositionJobs assigned to its pod (a field selector on status.assignment.worker)"),
    (models.GROUP, f"{models.PLURAL}/status", ("patch",),
     "status.workerReport: accepted, then finished (JSON patches that test the assignment)"),
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
    WORKERS_STARTING = "WorkersStarting"  # no worker ready yet (pulling, loading, warming up)
    SCALED_TO_ZERO = "ScaledToZero"
    # Available=False also takes the reason its workers do not start: Unschedulable (no GPU
    # capacity), ImagePullBackOff, ContainerFailed (a crash loop), PodCreateFailed (a quota, a
    # LimitRange or an admission policy refuses the workers' pods).


class PoolCondition(models._StatusModel):
    """A condition of a pool (the CompositionJob's :class:`models.Condition` with the pool's
    types)."""

    type: PoolConditionType
    status: models.ConditionStatus
    reason: str = pydantic.Field(
        max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    message: str = pydantic.Field(default="", max_length=32768)
    last_transition_time: datetime.datetime
    observed_generation: int | None = pydantic.Field(default=None, ge=0)


class CompositionPoolStatus(models._StatusModel):
    observed_generation: int | None = None
    conditions: list[PoolCondition] = pydantic.Field(
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


# -- the protocol's writes ---------------------------------------------------------------------


def assigned_selector(pod: str) -> str:
    """The field selector of a worker's watch: the CompositionJobs assigned to its pod."""
    return f"{ASSIGNED_WORKER_FIELD}={pod}"


def _fenced(assignment: models.WorkerAssignment) -> list[dict[str, Any]]:
    """JSON patch ``test`` operations: the assignment still names this instance and attempt."""
    return [
        {"op": "test", "path": "/status/assignment/workerInstance",
         "value": assignment.worker_instance},
        {"op": "test", "path": "/status/assignment/attempt", "value": assignment.attempt},
    ]  # fmt: skip


def accept_patch(
    assignment: models.WorkerAssignment, report: models.WorkerReport
) -> list[dict[str, Any]]:
    """The worker's accept: a JSON patch for the ``/status`` subresource that writes
    ``status.workerReport`` only while the assignment names the worker's instance and attempt
    (the API server answers 422 otherwise)."""
    return [*_fenced(assignment), {"op": "add", "path": "/status/workerReport",
                                   "value": report.to_api()}]  # fmt: skip


def report_patch(
    assignment: models.WorkerAssignment, report: models.WorkerReport
) -> list[dict[str, Any]]:
    """The worker's final report, under the same condition as :func:`accept_patch`."""
    return accept_patch(assignment, report)


def micro_time(moment: datetime.datetime) -> str:
    """A Kubernetes MicroTime (``2026-12-06T12:00:00.000000Z``), as Lease times are written."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    try:
        found = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=datetime.UTC)


def lease_body(
    *,
    pool: str,
    namespace: str,
    pod: str,
    pod_uid: str | None,
    instance: str,
    lease_seconds: int,
    now: datetime.datetime,
    state: str = STATE_READY,
) -> dict[str, Any]:
    """The Lease a warm worker creates: named after its pod and owned by it (the garbage collector
    removes it with the pod), labelled with the pool, held by ``<pod>/<instance>``."""
    meta: dict[str, Any] = {
        "name": pod,
        "namespace": namespace,
        "labels": {POOL_LABEL: pool},
        "annotations": {STATE_ANNOTATION: state},
    }
    if pod_uid:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": pod_uid}]
    stamp = micro_time(now)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": holder_identity(pod, instance),
            "leaseDurationSeconds": lease_seconds,
            "acquireTime": stamp,
            "renewTime": stamp,
        },
    }


def renew_patch(now: datetime.datetime) -> dict[str, Any]:
    """A merge patch renewing a worker's Lease."""
    return {"spec": {"renewTime": micro_time(now)}}


def state_patch(state: str, now: datetime.datetime) -> dict[str, Any]:
    """A merge patch setting a worker's state (``ready`` or ``draining``), renewing it too."""
    return {"metadata": {"annotations": {STATE_ANNOTATION: state}}, **renew_patch(now)}


@dataclasses.dataclass(frozen=True)
class WorkerLease:
    """One worker as its Lease shows it."""

    pool: str
    pod: str
    instance: str
    state: str
    renew_time: datetime.datetime | None
    duration_seconds: int | None
    deleting: bool = False

    def fresh(self, now: datetime.datetime) -> bool:
        return not self.deleting and lease_fresh(self.renew_time, self.duration_seconds, now)

    def expires_at(self) -> datetime.datetime | None:
        if self.renew_time is None or not self.duration_seconds:
            return None
        return self.renew_time + datetime.timedelta(seconds=self.duration_seconds)

    def takes_work(self, now: datetime.datetime) -> bool:
        return self.state == STATE_READY and self.fresh(now)


def view_lease(obj: Mapping[str, Any]) -> WorkerLease | None:
    """A worker Lease read from the API (None: not a worker's Lease)."""
    meta = obj.get("metadata") or {}
    pool = (meta.get("labels") or {}).get(POOL_LABEL)
    spec = obj.get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    pod, sep, instance = holder.partition("/")
    if not pool or not sep:
        return None
    duration = spec.get("leaseDurationSeconds")
    return WorkerLease(
        pool=str(pool),
        pod=pod,
        instance=instance,
        state=str((meta.get("annotations") or {}).get(STATE_ANNOTATION) or STATE_READY),
        renew_time=parse_time(spec.get("renewTime")),
        duration_seconds=int(duration) if isinstance(duration, int) else None,
        deleting=bool(meta.get("deletionTimestamp")),
    )
