"""CompositionPools as the operator sees them: views, the workers' Deployment, its size, the status.

A pool is reconciled into one ``apps/v1`` Deployment of ``compose worker`` pods (the protocol
between the operator and the workers is in :mod:`compose_api.pools`). Everything here is pure:
:mod:`compose_operator.reconciler` reads the pool, its Deployment, its workers' Leases and pods
and the demand of its jobs, calls these functions, and writes what they return.

Scaling (``spec.scaling: operator``): the pool grows at once to the demand (queued + running
jobs, within ``minReplicas``..``maxReplicas``), and shrinks to the demand once the demand has
stayed below its size for ``scaleToZeroAfterSeconds``: so a burst is served at once, a pool does
not flap between jobs, and an idle pool goes down to ``minReplicas`` (zero by default).
``spec.scaling: external``: ``spec.replicas`` (written through the ``/scale`` subresource by KEDA
or an HPA) decides, clamped to min and max.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pydantic

from compose_api import models, profiles
from compose_api import pools as protocol
from compose_operator import builders, names, status
from compose_operator.settings import OperatorSettings

COMPONENT = "worker"
TEMPLATE_HASH_ANNOTATION = f"{models.GROUP}/template-hash"
CT = protocol.PoolConditionType
PR = protocol.PoolReason
_WAITING_PROBLEMS = {
    "ImagePullBackOff": models.Reason.IMAGE_PULL_BACK_OFF,
    "ErrImagePull": models.Reason.IMAGE_PULL_BACK_OFF,
    "InvalidImageName": models.Reason.IMAGE_PULL_BACK_OFF,
    "CrashLoopBackOff": models.Reason.CONTAINER_FAILED,
}


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    return meta


# -- views ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolView:
    """One CompositionPool: its spec (None when invalid, ``spec_error`` says why) and status."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    spec: protocol.CompositionPoolSpec | None
    spec_error: str | None
    status: protocol.CompositionPoolStatus
    deleting: bool = False


def view_pool(body: Mapping[str, Any]) -> PoolView:
    meta = _meta(body)
    spec: protocol.CompositionPoolSpec | None = None
    error: str | None = None
    try:
        spec = protocol.CompositionPoolSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as problem:
        error = models.describe_validation_error(problem)
    try:
        pool_status = protocol.CompositionPoolStatus.model_validate(body.get("status") or {})
    except pydantic.ValidationError:
        pool_status = protocol.CompositionPoolStatus()
    generation = meta.get("generation")
    return PoolView(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        generation=int(generation) if isinstance(generation, int) else None,
        spec=spec,
        spec_error=error,
        status=pool_status,
        deleting=bool(meta.get("deletionTimestamp")),
    )


@dataclasses.dataclass(frozen=True)
class WorkerPod:
    """A worker pod of a pool: where it runs, and what keeps it from serving, if anything."""

    name: str
    namespace: str
    pool: str
    node: str | None
    deleting: bool
    disrupted: str | None  # why the pod is a disruption target (a spot interruption, a drain)
    problem: tuple[str, str] | None  # (reason, message): why it does not start


def _true_condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind and item.get("status") == "True":
            found: Mapping[str, Any] = item
            return found
    return None


