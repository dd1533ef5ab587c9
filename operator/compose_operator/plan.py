"""The decision for one CompositionJob: ``plan(observed, now, settings) -> Plan``, pure.

:mod:`compose_operator.reconciler` reads the observed objects into an
:class:`~compose_operator.observed.Observed`, calls :func:`plan`, and only executes what comes
back, in order: status writes, Job creates, deletes and suspensions. A plan may instead ask for
something it needs first (a fresh list of the children, or a moment for the pod watch to catch
up); the reconciler gets it and plans again. Time comes in as ``now`` (and ``since_last_write``
in the observation), so every path is unit-tested without a cluster or a clock.

Restart safety comes from the order of the actions: the seed, the admission and the intent to
create the Job are written to status before the Job is created, so a restart that finds no Job
can tell one never created (create it) from one that finished and was TTL-deleted meanwhile
(lost, never run twice); the Job's name is deterministic, so a create after a crash gets 409 and
adopts the Job it finds; a terminal status is never recomputed. Two exceptions, by choice, when
``job_ttl_seconds`` is long enough that only a long outage at the wrong moment could make a job
run twice: a job that waited behind the caps is admitted without a write of its own
(:func:`_quiet_admission`), its ``Queued`` record standing for the intent; and a new job's
intent is sent with its Job's create, not before it (:func:`_intent_with_create`).

Writes per job are few by design: a waiting job is written when it starts waiting and then only
when its position has changed and ``queue_position_refresh_seconds`` have passed; its admission
is shown with its start; progress within a phase is coalesced (``status_coalesce_seconds``);
Events go with the transitions a user reads (:func:`compose_operator.status.event_for`).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping, Sequence
from typing import Any

from compose_api import models, profiles
from compose_api import pools as protocol
from compose_operator import builders, names, pooljobs, status
from compose_operator.observed import JobView, Observed
from compose_operator.settings import OperatorSettings

# How long a finished Job waits for the pod watch to show its pods finished before the pods are
# listed from the API server instead (the Job's and the pods' watches are separate streams).
# A tuning value: any positive wait decides the same (on the pods' events, or on a fresh list).
POD_CATCH_UP_SECONDS = 5.0  # pragma: no mutate: NumberReplacer

# The shortest ``job_ttl_seconds`` with which a Job may be created before its intent is on
# record (a job that waited behind the caps, :func:`_quiet_admission`; a new job's intent sent
# with its create, :func:`_intent_with_create`): a job could then run twice only if the
# operator stopped right after creating its Job and stayed down for longer than this (a
# crash-looping operator is restarted at least every five minutes).
UNRECORDED_CREATE_MIN_TTL_SECONDS = 600


@dataclasses.dataclass(frozen=True)
class WriteStatus:
    """Merge-patch the status (nothing when it did not change), then post the Event, if any.

    ``conditional``: only if the CompositionJob is still at the resourceVersion the decision
    read (a pool worker may have written its report since): a 409 makes the reconciler read the
    job again and plan anew."""

    outcome: status.Outcome
    event: status.Event | None
    conditional: bool = False


@dataclasses.dataclass(frozen=True)
class CreateJob:
    manifest: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclasses.dataclass(frozen=True)
class SuspendJob:
    """Suspend the Job for the user (marked as the operator's doing), or undo that."""

    name: str
    suspended: bool


Action = WriteStatus | CreateJob | DeleteJob | SuspendJob


class Need(enum.Enum):
    """Something the plan must see before it can decide."""

    LIST = "list"  # the children from the API server, not only from the watch
    PODS = "pods"  # a moment for the pod watch to catch up with a finished Job
    LEASE = "lease"  # the assigned worker's Lease from the API server, before calling it lost


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do, in order. ``admit``: the plan takes a slot under the caps (the reconciler
    marks it taken before acting); ``later``: plan again in that many seconds (a coalesced
    write); ``recheck_at``: a time-based decision (the start deadline) falls due then;
    ``together``: the actions (an intent and its Job's create) are sent at once, not in order
    (:func:`_intent_with_create`)."""

    actions: tuple[Action, ...] = ()
    need: Need | None = None
    admit: bool = False
    later: float | None = None
    recheck_at: datetime.datetime | None = None
    take_offer: bool = False  # pool mode: the plan assigns the job to the offered worker
    together: bool = False


def plan(observed: Observed, now: datetime.datetime, settings: OperatorSettings) -> Plan:
    previous = observed.previous
    if previous.phase in models.TERMINAL_PHASES:
        return Plan()  # terminal stays terminal, whatever happens to the children
    generation = observed.meta.generation
    if observed.spec is None:
        message = observed.spec_error or "spec: invalid"
        reason = models.Reason.INVALID_SPEC
        return _written(previous, status.rejected(previous, generation, reason, message, now=now))
    cj = observed.composition()
    profile = settings.profiles.get(cj.spec.profile)
    problem = _problem(cj, profile, settings)
    if problem is not None or profile is None:
        reason, message = problem or (models.Reason.UNKNOWN_PROFILE, "")
        return _written(previous, status.rejected(previous, generation, reason, message, now=now))
    seed = builders.choose_seed(cj)
    job = observed.job
    if job is None and (observed.pool_name is not None or previous.assignment is not None):
        return _pool(observed, cj, seed, now, settings)
    if job is None:
        if previous.attempts or _has(previous, models.ConditionType.STARTED):
            if not observed.listed:
                return Plan(need=Need.LIST)  # the Job watch may lag behind the status
            if not _never_created(previous, now, settings):
                last = previous.attempts[-1].job_name if previous.attempts else None
                lost = last or names.job_name(cj.metadata.name, cj.metadata.uid or "", 0)
                return _written(previous, status.lost(cj, lost, now=now))
        return _start(observed, cj, profile, seed, now, settings)
    return _follow(observed, cj, profile, job, seed, now, settings)


def _start(
    observed: Observed,
    cj: models.CompositionJob,
    profile: profiles.ModelProfile,
    seed: int,
    now: datetime.datetime,
    settings: OperatorSettings,
) -> Plan:
    """No Job yet: wait (held by the user or behind the caps), or record the intent and
    create it."""
    job_name = names.job_name(cj.metadata.name, cj.metadata.uid or "", 0)
    queue = observed.queue
    outcome = status.waiting(cj, seed=seed, queue=queue, now=now, creating=job_name)
    if queue is not None or cj.spec.suspend:
        if _position_only(observed, outcome, settings):
            return Plan()
        return _written(observed.previous, outcome)
    started = cj.model_copy(update={"status": outcome.status})
    manifest = builders.build_job(started, profile, settings, 0, seed)
    if _quiet_admission(observed, settings):
        return Plan((CreateJob(manifest),), admit=True)
    write = WriteStatus(outcome, status.event_for(observed.previous, outcome))
    return Plan(
        (write, CreateJob(manifest)),
        admit=observed.capped,
        together=_intent_with_create(settings),
    )


def _follow(
    observed: Observed,
    cj: models.CompositionJob,
    profile: profiles.ModelProfile,
    job: JobView,
    seed: int,
    now: datetime.datetime,
    settings: OperatorSettings,
) -> Plan:
    """A Job exists: keep it in line with the spec, and map what it shows to status."""
    previous = observed.previous
    actions: list[Action] = [DeleteJob(stale.name) for stale in observed.jobs[1:]]
    if _needs_rebuild(cj, job, observed.pods, observed.spec_hash):
        # The spec changed before any pod ran: the next attempt runs the new spec. Create
        # first, then delete, so that a crash in between leaves a Job to adopt.
        manifest = builders.build_job(cj, profile, settings, job.attempt + 1, seed)
        replacement = _replacement(manifest, cj, job, observed.capped)
        return Plan((*actions, CreateJob(replacement), DeleteJob(job.name)))
    if job.replaces is not None and any(other.live for other in observed.jobs[1:]):
        return Plan(tuple(actions))  # the slot is the replaced Job's until that one is gone
    body: Mapping[str, Any] = job.body
    held_back: status.Queue | None = None  # a resumed Job waiting for a slot under the caps
    admit = False
    if cj.spec.suspend and (not job.suspended or job.replaces is not None):
        actions.append(SuspendJob(job.name, True))
        body = suspended(body, True)
    elif job.replaces is not None:
        # The Job it replaces is gone: it runs in the slot that one held.
        actions.append(SuspendJob(job.name, False))
        body = suspended(body, False)
    elif not cj.spec.suspend and job.held_by_operator:
        # Resuming undoes only a suspension the operator made: a Job that Kueue holds stays
        # suspended until Kueue admits it. Under the caps it waits for a slot like any job.
        if observed.queue is not None:
            held_back = observed.queue
        else:
            actions.append(SuspendJob(job.name, False))
            body = suspended(body, False)
            admit = observed.capped
    if job.seed is not None:
        seed = job.seed  # the seed the Job runs with, which later spec edits do not change
    elif previous.seed is not None:
        seed = previous.seed
    pods = observed.pods
    if not pods and previous.attempts and not observed.listed:
        return Plan(need=Need.LIST)  # right after a restart the pod watch may lag
    outcome = status.compute(
        cj,
        body,
        pods,
        now=now,
        settings=settings,
        seed=seed,
        nodes=observed.nodes,
        queue=held_back,
        refusal=observed.refusal,
    )
    if outcome.terminal and not settled(pods, outcome):
        # A terminal status is final: decide it on fresh pods, not on a watch that may lag
        # behind the Job's (the result and the exit code live in the pods). The pods' own
        # events are usually a moment behind the Job's: wait for them rather than list, unless
        # the wait is over or the Job is ours to stop.
        if pods and not outcome.stop_job and not observed.pods_waited:
            return Plan(need=Need.PODS)
        if not observed.listed:
            return Plan(need=Need.LIST)
    if outcome.stop_job:
        actions.append(DeleteJob(job.name))
    recheck = status.start_deadline_at(cj, body, outcome)
    if held_back is not None and _position_only(observed, outcome, settings):
        return Plan(tuple(actions), admit=admit, recheck_at=recheck)
    wait = _coalesce_wait(observed, outcome, settings)
    if wait is None and not admit:  # a resumed Job let go now is written now
        wait = _admitted_wait(observed, outcome, job, now, settings)
    if wait is not None:
        return Plan(tuple(actions), admit=admit, later=wait, recheck_at=recheck)
    write = WriteStatus(outcome, status.event_for(previous, outcome))
    return Plan((*actions, write), admit=admit, recheck_at=recheck)


def _written(previous: models.CompositionJobStatus, outcome: status.Outcome) -> Plan:
    return Plan((WriteStatus(outcome, status.event_for(previous, outcome)),))


def _position_only(observed: Observed, outcome: status.Outcome, settings: OperatorSettings) -> bool:
    """A job that was already waiting and still is, whose only change is its position: not
    written until ``queue_position_refresh_seconds`` have passed since its last write."""
    previous = observed.previous
    # A change of phase is a change of some condition (derive_phase), so a transition, which
    # returns False below: `<` or `>` for either `!=` cannot change the result, nor can `is`
    # (a phase is the enum's plain string value, never the member itself: `is` is always
    # False, which leaves the other test, and the transitions catch the rest), nor `and` for
    # `or` (one side Queued and the other not is a change of phase).
    queued = models.Phase.QUEUED
    if (
        previous.phase != queued  # pragma: no mutate: *_NotEq_[GLI][ts]
        or outcome.status.phase != queued  # pragma: no mutate: *_NotEq_[GLI][ts], *OrWithAnd
    ):
        return False
    if outcome.transitions or previous.queue_position is None:
        return False
    if _apart_from_place(outcome.status) != _apart_from_place(previous):
        return False  # an edit (observedGeneration), or a new attempt's Job named
    refresh = settings.queue_position_refresh_seconds
    # The settings refuse a negative refresh (ge=0): `==` for `<=` cannot change the result.
    if refresh <= 0:  # pragma: no mutate: *_LtE_Eq
        return True
    since = observed.since_last_write
    return since is not None and since < refresh


def _apart_from_place(written: models.CompositionJobStatus) -> models.CompositionJobStatus:
    """A waiting job's status less what its place in the queue sets: the position and the
    messages that give it."""
    queued = models.ConditionType.QUEUED
    conditions = [
        c.model_copy(update={"message": ""}) if c.type == queued else c for c in written.conditions
    ]
    update = {"queue_position": None, "message": None, "conditions": conditions}
    return written.model_copy(update=update)


def _coalesce_wait(
    observed: Observed, outcome: status.Outcome, settings: OperatorSettings
) -> float | None:
    """Seconds to defer a progress-only write (same phase, not terminal) that comes within
    ``status_coalesce_seconds`` of the job's last write, so that a pod going through several
    states in quick succession costs one status patch, not one each. A starting Job's normal
    progress (created, scheduling, pulling its image) waits ``starting_progress_seconds``: the
    ``Running`` write that usually comes first carries it, so a job that starts within that
    time costs no write for it; a warning, and the progress that clears one, keep the short
    window. Phase changes, terminal outcomes and stopped Jobs are written at once. None: write
    now."""
    window = settings.status_coalesce_seconds
    if _normal_start(observed.previous, outcome):
        window = max(window, settings.starting_progress_seconds)
    since = observed.since_last_write
    # The window is never negative (settings), and at 0 the wait below is never positive:
    # `<` or `==` for `<=`, or another bound at or below 0, cannot change the result.
    if (
        window <= 0  # pragma: no mutate: *_LtE_Lt, *_LtE_Eq, NumberReplacer
        or since is None
        or outcome.terminal
        # A stopped Job's outcome is terminal, and a terminal outcome is a change of phase (a
        # terminal status is never planned again): `and` for this `or` cannot change the result.
        or outcome.stop_job  # pragma: no mutate: ReplaceOrWithAnd
        # Phases are validated into the enum's own value strings (use_enum_values), so equal
        # phases are one object: `is not` for `!=` cannot change the result.
        or outcome.status.phase != observed.previous.phase  # pragma: no mutate: *_NotEq_IsNot
        or any(t.warning for t in outcome.transitions)
    ):
        return None
    wait = window - since
    if wait <= 0 or status.to_patch(outcome.status, observed.previous) is None:
        return None
    return wait


def _intent_with_create(settings: OperatorSettings) -> bool:
    """Whether a job's intent is sent with its Job's create, rather than before it: when
    ``job_ttl_seconds`` is long enough, as for a quiet admission. The create then does not wait
    for the write's round trip (on a busy API server, the larger part of a new job's wait for
    its Job). Should the operator stop after the create and before the write lands, a restart
    finds the Job and adopts it; only if it stayed down until the Job had run and its TTL had
    deleted it would the job run again (same seed, same output key)."""
    return settings.job_ttl_seconds >= UNRECORDED_CREATE_MIN_TTL_SECONDS


def _quiet_admission(observed: Observed, settings: OperatorSettings) -> bool:
    """Whether a job admitted now creates its Job without writing its intent first: it waited
    behind the caps (its ``Queued`` record, with its seed, was written before), and the Job's
    TTL is long. The record written when it began to wait stands for the intent: a restart
    that finds no Job for it queues it again, which is right unless the Job was created, ran
    and was deleted by its TTL while the operator was down, so only an outage longer than the
    TTL, starting within moments of the create, could run it twice. Its admission is shown
    with its start (:func:`_admitted_wait`). That saves a job that waits one status write: it
    costs as many as one that never waits."""
    previous = observed.previous
    if not observed.capped or settings.job_ttl_seconds < UNRECORDED_CREATE_MIN_TTL_SECONDS:
        return False
    if previous.attempts or status.intent(previous.conditions) is not None:
        return False
    return _waiting_for_capacity(previous)


def _waiting_for_capacity(previous: models.CompositionJobStatus) -> bool:
    """Written as waiting for a slot under the operator's caps (not for Kueue, not held)."""
    if previous.phase != models.Phase.QUEUED:
        return False
    # Conditions are kept in their type order (Accepted, Queued, Started, ...), so the first at
    # or after Queued is Queued itself, which a Queued phase has: `>=` for `==` cannot change it.
    kinds = models.ConditionType
    queued = next(
        (c for c in previous.conditions if c.type == kinds.QUEUED),  # pragma: no mutate: *_Eq_GtE
        None,
    )
    return queued is not None and queued.reason == models.Reason.WAITING_FOR_CAPACITY


def _admitted_wait(
    observed: Observed,
    outcome: status.Outcome,
    job: JobView,
    now: datetime.datetime,
    settings: OperatorSettings,
) -> float | None:
    """Seconds to hold the first write of a job admitted quietly (:func:`_quiet_admission`):
    its status still shows it waiting while its Job starts as usual, and the write that shows
    it starting waits ``starting_progress_seconds`` from the Job's creation, so that a Job
    whose pod runs within that time shows its admission with its ``Running`` write, as an
    uncapped job shows its Job's normal progress. A warning, a stop and an end are written at
    once. None: write now."""
    previous = observed.previous
    if outcome.status.phase != models.Phase.STARTING or not _waiting_for_capacity(previous):
        return None
    if any(t.warning for t in outcome.transitions):  # a stopped Job's outcome is terminal
        return None
    created = status.parse_time((job.body.get("metadata") or {}).get("creationTimestamp"))
    if created is None:
        return None
    window = max(settings.starting_progress_seconds, settings.status_coalesce_seconds)
    wait = window - (now - created).total_seconds()
    return wait if wait > 0 else None


def _normal_start(previous: models.CompositionJobStatus, outcome: status.Outcome) -> bool:
    """Starting before and after, with no warning shown before (one being cleared is news)."""
    if previous.phase != models.Phase.STARTING or outcome.status.phase != models.Phase.STARTING:
        return False
    return not any(c.reason in status.WARNING_REASONS for c in previous.conditions)


def _problem(
    cj: models.CompositionJob, profile: profiles.ModelProfile | None, settings: OperatorSettings
) -> tuple[models.Reason, str] | None:
    if profile is None:
        known = ", ".join(sorted(settings.profiles)) or "none configured"
        return (
            models.Reason.UNKNOWN_PROFILE,
            f"spec.profile: unknown profile {cj.spec.profile!r} (known: {known})",
        )
    try:
        builders.output_bucket(cj, settings)
    except builders.BuildError as error:
        return models.Reason.INVALID_SPEC, str(error)
    return None


def _never_created(
    previous: models.CompositionJobStatus, now: datetime.datetime, settings: OperatorSettings
) -> bool:
    """No Job is found although status records the intent to create one: whether it was
    never created (a crash between the intent and the create), so creating it is safe.

    A Job created after the intent was recorded finishes later still, and its TTL deletes
    it no sooner than ``job_ttl_seconds`` after that: within that time a missing Job was
    never created. Later, it may have run to the end and been deleted: the job is lost.
    An intent that records the API server's refusal of the create (JobCreateFailed) was
    never followed by a Job, however old: tries again write nothing before their create,
    and the first that succeeds is written within moments (the refusal is a warning, which
    the Job's progress clears at once)."""
    found = status.intent(previous.conditions)
    if found is None or previous.attempts:
        return False
    # An intent's reason is JobCreated or JobCreateFailed, and "JobCreated" sorts after
    # "JobCreateFailed": `<=` for `==` cannot change the result.
    if found.reason == models.Reason.JOB_CREATE_FAILED:  # pragma: no mutate: *_Eq_LtE
        return True
    return (now - found.last_transition_time).total_seconds() < settings.job_ttl_seconds


def _needs_rebuild(
    cj: models.CompositionJob,
    job: JobView,
    pods: Sequence[Mapping[str, Any]],
    digest: str | None = None,
) -> bool:
    """Params or execution changed, and no pod of the Job has started yet. ``digest``: the
    spec's, when the caller has it (else it is computed)."""
    if job.spec_hash is None or job.spec_hash == (digest or builders.spec_hash(cj.spec)):
        return False
    if cj.status.start_time is not None:
        return False
    return not any(status.view_pod(pod).ran for pod in pods)


def _replacement(
    manifest: dict[str, Any], cj: models.CompositionJob, job: JobView, capped: bool
) -> dict[str, Any]:
    """The next attempt's Job, held as the Job it replaces was. For a job that is suspended,
    or waits for a slot under the caps: suspended by the operator. For a job that holds a slot
    under the caps: created suspended, marked as replacing the old Job, and let go once that
    one is gone, so that the two never run side by side and the namespace never has more
    unfinished Jobs than the cap. Kueue's are created suspended for Kueue to admit; without
    caps nothing is held."""
    if cj.spec.execution.queue_name:
        return manifest
    if cj.spec.suspend or job.held_by_operator:
        return suspended(manifest, True)
    if not capped:
        return manifest
    meta = manifest["metadata"]
    annotations = {**meta["annotations"], names.REPLACES_ANNOTATION: job.name}
    return {
        **manifest,
        "metadata": {**meta, "annotations": annotations},
        "spec": {**manifest["spec"], "suspend": True},
    }


def suspended(job: Mapping[str, Any], value: bool) -> dict[str, Any]:
    """``job`` as :class:`SuspendJob` leaves it (the merge patch of the reconciler): held by
    the operator, or let go, and in either case no longer waiting for a Job it replaced."""
    meta = dict(job.get("metadata") or {})
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(names.REPLACES_ANNOTATION, None)
    if value:
        annotations[names.SUSPENDED_ANNOTATION] = "true"
    else:
        annotations.pop(names.SUSPENDED_ANNOTATION, None)
    meta["annotations"] = annotations
    return {**job, "metadata": meta, "spec": {**(job.get("spec") or {}), "suspend": value}}


def suspend_patch(value: bool) -> dict[str, Any]:
    """The merge patch that :func:`suspended` describes."""
    mark = "true" if value else None
    return {
        "metadata": {
            "annotations": {names.SUSPENDED_ANNOTATION: mark, names.REPLACES_ANNOTATION: None}
        },
        "spec": {"suspend": value},
    }


def settled(pods: Sequence[Mapping[str, Any]], outcome: status.Outcome) -> bool:
    """Whether the watched pods already tell the whole story of a terminal outcome."""
    if not pods:
        return False
    # compute() returns Succeeded only with a result (status._failure fails a complete Job
    # without one), and only terminal outcomes (Succeeded, Failed) come here: `>`, `>=` or `is`
    # for `==`, or True for the False below, cannot change the result.
    done = outcome.status.phase == models.Phase.SUCCEEDED  # pragma: no mutate: *_Eq_Gt*,*_Eq_Is
    if done and outcome.status.result is None:
        return False  # pragma: no mutate: ReplaceFalseWithTrue
    finished = {models.AttemptOutcome.SUCCEEDED, models.AttemptOutcome.FAILED,
                models.AttemptOutcome.INTERRUPTED}  # fmt: skip
    return all(status.view_pod(pod).outcome in finished for pod in pods)


def _has(current: models.CompositionJobStatus, kind: models.ConditionType) -> bool:
    return any(c.type == kind for c in current.conditions)


# -- pool mode --------------------------------------------------------------------------------


def _pool(
    observed: Observed,
    cj: models.CompositionJob,
    seed: int,
    now: datetime.datetime,
    settings: OperatorSettings,
) -> Plan:
    """A job for a pool's warm workers: wait, assign, follow the worker, or take the job back."""
    previous = observed.previous
    assignment = previous.assignment
    # Without a pool name the assignment is set (plan() comes here for one or the other), and
    # then _pool_assigned decides without the name: `not` on the assignment cannot change it.
    pool_name = observed.pool_name or (
        assignment.pool if assignment else ""  # pragma: no mutate: AddNot
    )
    if assignment is not None:
        return _pool_assigned(observed, cj, assignment, seed, now, settings)
    pool = observed.pool
    if pool is not None and pool.spec is not None and pool.spec.profile != cj.spec.profile:
        message = (
            f"spec.execution.pool: pool {pool_name} serves profile {pool.spec.profile}, "
            f"not {cj.spec.profile}"
        )
        outcome = status.rejected(
            previous, cj.metadata.generation, models.Reason.INVALID_SPEC, message, now=now
        )
        return _written(previous, outcome)
    if observed.queue is not None or cj.spec.suspend:
        outcome = pooljobs.waiting(cj, seed=seed, queue=observed.queue, pool=pool_name, now=now)
        if _position_only(observed, outcome, settings):
            return Plan()
        return _written(previous, outcome)
    deadline = pooljobs.start_deadline_at(cj, previous)
    if deadline is not None and now >= deadline:
        reason, message = _unserved(observed, pool_name, cj)
        outcome = pooljobs.failed(
            cj, reason, message, assignment=None, report=None, nodes=observed.nodes, now=now
        )
        return _written(previous, outcome)
    offer = observed.offer
    if offer is not None and pool is not None and pool.spec is not None:
        outcome = pooljobs.assigned(
            cj,
            offer,
            seed=seed,
            bucket=builders.output_bucket(cj, settings),
            key_prefix=builders.output_key_prefix(cj, settings),
            now=now,
        )
        write = WriteStatus(outcome, status.event_for(previous, outcome), conditional=True)
        recheck = _earliest(
            _lease_recheck(observed.lease), pooljobs.start_deadline_at(cj, outcome.status)
        )
        return Plan((write,), admit=observed.capped, take_offer=True, recheck_at=recheck)
    reason, message = models.Reason.WAITING_FOR_WORKER, f"waiting for a worker of pool {pool_name}"
    if pool is None:
        reason = models.Reason.POOL_NOT_FOUND
        message = f"pool {pool_name} not found in namespace {cj.metadata.namespace}"
    elif observed.pool_problem is not None:
        reason, detail = observed.pool_problem
        message = f"{message}: {detail}"
    outcome = pooljobs.waiting(
        cj, seed=seed, queue=None, pool=pool_name, reason=reason, message=message, now=now
    )
    recheck = pooljobs.start_deadline_at(cj, outcome.status)
    found = _maybe_written(observed, outcome, recheck)
    # Admitted past the caps: the job holds its slot while it waits for a worker.
    return dataclasses.replace(found, admit=observed.capped and bool(found.actions))


def _pool_assigned(
    observed: Observed,
    cj: models.CompositionJob,
    assignment: models.WorkerAssignment,
    seed: int,
    now: datetime.datetime,
    settings: OperatorSettings,
) -> Plan:
    previous = observed.previous
    report = pooljobs.report_for(assignment, observed.worker_report)
    if report is not None and report.finished_at is not None:
        outcome = pooljobs.reported(
            cj, assignment, report, seed=seed, nodes=observed.nodes, settings=settings, now=now
        )
        return _written(previous, outcome)
    why: str | None = None
    if cj.spec.suspend:
        why = "suspended by spec.suspend"
    elif (
        report is None and observed.pool_name is not None and observed.pool_name != assignment.pool
    ):
        why = f"moved to pool {observed.pool_name}"
    if why is not None:
        outcome = pooljobs.taken_back(
            cj, assignment, report, seed=seed, why=why, nodes=observed.nodes, now=now
        )
        return _conditional(previous, outcome)
    lease = observed.lease
    if pooljobs.lost(assignment, lease, now):
        if not observed.lease_checked:
            return Plan(need=Need.LEASE)
        why = f"worker {assignment.worker} was lost"
        if lease is not None and lease.fresh(now):
            why = f"worker {assignment.worker} restarted"
        outcome = pooljobs.worker_gone(
            cj, assignment, report, seed=seed, why=why, disrupted=observed.worker_disrupted,
            nodes=observed.nodes, now=now,
        )  # fmt: skip
        return _conditional(previous, outcome)
    assert lease is not None
    # A worker writes its Lease's state as "ready" or "draining" only, and "ready" sorts after
    # "draining": `<=` for `==` cannot change the result.
    if report is None and lease.state == protocol.STATE_DRAINING:  # pragma: no mutate: *_Eq_LtE
        why = f"worker {assignment.worker} is draining"
        outcome = pooljobs.worker_gone(
            cj, assignment, None, seed=seed, why=why, disrupted=None, nodes=observed.nodes, now=now
        )
        return _conditional(previous, outcome)
    if report is None:
        deadline = pooljobs.start_deadline_at(cj, previous)
        if deadline is not None and now >= deadline:
            reason, message = _unserved(observed, assignment.pool, cj)
            outcome = pooljobs.failed(
                cj, reason, message, assignment=assignment, report=None, nodes=observed.nodes,
                now=now,
            )  # fmt: skip
            return _conditional(previous, outcome)
        return Plan(recheck_at=_earliest(_lease_recheck(lease), deadline))
    active = _whole_second_after(pooljobs.active_deadline_at(cj, report))
    if now >= active:
        seconds = cj.spec.execution.active_deadline_seconds
        message = (
            f"the attempt ran past activeDeadlineSeconds ({seconds}s) on worker {assignment.worker}"
        )
        # The worker stops a run at its deadline and reports it; none came: the attempt
        # fails as a Job pod stopped at its deadline does, and is retried within backoffLimit.
        outcome = pooljobs.worker_gone(
            cj, assignment, report, seed=seed, why=message, disrupted=None,
            nodes=observed.nodes, now=now, reason=models.Reason.DEADLINE_EXCEEDED,
        )  # fmt: skip
        return _conditional(previous, outcome)
    outcome = pooljobs.running(cj, assignment, report, nodes=observed.nodes, now=now)
    return _maybe_written(observed, outcome, _earliest(_lease_recheck(lease), active))


def _unserved(observed: Observed, pool: str, cj: models.CompositionJob) -> tuple[str, str]:
    """Why no worker took the job within its start deadline."""
    seconds = cj.spec.execution.start_deadline_seconds
    text = f"no worker of pool {pool} accepted the job within {seconds}s of its admission"
    if observed.pool is None:
        return models.Reason.POOL_NOT_FOUND, f"{text}: pool {pool} not found"
    if observed.pool_problem is not None:
        reason, detail = observed.pool_problem
        return reason, f"{text}: {detail}"
    return models.Reason.START_DEADLINE_EXCEEDED, text


def _lease_recheck(lease: protocol.WorkerLease | None) -> datetime.datetime | None:
    """When the assigned worker is lost unless it renews its Lease (a timer looks again then)."""
    if lease is None:
        return None
    expires = lease.expires_at()
    return None if expires is None else _whole_second_after(expires)


def _whole_second_after(moment: datetime.datetime) -> datetime.datetime:
    """The first whole second after ``moment``: decisions read ``now`` in whole seconds, so a
    timer set for then finds the moment passed."""
    return moment.replace(microsecond=0) + datetime.timedelta(seconds=1)


def _earliest(*moments: datetime.datetime | None) -> datetime.datetime | None:
    found = [moment for moment in moments if moment is not None]
    return min(found) if found else None


def _conditional(previous: models.CompositionJobStatus, outcome: status.Outcome) -> Plan:
    """A write that changes the assignment: only against the state the decision read."""
    return Plan((WriteStatus(outcome, status.event_for(previous, outcome), conditional=True),))


def _maybe_written(
    observed: Observed, outcome: status.Outcome, recheck: datetime.datetime | None
) -> Plan:
    """Write what changed (nothing when nothing did), and look again at ``recheck``."""
    if status.to_patch(outcome.status, observed.previous) is None:
        return Plan(recheck_at=recheck)
    write = WriteStatus(outcome, status.event_for(observed.previous, outcome))
    return Plan((write,), recheck_at=recheck)
