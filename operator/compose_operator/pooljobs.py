"""The status of a CompositionJob that runs on a pool's warm workers. Pure.

The same contract as a job run by a child Job (:mod:`compose_operator.status`): the conditions,
phase, ``attempts[]``, timings and result, and the same reasons and exit-code classes, read from
the worker's report (``status.workerReport``, the fields of a Job pod's termination message)
instead of a pod. The hand-off itself is :mod:`compose_api.pools`; the decisions that use these
functions are in :mod:`compose_operator.plan`.

How a pool job reads:

- waiting for a worker: ``Started=Unknown`` with ``WaitingForWorker`` (or ``PoolNotFound``, or
  why the pool's workers do not start: ``Unschedulable``, ``ImagePullBackOff``); phase Starting.
  Behind the operator's caps it is ``Queued=True WaitingForCapacity`` first, as in Job mode.
- assigned: ``Started=Unknown AssignedToWorker`` and ``status.assignment``;
- accepted by the worker: ``Started=True Running``;
- reported: Succeeded, Failed, or ``Started=True Retrying`` and back to waiting for a worker;
- worker lost: the attempt ends ``WorkerLost`` (``Interrupted`` when the worker's pod was
  disrupted, not counted), and the job waits for a worker again, or fails past its retries.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence

from compose_api import contract, models
from compose_api import pools as protocol
from compose_operator import builders, status
from compose_operator.settings import OperatorSettings

CT = models.ConditionType
Reason = models.Reason
TRUE = models.ConditionStatus.TRUE
FALSE = models.ConditionStatus.FALSE
UNKNOWN = models.ConditionStatus.UNKNOWN
Outcome = status.Outcome
Wanted = status.Wanted

# How long past the active deadline the operator waits for the worker's own deadline report.
DEADLINE_GRACE_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Offer:
    """An idle worker the dispatcher has reserved for a job."""

    pool: str
    pod: str
    instance: str  # the Lease's holder identity: ``<pod>/<process instance>``


def pool_of(spec: models.CompositionJobSpec, settings: OperatorSettings) -> str | None:
    """The pool that runs the job: the spec's, else the profile's default pool, else none."""
    if spec.execution.queue_name:
        return None  # Kueue admits Jobs; a pool's workers are not admitted by it
    return spec.execution.pool or settings.default_pools.get(spec.profile)


def report_for(
    assignment: models.WorkerAssignment | None, report: models.WorkerReport | None
) -> models.WorkerReport | None:
    """The worker's report of the current assignment (a report of an earlier attempt: None)."""
    if assignment is None or report is None:
        return None
    if report.attempt != assignment.attempt or report.worker_instance != assignment.worker_instance:
        return None
    return report


def lost(
    assignment: models.WorkerAssignment,
    lease: protocol.WorkerLease | None,
    now: datetime.datetime,
) -> bool:
    """The assigned worker process is gone: no Lease, another holder (the container restarted),
    or a Lease not renewed within its duration."""
    if lease is None or not lease.fresh(now):
        return True
    return protocol.holder_identity(lease.pod, lease.instance) != assignment.worker_instance


def start_origin(previous: models.CompositionJobStatus) -> datetime.datetime | None:
    """When the job was admitted to its pool (``Started`` went Unknown): the start deadline
    counts from there."""
    for item in previous.conditions:
        # Only Started is ever Unknown (so any order on the type, or `is not`, always true on
        # the plain str the model holds, finds the same condition), and Unknown sorts after
        # True and False (`>=` for its `==` is the same test).
        if (
            item.type == CT.STARTED  # pragma: no mutate: *_Eq_[GL]t*,*_Eq_IsNot
            and item.status == UNKNOWN  # pragma: no mutate: *_Eq_GtE
        ):
            return item.last_transition_time
    return None