def view_worker_pod(body: Mapping[str, Any]) -> WorkerPod | None:
    """A pod of a pool's Deployment (None: not a worker pod)."""
    meta = _meta(body)
    pool = (meta.get("labels") or {}).get(protocol.POOL_LABEL)
    if not pool:
        return None
    status = body.get("status") or {}
    disrupted = _true_condition(body, "DisruptionTarget")
    disruption = None
    if disrupted is not None:
        disruption = str(disrupted.get("reason") or "disruption")
        if disrupted.get("message"):
            disruption += f": {disrupted.get('message')}"
    problem: tuple[str, str] | None = None
    for item in status.get("containerStatuses") or []:
        waiting = (item.get("state") or {}).get("waiting") or {}
        reason = _WAITING_PROBLEMS.get(str(waiting.get("reason")))
        if reason is not None:
            problem = (reason, f"{waiting.get('reason')}: {waiting.get('message') or ''}".strip())
    for item in status.get("conditions") or []:
        # Only the scheduler's PodScheduled condition carries the reason Unschedulable (no
        # other pod condition type does, whichever way it sorts), "False" is the least status,
        # and no reason the scheduler gives sorts after "Unschedulable": `<=`/`>=` for these
        # `==` cannot change the result.
        if (
            item.get("type") == "PodScheduled"  # pragma: no mutate: *_Eq_[GL]tE
            and item.get("status") == "False"  # pragma: no mutate: *_Eq_LtE
            and item.get("reason") == "Unschedulable"  # pragma: no mutate: *_Eq_GtE
        ):
            detail = item.get("message") or ""
            problem = (
                models.Reason.UNSCHEDULABLE,
                "no GPU capacity" + (f": {detail}" if detail else ""),
            )
    return WorkerPod(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or "default"),
        pool=str(pool),
        node=(body.get("spec") or {}).get("nodeName"),
        deleting=bool(meta.get("deletionTimestamp")),
        disrupted=disruption,
        problem=problem,
    )


@dataclasses.dataclass(frozen=True)
class DeploymentView:
    """A pool's Deployment as the pool reconcile reads it."""

    name: str
    namespace: str
    pool: str
    owner_uid: str | None
    replicas: int | None  # spec.replicas
    template_hash: str | None
    existing: int  # status.replicas: pods that exist
    ready: int  # status.readyReplicas
    # Why its ReplicaSet cannot create pods (a quota, a LimitRange, an admission policy): the
    # message of its ReplicaFailure condition, which the Deployment controller copies up
    replica_failure: str | None = None


def view_deployment(body: Mapping[str, Any]) -> DeploymentView | None:
    meta = _meta(body)
    pool = (meta.get("labels") or {}).get(protocol.POOL_LABEL)
    if not pool:
        return None
    owners = [ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")]
    status = body.get("status") or {}
    replicas = (body.get("spec") or {}).get("replicas")
    return DeploymentView(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or "default"),
        pool=str(pool),
        # The API server allows one controller reference per object: another index cannot
        # change the result.
        owner_uid=str(owners[0].get("uid")) if owners else None,  # pragma: no mutate: Number*
        replicas=int(replicas) if isinstance(replicas, int) else None,
        template_hash=(meta.get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION),
        existing=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        replica_failure=_replica_failure(body),
    )


def _replica_failure(body: Mapping[str, Any]) -> str | None:
    failure = _true_condition(body, "ReplicaFailure")
    if failure is None:
        return None
    message = str(failure.get("message") or failure.get("reason") or "FailedCreate")
    return status.without_generated_names(message, str(_meta(body).get("name") or ""))


# -- the Deployment ---------------------------------------------------------------------------


def selector_labels(pool: str) -> dict[str, str]:
    return {protocol.POOL_LABEL: pool, "app.kubernetes.io/component": COMPONENT}


