"""Typed views of the observed objects, read once from the raw API dicts.

The watch handlers hand the :class:`~compose_operator.inventory.Inventory` raw bodies; it turns
each child Job into a :class:`JobView` and each CompositionJob into the few fields the queue
needs (:func:`queue_fields`) as they arrive, so that no decision digs in dicts again. The pure
:func:`compose_operator.plan.plan` reads an :class:`Observed`: the CompositionJob as validated
models, its Jobs as views, its pods and their nodes. Plain data and no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

import pydantic

from compose_api import models
from compose_api import pools as protocol
from compose_operator import builders, names, pooljobs, pools, status

Obj = Mapping[str, Any]
_DEFAULT_PROFILE = str(models.CompositionJobSpec.model_fields["profile"].default)


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    return meta


def _true(obj: Obj, *kinds: str) -> bool:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") in kinds and item.get("status") == "True":
            return True
    return False


@dataclasses.dataclass(frozen=True)
class JobView:
    """One child Job: what the reconciler, the queue and the status mapping read of it."""

    name: str
    namespace: str
    owner: str  # the CompositionJob's uid, from the child label
    attempt: int
    suspended: bool
    held_by_operator: bool  # suspended by the operator for spec.suspend (annotated)
    replaces: str | None  # the Job it waits, suspended, to replace (see plan._replacement)
    finished: bool  # Complete or Failed, as the Job controller sees it
    deleting: bool
    spec_hash: str | None
    seed: int | None
    body: Mapping[str, Any]  # the slim body the status mapping reads

    @property
    def live(self) -> bool:
        """Not finished as the Job controller sees it, and not being deleted."""
        return not (self.finished or self.deleting)


_KEPT_SPEC = ("suspend", "nodeName")  # all the status mapping reads of a Job's or Pod's spec
_DROPPED_METADATA = frozenset({"managedFields"})
# A Job's pod counters: nothing reads them (the pods themselves are watched).
_DROPPED_STATUS = frozenset({"active", "ready", "terminating", "succeeded", "failed",
                             "uncountedTerminatedPods"})  # fmt: skip
# What changes with every write and says nothing about the object's state.
_VOLATILE_METADATA = frozenset({"resourceVersion", "generation", "finalizers"})


def slim(obj: Obj) -> dict[str, Any]:
    """A child as the status mapping reads it: without managedFields, without its pod
    template (which carries the job document) and without a Job's pod counters, so that
    thousands of them stay small."""
    kept = dict(obj)
    meta = kept.get("metadata")
    if isinstance(meta, Mapping) and not _DROPPED_METADATA.isdisjoint(meta):
        kept["metadata"] = {k: v for k, v in meta.items() if k not in _DROPPED_METADATA}
    spec = kept.get("spec")
    if isinstance(spec, Mapping):
        kept["spec"] = {k: spec[k] for k in _KEPT_SPEC if k in spec}
    state = kept.get("status")
    if isinstance(state, Mapping) and not _DROPPED_STATUS.isdisjoint(state):
        kept["status"] = {k: v for k, v in state.items() if k not in _DROPPED_STATUS}
    return kept


def same(old: Obj, new: Obj) -> bool:
    """Whether two slim bodies of one child say the same (its resourceVersion, generation and
    finalizers aside): an event that changes nothing a decision reads needs no reconcile."""
    if old.get("status") != new.get("status") or old.get("spec") != new.get("spec"):
        return False
    before, after = _meta(old), _meta(new)
    # `^` for `-` adds only volatile keys that neither body has, equal (None) on both sides.
    keys = (before.keys() | after.keys()) - _VOLATILE_METADATA  # pragma: no mutate: *_Sub_BitXor
    return all(before.get(key) == after.get(key) for key in keys)


def owner_uid(obj: Obj) -> str | None:
    """The CompositionJob a child belongs to, from its label."""
    value = (_meta(obj).get("labels") or {}).get(names.UID_LABEL)
    return str(value) if value else None


def job_attempt(obj: Obj) -> int:
    """The attempt number a child Job was built for (from its label)."""
    try:
        return int((_meta(obj).get("labels") or {}).get(names.ATTEMPT_LABEL, 0))
    except (TypeError, ValueError):
        return 0


def view_job(obj: Obj) -> JobView:
    meta = _meta(obj)
    annotations = meta.get("annotations") or {}
    suspended = bool((obj.get("spec") or {}).get("suspend"))
    seed_text = annotations.get(builders.SEED_ANNOTATION)
    try:
        seed = int(seed_text) if seed_text is not None else None
    except ValueError:
        seed = None
    return JobView(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or ""),
        owner=owner_uid(obj) or "",
        attempt=job_attempt(obj),
        suspended=suspended,
        held_by_operator=suspended and names.SUSPENDED_ANNOTATION in annotations,
        replaces=annotations.get(names.REPLACES_ANNOTATION) if suspended else None,
        finished=_true(obj, "Complete", "Failed"),
        deleting=bool(meta.get("deletionTimestamp")),
        spec_hash=annotations.get(builders.SPEC_HASH_ANNOTATION),
        seed=seed,
        body=slim(obj),
    )


@dataclasses.dataclass(frozen=True)
class SpecView:
    """A CompositionJob's spec as validated (None and ``error`` when it does not validate), and
    the digest its Jobs carry (:func:`compose_operator.builders.spec_hash`), read once per
    ``generation``: the API server bumps it on every change of the spec."""

    generation: int | None
    spec: models.CompositionJobSpec | None
    error: str | None
    digest: str | None


def read_spec(body: Obj) -> SpecView:
    generation = _meta(body).get("generation")
    known = generation if isinstance(generation, int) else None
    try:
        spec = models.CompositionJobSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as problem:
        return SpecView(known, None, models.describe_validation_error(problem), None)
    return SpecView(known, spec, None, builders.spec_hash(spec))


@dataclasses.dataclass(frozen=True)
class QueueFields:
    """What the queue reads of a CompositionJob, taken from its body once per event."""

    namespace: str
    name: str
    owner: str
    priority: int
    created: datetime.datetime | None
    kueue: bool  # execution.queueName: Kueue admits it, the operator's caps do not apply
    suspend: bool
    pool: str | None = None  # execution.pool
    profile: str = ""


def queue_fields(body: Obj) -> QueueFields:
    meta = _meta(body)
    spec = body.get("spec") or {}
    execution = spec.get("execution") or {}
    try:
        priority = int(execution.get("priority") or 0)
    except (TypeError, ValueError):
        priority = 0  # an invalid spec is rejected by the reconciler, never admitted
    try:
        created = status.parse_time(meta.get("creationTimestamp"))
    except ValueError:
        created = None
    return QueueFields(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        owner=str((meta.get("labels") or {}).get(names.OWNER_LABEL) or ""),
        priority=priority,
        created=created,
        kueue=bool(execution.get("queueName")),
        suspend=bool(spec.get("suspend")),
        pool=str(execution["pool"]) if execution.get("pool") else None,
        profile=str(spec.get("profile") or _DEFAULT_PROFILE),
    )


@dataclasses.dataclass(frozen=True)
class Observed:
    """Everything one decision about one CompositionJob reads.

    ``spec`` is None when the spec does not validate (``spec_error`` says why). ``jobs`` are the
    child Jobs, latest attempt first; ``pods`` those of the latest Job. ``listed`` says that
    jobs and pods come from a fresh list, not only from the watch; ``pods_waited`` that the
    wait for the pod watch to catch up with a finished Job is over. ``queue`` is the job's
    place under the caps when it may not start now (None: it may). ``since_last_write`` is how
    long ago this process last wrote the job's status (None: never)."""

    meta: models.ObjectMeta
    previous: models.CompositionJobStatus
    spec: models.CompositionJobSpec | None
    spec_error: str | None
    jobs: tuple[JobView, ...] = ()
    pods: tuple[Mapping[str, Any], ...] = ()
    nodes: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    queue: status.Queue | None = None
    capped: bool = False  # the job is under the operator's caps (not Kueue, caps set)
    listed: bool = False
    pods_waited: bool = False
    since_last_write: float | None = None
    spec_hash: str | None = None  # the spec's digest, when the reconciler has it at hand
    refusal: status.Refusal | None = None  # the Job controller's latest FailedCreate for a Job
    # Pool mode: the pool that runs the job (None: Job mode) and what the decision reads of it.
    pool_name: str | None = None
    pool: pools.PoolView | None = None  # None: no such pool in the namespace
    pool_problem: tuple[str, str] | None = None  # why the pool's workers do not start
    worker_report: models.WorkerReport | None = None  # status.workerReport, as last seen
    lease: protocol.WorkerLease | None = None  # the Lease of the assigned worker
    lease_checked: bool = False  # ``lease`` was read from the API server for this decision
    worker_disrupted: str | None = None  # the assigned worker's pod is a disruption target
    offer: pooljobs.Offer | None = None  # an idle worker reserved for this job

    @property
    def job(self) -> JobView | None:
        return self.jobs[0] if self.jobs else None

    def composition(self) -> models.CompositionJob:
        if self.spec is None:
            raise ValueError("spec: invalid, no CompositionJob to build")
        return models.CompositionJob(metadata=self.meta, spec=self.spec, status=self.previous)