def start_deadline_at(
    cj: models.CompositionJob, previous: models.CompositionJobStatus
) -> datetime.datetime | None:
    """When a job that no worker has accepted fails (None: a worker has run it already)."""
    if any(item.start_time is not None for item in previous.attempts):
        return None
    origin = start_origin(previous)
    if origin is None:
        return None
    return origin + datetime.timedelta(seconds=cj.spec.execution.start_deadline_seconds + 1)


def active_deadline_at(cj: models.CompositionJob, report: models.WorkerReport) -> datetime.datetime:
    """When an accepted attempt that has not reported is failed by the operator: the worker
    stops its own run at ``activeDeadlineSeconds``; this leaves it time to say so."""
    seconds = cj.spec.execution.active_deadline_seconds + DEADLINE_GRACE_SECONDS
    return report.accepted_at + datetime.timedelta(seconds=seconds)


# -- attempts ---------------------------------------------------------------------------------


def _node_fields(node: str | None, nodes: Mapping[str, Mapping[str, str]]) -> dict[str, str | None]:
    labels = nodes.get(node, {}) if node else {}
    capacity = next((labels[k] for k in status.CAPACITY_LABELS if k in labels), None)
    return {
        "node_name": node,
        "instance_type": labels.get(status.INSTANCE_TYPE_LABEL),
        "capacity_type": capacity.lower().replace("_", "-") if capacity else None,
    }


def _with_attempt(
    attempts: Sequence[models.Attempt], attempt: models.Attempt
) -> list[models.Attempt]:
    """``attempts`` with the entry of ``attempt.index`` replaced (or appended)."""
    # Attempts are numbered in order and only the current (last) one is ever replaced, and
    # their small numbers are one object each (at most about 30: backoffLimit <= 10): `<` or
    # `is not` for `!=` cannot change the result.
    kept = [
        item
        for item in attempts
        if item.index != attempt.index  # pragma: no mutate: *_NotEq_Lt,*_NotEq_IsNot
    ]
    return sorted([*kept, attempt], key=lambda item: item.index)


def _attempt(
    assignment: models.WorkerAssignment,
    report: models.WorkerReport | None,
    nodes: Mapping[str, Mapping[str, str]],
    *,
    outcome: models.AttemptOutcome,
    reason: str | None = None,
    message: str | None = None,
    end_time: datetime.datetime | None = None,
) -> models.Attempt:
    node = report.node_name if report is not None else None
    return models.Attempt(
        index=assignment.attempt,
        pool=assignment.pool,
        pod_name=assignment.worker,
        **_node_fields(node, nodes),
        start_time=report.accepted_at if report is not None else None,
        end_time=end_time,
        outcome=outcome,
        reason=reason,
        message=message,
        exit_code=report.exit_code if report is not None else None,
    )


def failures(attempts: Sequence[models.Attempt]) -> int:
    # Of the outcomes, only Failed sorts at or before "Failed": `<=` for `==` cannot change it.
    return sum(
        1
        for item in attempts
        if item.outcome == models.AttemptOutcome.FAILED  # pragma: no mutate: *_Eq_LtE
    )


def interruptions(attempts: Sequence[models.Attempt]) -> int:
    """Attempts a disruption ended (spot, eviction, node loss). A suspension the user asked
    for ends its attempt Interrupted too, but is never held against the job (as in Job mode,
    where the Job controller does not count the pods a suspension deletes)."""
    return sum(
        1
        for item in attempts
        if item.outcome == models.AttemptOutcome.INTERRUPTED
        and item.reason != Reason.SUSPENDED_BY_USER
    )


# -- outcomes ---------------------------------------------------------------------------------


def _accepted() -> Wanted:
    return Wanted(CT.ACCEPTED, TRUE, Reason.VALID, "")


def _queued(queue: status.Queue | None, cj: models.CompositionJob) -> Wanted:
    if queue is not None:
        namespace = cj.metadata.namespace
        text = f"waiting for a free slot in namespace {namespace}: position {queue.position}"
        return Wanted(CT.QUEUED, TRUE, Reason.WAITING_FOR_CAPACITY, text)
    return Wanted(CT.QUEUED, FALSE, Reason.ADMITTED, "")