def selector(pool: str) -> str:
    """The workers' label selector as a string (the ``/scale`` subresource's ``selector``)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(pool).items()))


def _worker_env(
    pool: PoolView, spec: protocol.CompositionPoolSpec, profile: profiles.ModelProfile
) -> list[dict[str, Any]]:
    def field(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    return [
        {"name": protocol.POD_ENV, "valueFrom": field("metadata.name")},
        {"name": protocol.NAMESPACE_ENV, "valueFrom": field("metadata.namespace")},
        {"name": protocol.NODE_ENV, "valueFrom": field("spec.nodeName")},
        {"name": protocol.POD_UID_ENV, "valueFrom": field("metadata.uid")},
        {"name": protocol.POOL_ENV, "value": pool.name},
        {
            "name": protocol.PROFILE_ENV,
            "value": json.dumps(
                profile.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True
            ),
        },
        {"name": protocol.LEASE_SECONDS_ENV, "value": str(spec.lease_seconds)},
        {"name": protocol.PORT_ENV, "value": str(protocol.PROBE_PORT)},
    ]


def build_deployment(
    pool: PoolView,
    profile: profiles.ModelProfile,
    settings: OperatorSettings,
    *,
    replicas: int,
) -> dict[str, Any]:
    """The pool's Deployment of ``compose worker`` pods, with ``replicas`` of them.

    The pods are the Job pods' (GPU request, g5 placement and capacity type, tolerations,
    hardening, the node-local model cache) plus the worker's settings, probes on the worker's
    port (ready only once the profile is loaded and warmed up) and a grace period of
    ``drainSeconds`` to finish the job at hand. Owned by the pool (deleted with it)."""
    spec = pool.spec
    if spec is None:
        raise builders.BuildError(f"spec: invalid: {pool.spec_error}")
    labels = {
        "app.kubernetes.io/name": "compose-worker",
        "app.kubernetes.io/instance": names.label_value(pool.name),
        "app.kubernetes.io/part-of": "nextunicorn-compose",
        names.MANAGED_BY_LABEL: names.MANAGED_BY,
        names.PROFILE_LABEL: profile.name,
        **selector_labels(pool.name),
    }
    probe = {"port": "probes", "scheme": "HTTP"}
    container: dict[str, Any] = {
        "name": protocol.CONTAINER_NAME,
        "image": spec.image or profile.image or settings.inference_image,
        "args": ["worker"],
        "env": [
            *_worker_env(pool, spec, profile),
            *builders.storage_env(settings),
            *builders.tracing_env(settings, builders.WORKER_SERVICE_NAME),
        ],
        "ports": [{"name": "probes", "containerPort": protocol.PROBE_PORT, "protocol": "TCP"}],
        # Ready once the profile is loaded, warmed up and the Lease held; a model download may
        # take many minutes, so liveness starts only after the start-up probe passed.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", **probe},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", **probe},
            "periodSeconds": 10,
            "failureThreshold": 90,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", **probe},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
    }
    pod_spec = builders.inference_pod_spec(
        profile,
        settings,
        container,
        capacity=builders.inference_capacity(str(spec.capacity_type), profile),
        service_account=settings.worker_service_account,
        priority_class_name=spec.priority_class_name,
        restart_policy="Always",
        grace_seconds=spec.drain_seconds,
    )
    template = {
        "metadata": {
            "labels": labels,
            # The operator scales the pool itself: Karpenter must not consolidate a worker away.
            "annotations": {"karpenter.sh/do-not-disrupt": "true"},
        },
        "spec": pod_spec,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": protocol.deployment_name(pool.name),
            "namespace": pool.namespace,
            "labels": labels,
            "annotations": {TEMPLATE_HASH_ANNOTATION: template_hash(template)},
            "ownerReferences": [
                {
                    "apiVersion": models.API_VERSION,
                    "kind": protocol.KIND,
                    "name": pool.name,
                    "uid": pool.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(pool.name)},
            # A new worker is warm before an old one goes: capacity holds during an upgrade.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 3,
            "template": template,
        },
    }


def template_hash(template: Mapping[str, Any]) -> str:
    """A digest of the pod template the operator wants (compared with the Deployment's)."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def deployment_patch(
    wanted: Mapping[str, Any], found: DeploymentView | None
) -> dict[str, Any] | None:
    """The merge patch that brings the Deployment in line (None: it already is)."""
    if found is None:
        return None
    patch: dict[str, Any] = {}
    want_hash = wanted["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    if found.template_hash != want_hash:
        patch["metadata"] = {"annotations": {TEMPLATE_HASH_ANNOTATION: want_hash}}
        patch["spec"] = {"template": wanted["spec"]["template"]}
    # The wanted count is at most maxReplicas (100): two equal counts are then small ints, one
    # object each in CPython, and unequal ones differ either way: `is not` for `!=` cannot
    # change the result.
    if found.replicas != wanted["spec"]["replicas"]:  # pragma: no mutate: *_NotEq_IsNot
        patch.setdefault("spec", {})["replicas"] = wanted["spec"]["replicas"]
    return patch or None


# -- the size ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Size:
    """How many workers the pool is scaled to, since when its demand has filled it, and when the
    decision must be looked at again (a scale-down that falls due)."""

    desired: int
    last_active: datetime.datetime | None
    recheck_at: datetime.datetime | None = None


def _clamp(value: int, spec: protocol.CompositionPoolSpec) -> int:
    return max(spec.min_replicas, min(spec.max_replicas, value))


def size(
    spec: protocol.CompositionPoolSpec,
    *,
    current: int | None,
    demand: int,
    last_active: datetime.datetime | None,
    now: datetime.datetime,
) -> Size:
    """The pool's size from its demand (queued + running jobs) and its current size.

    ``last_active`` is the last time the demand needed every worker the pool had."""
    # "external" sorts before "operator", the only other value: `<=` for `==` cannot change it.
    if spec.scaling == protocol.Scaling.EXTERNAL:  # pragma: no mutate: *_Eq_LtE
        wanted = spec.replicas if spec.replicas is not None else spec.min_replicas
        # A demand is a count, never negative: `!=` for `>` cannot change the result.
        active = now if demand > 0 else last_active  # pragma: no mutate: *_Gt_NotEq
        return Size(_clamp(wanted, spec), active)
    target = _clamp(demand, spec)
    have = _clamp(current if current is not None else spec.min_replicas, spec)
    if target >= have:
        # A demand is a count, never negative: `!=` for `>` cannot change the result.
        filled = demand >= have and demand > 0  # pragma: no mutate: *_Gt_NotEq
        return Size(target, now if filled else last_active)
    delay = datetime.timedelta(seconds=spec.scale_to_zero_after_seconds)
    if last_active is None or now - last_active >= delay:
        return Size(target, last_active)
    return Size(have, last_active, recheck_at=last_active + delay)


# -- the status -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workers:
    """The pool's workers by state, from their Leases and the jobs assigned to them
    (``busy_instances``: holder identities, ``<pod>/<instance>``)."""

    ready: int = 0  # fresh Lease: loaded and warmed up
    busy: int = 0  # ready, with a job assigned
    idle: int = 0  # ready, takes work, nothing assigned
    draining: int = 0  # ready, finishing its job, takes no new one


def count_workers(
    leases: Sequence[protocol.WorkerLease],
    busy_instances: Collection[str],
    now: datetime.datetime,
) -> Workers:
    fresh = [lease for lease in leases if lease.fresh(now)]

    def busy_one(lease: protocol.WorkerLease) -> bool:
        return protocol.holder_identity(lease.pod, lease.instance) in busy_instances

    busy = [lease for lease in fresh if busy_one(lease)]
    # "draining" sorts before "ready", the only other state a worker writes: `<=` for `==`
    # cannot change the result.
    draining = [
        lease
        for lease in fresh
        if lease.state == protocol.STATE_DRAINING  # pragma: no mutate: *_Eq_LtE
    ]
    # A worker writes its state as "ready" or "draining" only, and "draining" sorts before
    # "ready": `>=` for `==` cannot change the result.
    idle = [
        lease
        for lease in fresh
        if lease.state == protocol.STATE_READY  # pragma: no mutate: *_Eq_GtE
        and not busy_one(lease)
    ]
    return Workers(ready=len(fresh), busy=len(busy), idle=len(idle), draining=len(draining))


def problem_of(
    pods: Sequence[WorkerPod], deployment: DeploymentView | None = None
) -> tuple[str, str] | None:
    """Why the pool's workers do not start, if they do not: the first pod with a problem, else
    the pods its Deployment cannot create (``PodCreateFailed``)."""
    for pod in sorted(pods, key=lambda item: item.name):
        if pod.problem is not None and not pod.deleting:
            return pod.problem
    if deployment is not None and deployment.replica_failure is not None:
        message = f"the workers' pods cannot be created: {deployment.replica_failure}"
        return models.Reason.POD_CREATE_FAILED, message
    return None


def rejected(
    pool: PoolView, reason: str, message: str, *, now: datetime.datetime
) -> protocol.CompositionPoolStatus:
    """The status of a pool whose spec is invalid or whose profile is unknown."""
    conditions = _conditions(
        pool,
        [
            (CT.ACCEPTED, models.ConditionStatus.FALSE, reason, message),
            (CT.AVAILABLE, models.ConditionStatus.FALSE, reason, message),
        ],
        now,
    )
    return pool.status.model_copy(
        update={
            "observed_generation": pool.generation,
            "conditions": conditions,
            "message": message,
        }
    )


def compute_status(
    pool: PoolView,
    *,
    deployment: DeploymentView | None,
    workers: Workers,
    queued: int,
    running: int,
    scaled: Size,
    problem: tuple[str, str] | None,
    now: datetime.datetime,
) -> protocol.CompositionPoolStatus:
    """The pool's status: conditions (Accepted, Available), sizes and worker counts."""
    true, false = models.ConditionStatus.TRUE, models.ConditionStatus.FALSE
    existing = deployment.existing if deployment is not None else 0
    available: tuple[protocol.PoolConditionType, models.ConditionStatus, str, str]
    # A count, never negative: `!=` for `>` cannot change the result.
    if workers.ready > 0:  # pragma: no mutate: *_Gt_NotEq
        available = (
            CT.AVAILABLE,
            true,
            PR.WORKERS_READY,
            f"{workers.ready} of {scaled.desired} workers ready"
            if workers.ready <= scaled.desired
            else f"{workers.ready} workers ready, scaling down to {scaled.desired}",
        )
    # A size, never negative: `<=` for `==` cannot change the result.
    elif scaled.desired == 0:  # pragma: no mutate: *_Eq_LtE
        available = (
            CT.AVAILABLE,
            false,
            PR.SCALED_TO_ZERO,
            "no worker: the pool starts one for the next job",
        )
    else:
        detail = f": {problem[1]}" if problem else ""
        reason = problem[0] if problem else PR.WORKERS_STARTING
        available = (CT.AVAILABLE, false, reason, f"0 of {scaled.desired} workers ready{detail}")
    conditions = _conditions(pool, [(CT.ACCEPTED, true, PR.VALID, ""), available], now)
    message = available[3]
    return protocol.CompositionPoolStatus(
        observed_generation=pool.generation,
        conditions=conditions,
        message=message,
        replicas=existing,
        desired_replicas=scaled.desired,
        ready_workers=workers.ready,
        busy_workers=workers.busy,
        idle_workers=workers.idle,
        draining_workers=workers.draining,
        queued=queued,
        running=running,
        selector=selector(pool.name),
        last_active_time=scaled.last_active,
    )


def _conditions(
    pool: PoolView,
    wanted: Sequence[tuple[protocol.PoolConditionType, models.ConditionStatus, str, str]],
    now: datetime.datetime,
) -> list[protocol.PoolCondition]:
    """Conditions keep their lastTransitionTime while their status does not change."""
    old = {item.type: item for item in pool.status.conditions}
    result = []
    for kind, state, reason, message in wanted:
        before = old.get(kind)
        same = before is not None and before.status == state
        result.append(
            protocol.PoolCondition(
                type=kind,
                status=state,
                reason=str(reason),
                message=message,
                last_transition_time=before.last_transition_time if same and before else now,
                observed_generation=pool.generation,
            )
        )
    return result


def status_patch(
    new: protocol.CompositionPoolStatus, old: protocol.CompositionPoolStatus
) -> dict[str, Any] | None:
    """A merge patch for the pool's ``status`` (None: nothing changed)."""
    return status.to_patch(new, old)


def counts_only(new: protocol.CompositionPoolStatus, old: protocol.CompositionPoolStatus) -> bool:
    """Whether only the counts changed (conditions and size as before): such a write may wait."""
    keep = {"conditions", "desired_replicas", "observed_generation", "selector"}
    return new.model_dump(include=keep) == old.model_dump(include=keep)