def _suspension(cj: models.CompositionJob, *, finished: bool = False) -> list[Wanted]:
    if cj.spec.suspend and not finished:
        return [Wanted(CT.SUSPENDED, TRUE, Reason.SUSPENDED_BY_USER, "suspended by spec.suspend")]
    # No condition type sorts after Suspended: `>=` for `==` is the same test. A Suspended
    # condition is True or False, so `>=` is `==` on its status too, and `<=` or `is not`
    # (always true on the plain str the model holds) only re-states a Suspended=False, which
    # always reads Resumed with no message (no transition, no Event; at most its
    # observedGeneration moves on).
    held = [
        c
        for c in cj.status.conditions
        if c.type == CT.SUSPENDED  # pragma: no mutate: *_Eq_GtE
    ]
    if any(finished or c.status == TRUE for c in held):  # pragma: no mutate: *_Eq_[GL]tE,*_Eq_IsNot
        return [Wanted(CT.SUSPENDED, FALSE, Reason.RESUMED, "")]
    return []


def _ran(previous: models.CompositionJobStatus) -> bool:
    return any(
        item.start_time is not None or item.exit_code is not None for item in previous.attempts
    )


def waiting(
    cj: models.CompositionJob,
    *,
    seed: int,
    queue: status.Queue | None,
    pool: str,
    reason: str = Reason.WAITING_FOR_WORKER,
    message: str = "",
    attempts: Sequence[models.Attempt] | None = None,
    now: datetime.datetime,
) -> Outcome:
    """No worker has the job: behind the caps, suspended, or waiting for a worker of ``pool``.

    A job that ran before (a retry) keeps ``Started=True`` with ``Retrying``; otherwise
    ``Started=Unknown`` says that it was admitted and waits for a worker."""
    previous = cj.status
    wanted = [_accepted(), _queued(queue, cj)]
    text = message or f"waiting for a worker of pool {pool}"
    if queue is None and not cj.spec.suspend:
        if _ran(previous):
            last = previous.attempts[-1] if previous.attempts else None
            detail = (
                f"attempt {last.index} ended: {last.reason}: {last.message or ''}; " if last else ""
            )
            wanted.append(Wanted(CT.STARTED, TRUE, Reason.RETRYING, detail + text))
        else:
            wanted.append(Wanted(CT.STARTED, UNKNOWN, reason, text))
    elif cj.spec.suspend and any(c.type == CT.STARTED for c in previous.conditions):
        wanted.append(Wanted(CT.STARTED, FALSE, Reason.SUSPENDED_BY_USER, "suspended"))
    wanted.extend(_suspension(cj))
    fields: dict[str, object] = {
        "seed": seed,
        "assignment": None,
        "queue_position": queue.position if queue else None,
    }
    if attempts is not None:
        fields["attempts"] = list(attempts)
        fields["attempt"] = attempts[-1].index if attempts else None
    new, transitions = status.finish(previous, cj.metadata.generation, wanted, now, **fields)
    return Outcome(new, transitions)


def assigned(
    cj: models.CompositionJob,
    offer: Offer,
    *,
    seed: int,
    bucket: str,
    key_prefix: str,
    now: datetime.datetime,
) -> Outcome:
    """The job handed to ``offer``'s worker: ``status.assignment`` and ``AssignedToWorker``.

    The attempt is the next one, or the same one when its worker was lost before accepting."""
    previous = cj.status
    # No attempt is Pending here (an unaccepted one is dropped when its worker goes, and a
    # new one is assigned only once the last has ended), none Running or Succeeded, and the
    # others (Failed, Interrupted) sort before "Pending": `<`, `<=` or `is not` (always true on
    # the plain str the model holds) for `!=` cannot change the count.
    attempt = len(
        [
            item
            for item in previous.attempts
            if item.outcome
            != models.AttemptOutcome.PENDING  # pragma: no mutate: *_NotEq_Lt*,*_NotEq_IsNot
        ]
    )
    assignment = models.WorkerAssignment(
        pool=offer.pool,
        worker=offer.pod,
        worker_instance=offer.instance,
        attempt=attempt,
        assigned_at=now,
        seed=seed,
        output_bucket=bucket,
        output_key_prefix=key_prefix,
    )
    pending = _attempt(
        assignment,
        None,
        {},
        outcome=models.AttemptOutcome.PENDING,
        reason=Reason.ASSIGNED_TO_WORKER,
    )
    attempts = _with_attempt(previous.attempts, pending)
    state = TRUE if _ran(previous) else UNKNOWN
    text = f"assigned to worker {offer.pod} of pool {offer.pool}"
    wanted = [
        _accepted(),
        _queued(None, cj),
        Wanted(CT.STARTED, state, Reason.ASSIGNED_TO_WORKER, text),
    ]
    wanted.extend(_suspension(cj))
    timings = previous.timings.model_dump() if previous.timings else {}
    if timings.get("queued") is None and cj.metadata.creation_timestamp is not None:
        timings["queued"] = max(
            0.0, round((now - cj.metadata.creation_timestamp).total_seconds(), 3)
        )
    new, transitions = status.finish(
        previous,
        cj.metadata.generation,
        wanted,
        now,
        seed=seed,
        assignment=assignment,
        attempt=attempt,
        attempts=attempts,
        queue_position=None,
        timings=models.Timings.model_validate({k: v for k, v in timings.items() if v is not None}),
    )
    return Outcome(new, transitions)


def running(
    cj: models.CompositionJob,
    assignment: models.WorkerAssignment,
    report: models.WorkerReport,
    *,
    nodes: Mapping[str, Mapping[str, str]],
    now: datetime.datetime,
) -> Outcome:
    """The worker accepted the attempt and runs it."""
    previous = cj.status
    entry = _attempt(assignment, report, nodes, outcome=models.AttemptOutcome.RUNNING)
    attempts = _with_attempt(previous.attempts, entry)
    wanted = [_accepted(), _queued(None, cj), Wanted(CT.STARTED, TRUE, Reason.RUNNING, "")]
    wanted.extend(_suspension(cj))
    start = previous.start_time or report.accepted_at
    new, transitions = status.finish(
        previous,
        cj.metadata.generation,
        wanted,
        now,
        attempt=assignment.attempt,
        attempts=attempts,
        start_time=start,
    )
    return Outcome(new, transitions)


def _terminal(
    cj: models.CompositionJob,
    wanted: list[Wanted],
    attempts: Sequence[models.Attempt],
    now: datetime.datetime,
    **fields: object,
) -> Outcome:
    wanted = [_accepted(), _queued(None, cj), *wanted, *_suspension(cj, finished=True)]
    new, transitions = status.finish(
        cj.status,
        cj.metadata.generation,
        wanted,
        now,
        attempts=list(attempts),
        attempt=attempts[-1].index if attempts else None,
        assignment=None,
        **fields,
    )
    return Outcome(new, transitions)


def _failed_for_good(
    cj: models.CompositionJob,
    attempts: Sequence[models.Attempt],
    reason: str,
    message: str,
    *,
    permanent: bool,
) -> tuple[str, str] | None:
    """Why the job fails now (None: it is retried on a worker)."""
    count = failures(attempts)
    limit = cj.spec.execution.backoff_limit
    if permanent:
        return reason, message
    if count > limit:
        after = f" (after {count} failed attempts; backoffLimit {limit})"
        # No reason retried in pool mode (the exit codes' retryable ones, WorkerLost,
        # DeadlineExceeded, SpotInterrupted) sorts before ContainerFailed: `<=` for `==` cannot
        # change the result.
        named = (
            Reason.BACKOFF_LIMIT_EXCEEDED
            if reason == Reason.CONTAINER_FAILED  # pragma: no mutate: *_Eq_LtE
            else reason
        )
        return named, message + after
    if interruptions(attempts) > builders.INTERRUPTION_ALLOWANCE + limit:
        return reason, message + f" (interrupted {interruptions(attempts)} times)"
    return None


def reported(
    cj: models.CompositionJob,
    assignment: models.WorkerAssignment,
    report: models.WorkerReport,
    *,
    seed: int,
    nodes: Mapping[str, Mapping[str, str]],
    settings: OperatorSettings,
    now: datetime.datetime,
) -> Outcome:
    """The worker finished the attempt: success with its result, failure for good, or a retry
    (the job waits for a worker again)."""
    previous = cj.status
    code = report.exit_code if report.exit_code is not None else int(contract.ExitCode.INTERNAL)
    timings = previous.timings.model_dump() if previous.timings else {}
    if report.timings is not None:
        timings.update(report.timings.model_dump(exclude_none=True))
    timings_model = models.Timings.model_validate(
        {k: v for k, v in timings.items() if v is not None}
    )
    if code == 0:
        problem = (
            None if report.result is not None else "the worker reported success without a result"
        )
        if problem is None:
            assert report.result is not None
            result = report.result.model_copy(
                update={
                    "url": report.result.url or status.result_url(report.result.s3_uri, settings)
                }
            )
            entry = _attempt(
                assignment,
                report,
                nodes,
                outcome=models.AttemptOutcome.SUCCEEDED,
                end_time=report.finished_at,
            )
            attempts = _with_attempt(previous.attempts, entry)
            done = Wanted(CT.SUCCEEDED, TRUE, Reason.COMPLETED, f"stored at {result.s3_uri}")
            return _terminal(
                cj,
                [Wanted(CT.STARTED, TRUE, Reason.RUNNING, ""), done],
                attempts,
                now,
                result=result,
                timings=timings_model,
                start_time=previous.start_time or report.accepted_at,
            )
        reason, message, permanent = str(Reason.RESULT_UNREADABLE), problem, True
    else:
        reason = report.reason or str(contract.reason_for_exit_code(code))
        message = report.message or f"exit code {code}"
        permanent = code in contract.PERMANENT_EXIT_CODES
    entry = _attempt(
        assignment,
        report,
        nodes,
        outcome=models.AttemptOutcome.FAILED,
        reason=reason,
        message=message,
        end_time=report.finished_at,
    )
    attempts = _with_attempt(previous.attempts, entry)
    verdict = _failed_for_good(cj, attempts, reason, message, permanent=permanent)
    if verdict is not None:
        return _terminal(
            cj,
            [Wanted(CT.STARTED, TRUE, Reason.RUNNING, ""), Wanted(CT.FAILED, TRUE, *verdict)],
            attempts,
            now,
            timings=timings_model,
            start_time=previous.start_time or report.accepted_at,
        )
    retry = cj.model_copy(update={"status": previous.model_copy(update={"attempts": attempts})})
    return waiting(retry, seed=seed, queue=None, pool=assignment.pool, attempts=attempts, now=now)


def worker_gone(
    cj: models.CompositionJob,
    assignment: models.WorkerAssignment,
    report: models.WorkerReport | None,
    *,
    seed: int,
    why: str,
    disrupted: str | None,
    nodes: Mapping[str, Mapping[str, str]],
    now: datetime.datetime,
    reason: str = Reason.WORKER_LOST,
) -> Outcome:
    """The assigned worker is lost, draining, or past the attempt's deadline without a report:
    before the worker accepted, the same attempt waits for another worker; after, the attempt
    ends (``Interrupted`` when the worker's pod was disrupted, ``Failed`` with ``reason``
    otherwise) and the job is retried or fails."""
    previous = cj.status
    if report is None:
        # The current attempt is the last one, and attempt numbers are small ints, one object
        # each: `<` or `is not` for `!=` cannot change the result.
        attempts = [
            item
            for item in previous.attempts
            if item.index != assignment.attempt  # pragma: no mutate: *_NotEq_Lt,*_NotEq_IsNot
        ]
        back = cj.model_copy(update={"status": previous.model_copy(update={"attempts": attempts})})
        return waiting(
            back,
            seed=seed,
            queue=None,
            pool=assignment.pool,
            attempts=attempts,
            message=f"{why}; waiting for another worker of pool {assignment.pool}",
            now=now,
        )
    outcome, cause, text = (
        (models.AttemptOutcome.FAILED, reason, why)
        if disrupted is None
        else (models.AttemptOutcome.INTERRUPTED, Reason.SPOT_INTERRUPTED, f"{why}: {disrupted}")
    )
    entry = _attempt(
        assignment, report, nodes, outcome=outcome, reason=cause, message=text, end_time=now
    )
    attempts = _with_attempt(previous.attempts, entry)
    verdict = _failed_for_good(cj, attempts, str(entry.reason), why, permanent=False)
    if verdict is not None:
        return _terminal(
            cj,
            [Wanted(CT.STARTED, TRUE, Reason.RUNNING, ""), Wanted(CT.FAILED, TRUE, *verdict)],
            attempts,
            now,
        )
    retry = cj.model_copy(update={"status": previous.model_copy(update={"attempts": attempts})})
    return waiting(retry, seed=seed, queue=None, pool=assignment.pool, attempts=attempts, now=now)


def failed(
    cj: models.CompositionJob,
    reason: str,
    message: str,
    *,
    assignment: models.WorkerAssignment | None,
    report: models.WorkerReport | None,
    nodes: Mapping[str, Mapping[str, str]],
    now: datetime.datetime,
) -> Outcome:
    """Failed by the operator: a deadline passed, or the pool cannot serve the job."""
    attempts = list(cj.status.attempts)
    if assignment is not None:
        entry = _attempt(
            assignment,
            report,
            nodes,
            outcome=models.AttemptOutcome.FAILED,
            reason=reason,
            message=message,
            end_time=now,
        )
        if report is None:
            # The current attempt is the last one, and attempt numbers are small ints, one object
            # each: `<` or `is not` for `!=` cannot change the result.
            attempts = [
                item
                for item in attempts
                if item.index != assignment.attempt  # pragma: no mutate: *_NotEq_Lt,*_NotEq_IsNot
            ]
        else:
            attempts = _with_attempt(attempts, entry)
    wanted = []
    if _ran(cj.status) or report is not None:
        wanted.append(Wanted(CT.STARTED, TRUE, Reason.RUNNING, ""))
    wanted.append(Wanted(CT.FAILED, TRUE, reason, message))
    return _terminal(cj, wanted, attempts, now)


def taken_back(
    cj: models.CompositionJob,
    assignment: models.WorkerAssignment,
    report: models.WorkerReport | None,
    *,
    seed: int,
    why: str,
    nodes: Mapping[str, Mapping[str, str]],
    now: datetime.datetime,
) -> Outcome:
    """The operator takes the job back from its worker (suspended, or moved to another pool):
    an accepted attempt ends ``Interrupted`` (not counted), an unaccepted one is dropped."""
    previous = cj.status
    # The current attempt is the last one, and attempt numbers are small ints, one object
    # each: `<` or `is not` for `!=` cannot change the result.
    attempts = [
        item
        for item in previous.attempts
        if item.index != assignment.attempt  # pragma: no mutate: *_NotEq_Lt,*_NotEq_IsNot
    ]
    if report is not None:
        entry = _attempt(
            assignment,
            report,
            nodes,
            outcome=models.AttemptOutcome.INTERRUPTED,
            reason=Reason.SUSPENDED_BY_USER,
            message=why,
            end_time=now,
        )
        attempts = _with_attempt(attempts, entry)
    back = cj.model_copy(update={"status": previous.model_copy(update={"attempts": attempts})})
    return waiting(back, seed=seed, queue=None, pool=assignment.pool, attempts=attempts, now=now)
