"""Pure mapping from what the cluster shows (child Job, its pods, their nodes) to the CR's status.

:mod:`compose_operator.reconciler` calls :func:`compute` on every event and writes the result
only when it differs from the current status. Everything here is a function of its arguments
(time included), so the unit tests pin it against expected YAML.

Reasons come from ``compose_api.models.Reason`` and the exit-code table in
``compose_api.contract``. Terminal states are never left: the reconciler stops calling
:func:`compute` once the phase is Succeeded or Failed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pydantic

from compose_api import contract, models
from compose_operator import names
from compose_operator.settings import OperatorSettings

Reason = models.Reason
CT = models.ConditionType
TRUE = models.ConditionStatus.TRUE
FALSE = models.ConditionStatus.FALSE
UNKNOWN = models.ConditionStatus.UNKNOWN
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
CAPACITY_LABELS = ("karpenter.sh/capacity-type", "eks.amazonaws.com/capacityType")
WARNING_REASONS = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.UNKNOWN_PROFILE,
        Reason.JOB_CREATE_FAILED,
        Reason.UNSCHEDULABLE,
        Reason.IMAGE_PULL_BACK_OFF,
        Reason.POD_CREATE_FAILED,
        Reason.RETRYING,
        Reason.SPOT_INTERRUPTED,
        Reason.RESULT_UNREADABLE,
    }
)
_CONDITION_ORDER = list(CT)


@dataclasses.dataclass(frozen=True)
class Wanted:
    """One condition as the cluster shows it now (its transition time is decided by merging)."""

    type: CT
    status: models.ConditionStatus
    reason: str
    message: str = ""
    # When it became so, where the objects tell and that is before the decision (a job admitted
    # without a write: its Job's creation); else the decision's time.
    since: datetime.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Queue:
    """The queueing situation when no Job exists yet: ``position`` 1 is next."""

    position: int
    depth: int


@dataclasses.dataclass(frozen=True)
class Transition:
    """A condition that changed status or reason: one Kubernetes Event."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        return self.reason in WARNING_REASONS or (self.type == CT.FAILED and self.status == TRUE)


# ---------------------------------------------------------------------------------------------
# Reading API objects


def parse_time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return None


def _is_true(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    found = _condition(obj, kind)
    return found if found is not None and found.get("status") == "True" else None


def _container(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for item in statuses:
        if item.get("name") == names.CONTAINER_NAME:
            return dict(item)
    return dict(statuses[0]) if statuses else {}


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    state = _container(pod).get("state") or {}
    found = state.get("terminated")
    return dict(found) if found else None


def _created(obj: Mapping[str, Any]) -> datetime.datetime | None:
    return parse_time((obj.get("metadata") or {}).get("creationTimestamp"))


def _pod_order(
    previous: Sequence[models.Attempt],
) -> Callable[[Mapping[str, Any]], tuple[int, str, str]]:
    """Pods already recorded keep their attempt index; new ones follow by creation, then name
    (creation times have one-second resolution)."""
    known = {item.pod_name: item.index for item in previous if item.pod_name}

    def key(pod: Mapping[str, Any]) -> tuple[int, str, str]:
        meta = pod.get("metadata") or {}
        name = str(meta.get("name") or "")
        if name in known:
            return (known[name], "", name)
        return (len(previous), str(meta.get("creationTimestamp") or ""), name)

    return key


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why the Job controller could not create a Job's pod, from its latest ``FailedCreate``
    Event: a ResourceQuota, a LimitRange, an admission policy or webhook, Pod Security."""

    job_name: str
    message: str
    at: datetime.datetime  # when it last said so


_COMBINED = "(combined from similar events): "
REFUSAL_CHARS = 1024  # of the Event's message, kept in the status


def read_refusal(event: Mapping[str, Any]) -> Refusal | None:
    """A ``FailedCreate`` Event of a Job as a :class:`Refusal` (None: not one, or undated)."""
    involved = event.get("involvedObject") or {}
    if involved.get("kind") != "Job" or event.get("reason") != "FailedCreate":
        return None
    meta = event.get("metadata") or {}
    at = parse_time(
        event.get("lastTimestamp") or event.get("eventTime") or meta.get("creationTimestamp")
    )
    if at is None or not involved.get("name"):
        return None
    job_name = str(involved["name"])
    message = str(event.get("message") or "").removeprefix(_COMBINED)
    message = message.removeprefix("Error creating: ")
    return Refusal(job_name, without_generated_names(message, job_name)[:REFUSAL_CHARS], at)


def without_generated_names(message: str, owner: str) -> str:
    """``message`` without the five characters generateName adds to the pods ``owner`` makes
    (``<Job>-xxxxx``, ``<Deployment>-<template hash>-xxxxx``): each try of a controller names a
    new pod, and without them the same answer reads the same, so a status that shows it is not
    rewritten at every try."""
    pod = re.compile(rf'"{re.escape(owner)}-([a-z0-9]+-)?[a-z0-9]{{5}}"')
    return pod.sub(lambda found: f'"{owner}-{found.group(1) or ""}"', message)


@dataclasses.dataclass(frozen=True)
class PodView:
    """What one pod says about its attempt."""

    outcome: models.AttemptOutcome
    reason: str | None
    message: str | None
    exit_code: int | None
    report: contract.TerminationMessage | None
    ran: bool


def view_pod(pod: Mapping[str, Any]) -> PodView:
    """Classify one pod: pending (and why), running, succeeded, failed or interrupted."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    container = _container(pod)
    state = container.get("state") or {}
    terminated = _terminated(pod)
    report = contract.TerminationMessage.parse(terminated.get("message")) if terminated else None
    exit_code = terminated.get("exitCode") if terminated else None
    ran = bool(state.get("running") or terminated)
    # A pod that finished its work succeeded, even when a drain raced its completion and marked
    # it as a disruption target: its result is in the termination message. Exit 0 without a
    # result that can be read is a failure of its own: success means a result to hand out.
    # Exit codes are never negative (0-255, 128+n for a signal): `<=` for the second `==`
    # cannot change the result.
    exited_zero = terminated is not None and exit_code == 0  # pragma: no mutate: *_Eq_LtE
    if phase == "Succeeded" or exited_zero:
        problem = unreadable_result(terminated)
        if problem is not None:
            return PodView(
                models.AttemptOutcome.FAILED, Reason.RESULT_UNREADABLE, problem, 0, None, True
            )
        return PodView(models.AttemptOutcome.SUCCEEDED, Reason.COMPLETED, None, 0, report, True)
    disrupted = _is_true(pod, "DisruptionTarget")
    if disrupted is not None:
        text = f"pod {_name(pod)} was interrupted ({disrupted.get('reason') or 'disruption'})"
        detail = disrupted.get("message")
        return PodView(
            models.AttemptOutcome.INTERRUPTED,
            Reason.SPOT_INTERRUPTED,
            f"{text}: {detail}" if detail else text,
            exit_code,
            report,
            ran,
        )
    # Succeeded returned above; Pending, Running and Unknown sort after "Failed": `<=` for `==`
    # cannot change the result.
    if phase == "Failed" or terminated is not None:  # pragma: no mutate: *_Eq_LtE
        if status.get("reason") == "DeadlineExceeded" and terminated is None:
            return PodView(
                models.AttemptOutcome.FAILED,
                Reason.DEADLINE_EXCEEDED,
                status.get("message") or "the pod ran past activeDeadlineSeconds",
                None,
                None,
                ran,
            )
        code = int(exit_code) if exit_code is not None else None
        reason: str = (
            contract.reason_for_exit_code(code) if code is not None else Reason.CONTAINER_FAILED
        )
        if report is not None and report.reason:
            reason = report.reason
        message = report.message if report else (terminated or {}).get("message")
        if not message and terminated:
            message = f"exit code {code} ({terminated.get('reason') or 'Error'})"
        return PodView(models.AttemptOutcome.FAILED, str(reason), message, code, report, ran)
    if state.get("running"):
        return PodView(models.AttemptOutcome.RUNNING, Reason.RUNNING, None, None, None, True)
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in {"ImagePullBackOff", "ErrImagePull", "InvalidImageName"}:
        message = f"image pull back-off: {waiting.get('message') or waiting.get('reason')}"
        return PodView(
            models.AttemptOutcome.PENDING, Reason.IMAGE_PULL_BACK_OFF, message, None, None, False
        )
    scheduled = _condition(pod, "PodScheduled")
    # A condition's status is True, False or Unknown, and only "False" sorts at or before
    # "False": `<=` for `==` cannot change the result. The scheduler gives the reason
    # Unschedulable only with False, and no reason of PodScheduled sorts after it: `>=` for
    # either `==` cannot change the result either.
    if (
        scheduled is not None
        and scheduled.get("status") == "False"  # pragma: no mutate: *_Eq_[GL]tE
        and scheduled.get("reason") == "Unschedulable"  # pragma: no mutate: *_Eq_GtE
    ):
        detail = scheduled.get("message") or ""
        message = "no GPU capacity" + (f": {detail}" if detail else "")
        return PodView(
            models.AttemptOutcome.PENDING, Reason.UNSCHEDULABLE, message, None, None, False
        )
    if scheduled is not None and scheduled.get("status") == "True":
        return PodView(models.AttemptOutcome.PENDING, Reason.IMAGE_PULLING, None, None, None, False)
    return PodView(models.AttemptOutcome.PENDING, Reason.SCHEDULING, None, None, None, False)


def unreadable_result(terminated: Mapping[str, Any] | None) -> str | None:
    """What is wrong with the termination message of a container that exited 0 (None: it
    carries a result). The kubelet keeps at most ``TERMINATION_MESSAGE_LIMIT`` bytes, so a
    message cut there is told apart from one that was never JSON."""
    if terminated is None:
        return "the pod succeeded but shows no terminated container, so no result"
    text = terminated.get("message")
    if not text:
        return "exit code 0 without a termination message, so no result"
    size = len(str(text).encode())
    try:
        data = json.loads(str(text))
    except json.JSONDecodeError as error:
        if size >= contract.TERMINATION_MESSAGE_LIMIT:
            return (
                f"the termination message was cut at the kubelet's "
                f"{contract.TERMINATION_MESSAGE_LIMIT}-byte limit ({size} bytes kept), "
                "so its result cannot be read"
            )
        return f"the termination message is not JSON ({error.msg} at character {error.pos})"
    except RecursionError:
        return "the termination message is not JSON the contract allows (nested too deeply)"
    try:
        message = contract.TerminationMessage.model_validate(data)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the message"
        return f"the termination message does not follow the contract: {where}: {first['msg']}"
    if message.result is None:
        return "the termination message reports success but carries no result"
    return None


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


# ---------------------------------------------------------------------------------------------
# Building the status


def _attempts(
    previous: Sequence[models.Attempt],
    job_name: str | None,
    pods: Sequence[tuple[Mapping[str, Any], PodView]],
    nodes: Mapping[str, Mapping[str, str]],
    gone: tuple[str, str] | None,
) -> list[models.Attempt]:
    """One attempt per pod (``pods``: in attempt order, with their views); attempts whose pods
    are gone are kept as they were, and an unfinished one ends (``gone``: why, if known)."""
    by_pod = {item.pod_name: item for item in previous if item.pod_name}
    current: list[models.Attempt] = []
    for pod, view in pods:
        name = _name(pod)
        node = (pod.get("spec") or {}).get("nodeName")
        node_labels = nodes.get(node, {}) if node else {}
        capacity = next((node_labels[k] for k in CAPACITY_LABELS if k in node_labels), None)
        terminated = _terminated(pod) or {}
        old = by_pod.get(name)
        pod_labels = (pod.get("metadata") or {}).get("labels") or {}
        current.append(
            models.Attempt(
                # Renumbered below, once the attempts are in order: any valid index is the same.
                index=0,  # pragma: no mutate: NumberReplacer
                job_name=str(pod_labels.get("job-name") or job_name or ""),
                pod_name=name,
                node_name=node,
                instance_type=node_labels.get(INSTANCE_TYPE_LABEL)
                or (old.instance_type if old else None),
                capacity_type=(capacity.lower().replace("_", "-") if capacity else None)
                or (old.capacity_type if old else None),
                start_time=parse_time((pod.get("status") or {}).get("startTime")),
                end_time=parse_time(terminated.get("finishedAt")),
                outcome=view.outcome,
                # Running is set as the member itself (view_pod): `is not` cannot change it.
                reason=(
                    view.reason
                    if view.reason != Reason.RUNNING  # pragma: no mutate: *_NotEq_IsNot
                    else None
                ),
                message=view.message,
                exit_code=view.exit_code,
            )
        )
    fresh: dict[str | None, models.Attempt | None] = {item.pod_name: item for item in current}
    result = [fresh.pop(item.pod_name, None) or _vanished(item, gone) for item in previous]
    result.extend(item for item in fresh.values() if item is not None)
    return [item.model_copy(update={"index": index}) for index, item in enumerate(result)]


def _vanished(attempt: models.Attempt, why: tuple[str, str] | None = None) -> models.Attempt:
    """An attempt whose pod is gone: if it had not finished, it never will. ``why``: the
    reason and message, where the cause is known (the Job was suspended)."""
    if attempt.outcome not in (models.AttemptOutcome.PENDING, models.AttemptOutcome.RUNNING):
        return attempt
    reason, message = why or (Reason.POD_DELETED, "the pod was deleted before it finished")
    return attempt.model_copy(
        update={"outcome": models.AttemptOutcome.INTERRUPTED, "reason": reason, "message": message}
    )


_SUSPENSIONS = (Reason.SUSPENDED_BY_USER, Reason.JOB_SUSPENDED)


def _suspension_of(cj: models.CompositionJob, job: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why the Job controller stops the pods of a suspended Job, as an attempt's reason and
    message: the user's ``spec.suspend``, or the Job suspended by someone else (Kueue taking
    its quota back, or by hand). None while neither holds."""
    if cj.spec.suspend:
        return Reason.SUSPENDED_BY_USER, "the pod was stopped when the job was suspended"
    if (job.get("spec") or {}).get("suspend"):
        message = f"the pod was stopped when job {_name(job)} was suspended, not by spec.suspend"
        return Reason.JOB_SUSPENDED, message
    return None


def _stopped(view: PodView, pod: Mapping[str, Any], why: tuple[str, str] | None) -> PodView:
    """A pod being deleted while its Job is suspended was stopped by the suspension: its
    attempt is interrupted, not failed, whatever the SIGTERM made its container exit with. A
    pod that finished its work, was interrupted for a reason of its own (a spot interruption),
    or whose container said why it failed, keeps its view."""
    if why is None or not (pod.get("metadata") or {}).get("deletionTimestamp"):
        return view
    kept = (models.AttemptOutcome.SUCCEEDED, models.AttemptOutcome.INTERRUPTED)
    if view.outcome in kept or view.report is not None:
        return view
    return PodView(
        models.AttemptOutcome.INTERRUPTED, why[0], why[1], view.exit_code, None, view.ran
    )


def _job_failure(
    job: Mapping[str, Any], last_failed: PodView | None, failures: int
) -> tuple[str, str] | None:
    failed = _is_true(job, "Failed") or _is_true(job, "FailureTarget")
    if failed is None:
        return None
    job_reason = str(failed.get("reason") or "")
    job_message = str(failed.get("message") or "")
    if job_reason == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED, job_message or "the job ran past its active deadline"
    if last_failed is not None and last_failed.reason not in (None, Reason.CONTAINER_FAILED):
        detail = last_failed.message or job_message
        if job_reason == "BackoffLimitExceeded":
            detail = f"{detail} (after {failures} failed attempts; {job_message})"
        return str(last_failed.reason), detail
    if job_reason == "BackoffLimitExceeded":
        detail = f": {last_failed.message}" if last_failed and last_failed.message else ""
        return Reason.BACKOFF_LIMIT_EXCEEDED, (job_message or "retries exhausted") + detail
    if last_failed is not None:
        return str(last_failed.reason), last_failed.message or job_message
    return Reason.CONTAINER_FAILED, job_message or job_reason or "the job failed"


def _seconds(start: datetime.datetime | None, end: datetime.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, round((end - start).total_seconds(), 3))


def _timings(
    cj: models.CompositionJob,
    job: Mapping[str, Any] | None,
    pod: Mapping[str, Any] | None,
    report: contract.TerminationMessage | None,
    previous: models.Timings | None,
) -> models.Timings | None:
    values: dict[str, Any] = previous.model_dump() if previous else {}
    if job is not None and not (job.get("spec") or {}).get("suspend"):
        # Kueue admits by unsuspending the Job (the controller then sets startTime); without
        # Kueue the Job's creation is the admission.
        started = parse_time((job.get("status") or {}).get("startTime"))
        admitted = started if cj.spec.execution.queue_name else _created(job)
        if admitted is not None and values.get("queued") is None:
            values["queued"] = _seconds(cj.metadata.creation_timestamp, admitted)
    if pod is not None:
        scheduled = _is_true(pod, "PodScheduled")
        scheduled_at = parse_time(scheduled.get("lastTransitionTime")) if scheduled else None
        values["scheduling"] = _seconds(_created(pod), scheduled_at)
        state = _container(pod).get("state") or {}
        started = parse_time(
            (state.get("running") or state.get("terminated") or {}).get("startedAt")
        )
        values["image_pull"] = _seconds(scheduled_at, started)
    if report is not None and report.timings is not None:
        values.update(report.timings.model_dump(exclude_none=True))
    values = {key: value for key, value in values.items() if value is not None}
    return models.Timings.model_validate(values) if values else None


def result_url(s3_uri: str, settings: OperatorSettings) -> str:
    """The HTTPS URL of a result: ``COMPOSE_RESULT_URL_BASE`` + key, or the S3 virtual host."""
    bucket, _, key = s3_uri.removeprefix("s3://").partition("/")
    if settings.result_url_base:
        return settings.result_url_base.rstrip("/") + "/" + key
    return f"https://{bucket}.s3.{settings.aws_region}.amazonaws.com/{key}"


def merge_conditions(
    previous: Sequence[models.Condition],
    wanted: Sequence[Wanted],
    *,
    now: datetime.datetime,
    generation: int | None,
) -> tuple[list[models.Condition], list[Transition]]:
    """New conditions keep their lastTransitionTime while their status does not change."""
    old = {item.type: item for item in previous}
    merged: dict[str, models.Condition] = {}
    transitions: list[Transition] = []
    for item in wanted:
        before = old.get(item.type)
        same_status = before is not None and before.status == item.status
        if same_status and before is not None:
            changed = before.last_transition_time
        else:
            # ``since`` only if it falls after the condition's last change (else it tells of
            # an earlier turn: a resumed Job's creation is not its second admission).
            changed = min(item.since or now, now)
            if before is not None and changed < before.last_transition_time:
                changed = now
        merged[str(item.type)] = models.Condition(
            type=item.type,
            status=item.status,
            reason=str(item.reason),
            message=item.message,
            last_transition_time=changed,
            observed_generation=generation,
        )
        if not same_status or (before is not None and before.reason != item.reason):
            transitions.append(
                Transition(str(item.type), str(item.status), str(item.reason), item.message)
            )
    for kind, before in old.items():
        merged.setdefault(str(kind), before)
    ordered = sorted(
        merged.values(), key=lambda c: _CONDITION_ORDER.index(models.ConditionType(c.type))
    )
    return ordered, transitions


def derive_phase(conditions: Sequence[models.Condition]) -> models.Phase:
    by_type = {item.type: item for item in conditions}

    def true(kind: CT) -> models.Condition | None:
        found = by_type.get(kind)
        # Only Started is ever Unknown, and read as true here (Unknown sorts after True) it
        # gives Starting, as the intent below does: `>=` for `==` cannot change the phase.
        held = found is not None and found.status == TRUE  # pragma: no mutate: *_Eq_GtE
        return found if held else None

    if true(CT.FAILED):
        return models.Phase.FAILED
    if true(CT.SUCCEEDED):
        return models.Phase.SUCCEEDED
    if true(CT.SUSPENDED):
        return models.Phase.SUSPENDED
    if true(CT.QUEUED):
        return models.Phase.QUEUED
    started = true(CT.STARTED)
    if started is not None:
        return models.Phase.RUNNING if started.reason == Reason.RUNNING else models.Phase.STARTING
    if intent(conditions) is not None:
        return models.Phase.STARTING
    return models.Phase.PENDING


def intent(conditions: Sequence[models.Condition]) -> models.Condition | None:
    """The record written just before the Job is created (Started=Unknown, JobCreated): its
    lastTransitionTime is no later than the Job's creation. None once the Job is known."""
    for item in conditions:
        # No condition status sorts after Unknown: `>=` for the second `==` cannot change it.
        unknown = item.status == UNKNOWN  # pragma: no mutate: *_Eq_GtE
        if item.type == CT.STARTED and unknown:
            return item
    return None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A computed status, the transitions that produced it, and whether the Job must go."""

    status: models.CompositionJobStatus
    transitions: list[Transition]
    stop_job: bool = False

    @property
    def terminal(self) -> bool:
        return self.status.phase in models.TERMINAL_PHASES


def finish(
    previous: models.CompositionJobStatus,
    generation: int | None,
    wanted: list[Wanted],
    now: datetime.datetime,
    **fields: Any,
) -> tuple[models.CompositionJobStatus, list[Transition]]:
    conditions, transitions = merge_conditions(
        previous.conditions, wanted, now=now, generation=generation
    )
    phase = derive_phase(conditions)
    # The message of the most telling condition that holds, else of one in progress (Unknown:
    # a Job being created, a worker being waited for).
    # No condition status sorts after Unknown: `>=` for `==` cannot change the result.
    unknown = [c for c in conditions if c.status == UNKNOWN]  # pragma: no mutate: *_Eq_GtE
    message = next(
        (c.message for c in reversed(conditions) if c.status == TRUE and c.message),
        next((c.message for c in reversed(unknown) if c.message), None),
    )
    values = previous.model_dump()
    values.update(
        observed_generation=generation,
        phase=phase,
        message=message,
        conditions=conditions,
    )
    values.update(fields)
    if phase in models.TERMINAL_PHASES and values.get("completion_time") is None:
        values["completion_time"] = now
    return models.CompositionJobStatus.model_validate(values), transitions


def rejected(
    previous: models.CompositionJobStatus,
    generation: int | None,
    reason: Reason,
    message: str,
    *,
    now: datetime.datetime,
) -> Outcome:
    """An invalid spec or unknown profile: not accepted, failed, and no Job is ever created."""
    wanted = [Wanted(CT.ACCEPTED, FALSE, reason, message), Wanted(CT.FAILED, TRUE, reason, message)]
    status, transitions = finish(previous, generation, wanted, now)
    return Outcome(status, transitions)


def waiting(
    cj: models.CompositionJob,
    *,
    seed: int,
    queue: Queue | None,
    now: datetime.datetime,
    creating: str | None = None,
    refused: str | None = None,
) -> Outcome:
    """Accepted, no Job yet: held by the user, queued behind the namespace cap, or admitted.

    ``creating`` names the Job about to be created: the intent is recorded (Started=Unknown,
    JobCreated) before the create, so that a restart can tell a Job that was never created
    from one that finished and was deleted while the operator was down. ``refused``: the API
    server's answer to that create, which made none (Started=Unknown, JobCreateFailed, a
    warning); the next try keeps that record as it is until a Job exists, so that trying
    again costs no write."""
    wanted = [Wanted(CT.ACCEPTED, TRUE, Reason.VALID, "")]
    if queue is not None:
        wanted.append(_waiting_for_capacity(cj, queue))
    else:
        wanted.append(Wanted(CT.QUEUED, FALSE, Reason.ADMITTED, ""))
    if creating is not None and queue is None and not cj.spec.suspend:
        wanted.append(_intent(cj.status, creating, refused))
    wanted.extend(_suspension(cj))
    status, transitions = finish(
        cj.status,
        cj.metadata.generation,
        wanted,
        now,
        seed=seed,
        queue_position=queue.position if queue else None,
    )
    return Outcome(status, transitions)


def _intent(previous: models.CompositionJobStatus, creating: str, refused: str | None) -> Wanted:
    if refused is not None:
        message = f"creating job {creating} was refused, trying again: {refused}"
        return Wanted(CT.STARTED, UNKNOWN, Reason.JOB_CREATE_FAILED, message)
    found = intent(previous.conditions)
    same_job = found is not None and found.message.startswith(f"creating job {creating} ")
    # Only a refusal's message goes on after the Job's name (the plain intent's ends there), so
    # with `same_job` any reason test that JobCreateFailed passes gives the same result: `<=`,
    # `>=` or `is not` (a reason is a plain string, never the member) for `==` cannot change it.
    if (
        found is not None
        and found.reason == Reason.JOB_CREATE_FAILED  # pragma: no mutate: *_Eq_[GL]tE, *_IsNot
        and same_job
    ):
        return Wanted(CT.STARTED, UNKNOWN, Reason.JOB_CREATE_FAILED, found.message)
    return Wanted(CT.STARTED, UNKNOWN, Reason.JOB_CREATED, f"creating job {creating}")


def _waiting_for_capacity(cj: models.CompositionJob, queue: Queue) -> Wanted:
    """Queued behind the caps. The depth is left out of the message: it changes with every
    job that arrives or starts, and a waiting job's status is rewritten only when its own
    position is refreshed (see :mod:`compose_operator.plan`)."""
    namespace = cj.metadata.namespace
    text = f"waiting for a free slot in namespace {namespace}: position {queue.position}"
    return Wanted(CT.QUEUED, TRUE, Reason.WAITING_FOR_CAPACITY, text)


def _suspension(cj: models.CompositionJob) -> list[Wanted]:
    if cj.spec.suspend:
        return [Wanted(CT.SUSPENDED, TRUE, Reason.SUSPENDED_BY_USER, "suspended by spec.suspend")]
    # No condition type sorts after Suspended: `>=` for `==` cannot change the result.
    if any(c.type == CT.SUSPENDED for c in cj.status.conditions):  # pragma: no mutate: *_Eq_GtE
        return [Wanted(CT.SUSPENDED, FALSE, Reason.RESUMED, "")]
    return []


def lost(cj: models.CompositionJob, job_name: str, *, now: datetime.datetime) -> Outcome:
    """The Job this status points at is gone before it reported an outcome."""
    message = f"job {job_name} disappeared before it finished"
    wanted = [Wanted(CT.FAILED, TRUE, Reason.JOB_LOST, message)]
    attempts = [_vanished(item) for item in cj.status.attempts]  # its pods went with it
    status, transitions = finish(cj.status, cj.metadata.generation, wanted, now, attempts=attempts)
    return Outcome(status, transitions)


@dataclasses.dataclass(frozen=True)
class Run:
    """The child Job and its pods, read once for :func:`compute` and its condition functions."""

    job_name: str
    job_suspended: bool
    job_complete: bool
    job_started: datetime.datetime | None  # the Job's startTime, else its creation
    job_created: datetime.datetime | None
    attempts: list[models.Attempt]
    latest: Mapping[str, Any] | None  # the newest pod
    view: PodView | None  # of the newest pod
    failed: list[PodView]  # the views of the pods that failed, oldest first
    success: PodView | None  # the newest pod that succeeded with a readable result
    start_time: datetime.datetime | None  # when a pod first ran
    result: models.Result | None
    # Why the Job controller cannot create the Job's pod, while no pod of it has started since
    refused: str | None = None

    @property
    def last_failed(self) -> PodView | None:
        return self.failed[-1] if self.failed else None


def read_run(
    cj: models.CompositionJob,
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, str]],
    settings: OperatorSettings,
    refusal: Refusal | None = None,
) -> Run:
    previous = cj.status
    job_name = _name(job)
    own_pods = sorted(pods, key=_pod_order(previous.attempts))
    suspension = _suspension_of(cj, job)
    # A pod stopped by a suspension stays so while it is deleted, after a resume too (only an
    # interrupted attempt is given a suspension's reason).
    stops = {
        item.pod_name: (str(item.reason), item.message or "")
        for item in previous.attempts
        if item.reason in _SUSPENSIONS
    }
    views = [_stopped(view_pod(p), p, suspension or stops.get(_name(p))) for p in own_pods]
    # One view per pod, so `strict` cannot change the result.
    attempts = _attempts(
        previous.attempts,
        job_name,
        list(zip(own_pods, views, strict=True)),  # pragma: no mutate: ReplaceTrueWithFalse
        nodes,
        suspension,
    )
    start_time = previous.start_time
    if start_time is None:
        for pod in own_pods:
            state = _container(pod).get("state") or {}
            began = parse_time(
                (state.get("running") or state.get("terminated") or {}).get("startedAt")
            )
            if began is not None:
                start_time = began if start_time is None else min(start_time, began)
    # No attempt outcome sorts after Succeeded: `>=` for `==` cannot change the result.
    succeeded = [v for v in views if v.outcome == "Succeeded"]  # pragma: no mutate: *_Eq_GtE
    success = succeeded[-1] if succeeded else None
    result = previous.result
    found = success.report.result if success is not None and success.report else None
    if found is not None:
        result = found.model_copy(update={"url": found.url or result_url(found.s3_uri, settings)})
    return Run(
        job_name=job_name,
        job_suspended=bool((job.get("spec") or {}).get("suspend")),
        job_complete=_is_true(job, "Complete") is not None
        or _is_true(job, "SuccessCriteriaMet") is not None,
        job_started=parse_time((job.get("status") or {}).get("startTime")) or _created(job),
        job_created=_created(job),
        attempts=attempts,
        latest=own_pods[-1] if own_pods else None,
        view=views[-1] if views else None,
        # Pending, Running, Succeeded and Interrupted sort after "Failed": `<=` for `==`
        # cannot change the result.
        failed=[v for v in views if v.outcome == "Failed"],  # pragma: no mutate: *_Eq_LtE
        success=success,
        start_time=start_time,
        result=result,
        refused=_still_refused(refusal, job_name, attempts),
    )


def _still_refused(
    refusal: Refusal | None, job_name: str, attempts: Sequence[models.Attempt]
) -> str | None:
    """The refusal's message, if it is this Job's and no pod of the Job started after it."""
    if refusal is None or refusal.job_name != job_name:
        return None
    started = [a.start_time for a in attempts if a.job_name == job_name and a.start_time]
    if any(when >= refusal.at for when in started):
        return None
    return refusal.message


def _queued(cj: models.CompositionJob, run: Run, queue: Queue | None) -> Wanted:
    """Queued: behind the caps (a resumed Job held), waiting for Kueue, or admitted."""
    if queue is not None:
        return _waiting_for_capacity(cj, queue)
    name = cj.spec.execution.queue_name
    if name and run.job_suspended and not cj.spec.suspend:
        message = f"waiting for Kueue to admit job {run.job_name} (queue {name})"
        return Wanted(CT.QUEUED, TRUE, Reason.WAITING_FOR_ADMISSION, message)
    # Without Kueue the Job's creation is the admission, which a job that waited behind the
    # caps has not written before (plan's quiet admission); Kueue's is seen when it is seen.
    admitted = None if name else run.job_created
    return Wanted(CT.QUEUED, FALSE, Reason.ADMITTED, "", since=admitted)


def _succeeded(run: Run, failure: tuple[str, str] | None) -> Wanted | None:
    """Succeeded: a pod finished with a readable result (that wins over a Job failure that
    raced it), or the Job completed and the result is known."""
    if run.success is None and not (run.job_complete and failure is None):
        return None
    done = f"stored at {run.result.s3_uri}" if run.result else "completed"
    return Wanted(CT.SUCCEEDED, TRUE, Reason.COMPLETED, done)


def _failure(run: Run, job: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why the run failed for good, if it did: the Job failed, the last pod's exit code is
    one no retry can fix, or the Job completed without a result to read."""
    failure = _job_failure(job, run.last_failed, len(run.failed))
    view = run.view
    # Of the outcomes, only Failed sorts at or before "Failed": `<=` for `==` cannot change it.
    if (
        failure is None
        and view is not None
        and view.outcome == "Failed"  # pragma: no mutate: *_Eq_LtE
    ):
        code = view.exit_code
        if code is not None and code in contract.PERMANENT_EXIT_CODES:
            failure = (str(view.reason), view.message or "")
        # exit 0: the Job completes, no retry. view_pod sets this reason as the member itself (no
        # container reports it: it is no ExitCode's reason), so `is` for `==` cannot change it.
        elif view.reason == Reason.RESULT_UNREADABLE:  # pragma: no mutate: *_Eq_Is
            failure = (Reason.RESULT_UNREADABLE, view.message or "")
    if failure is None and run.job_complete and run.result is None:
        # The Job completed, but no pod is left to read the result from (pods are listed
        # afresh before a terminal status is written): success without a result is not one.
        failure = (
            Reason.RESULT_UNREADABLE,
            f"job {run.job_name} completed, but no pod with its result is left",
        )
    return failure


def _progress(run: Run) -> tuple[str, str]:
    """The Started reason and message while no outcome is known."""
    view = run.view
    if view is None and run.refused is not None:
        return Reason.POD_CREATE_FAILED, f"job {run.job_name} cannot create its pod: {run.refused}"
    if view is None:
        return Reason.JOB_CREATED, f"job {run.job_name} created"
    if view.outcome == "Interrupted":
        if view.reason in _SUSPENSIONS:
            # Resumed while the stopped pod is still being deleted: no warning, nothing failed.
            return Reason.JOB_CREATED, f"job {run.job_name} resumed; a new pod will be created"
        return Reason.SPOT_INTERRUPTED, (view.message or "") + "; a replacement pod will be created"
    # Interrupted returned above; Pending, Running and Succeeded sort after "Failed": `<=` for
    # `==` cannot change the result.
    if view.outcome == "Failed":  # pragma: no mutate: *_Eq_LtE
        failed = f"attempt {len(run.attempts) - 1} failed: {view.reason}: {view.message or ''}"
        return Reason.RETRYING, failed
    return str(view.reason), view.message or ""


def _start_deadline(
    cj: models.CompositionJob, run: Run, now: datetime.datetime, reason: str, message: str
) -> Wanted | None:
    """Failed: no pod has run ``startDeadlineSeconds`` after the Job started (strictly after:
    at the deadline itself the job still has its chance). Unschedulable and image pull
    back-off name themselves as the reason; anything else is StartDeadlineExceeded."""
    deadline = cj.spec.execution.start_deadline_seconds
    ever_ran = run.start_time is not None or any(a.exit_code is not None for a in run.attempts)
    origin = run.job_started
    if ever_ran or origin is None or (now - origin).total_seconds() <= deadline:
        return None
    specific = reason in (
        Reason.UNSCHEDULABLE,
        Reason.IMAGE_PULL_BACK_OFF,
        Reason.POD_CREATE_FAILED,
    )
    text = f"no pod running {deadline}s after the job started" + (f": {message}" if message else "")
    return Wanted(CT.FAILED, TRUE, reason if specific else Reason.START_DEADLINE_EXCEEDED, text)


def _resumed_at_the_end(cj: models.CompositionJob, finished: bool) -> list[Wanted]:
    """Suspended: as the spec says while running; a finished job is no longer suspended."""
    if not finished:
        return _suspension(cj)
    # No condition type sorts after Suspended: `>=` for `==` cannot change the result.
    held = cj.status.conditions
    suspension = [c for c in held if c.type == CT.SUSPENDED]  # pragma: no mutate: *_Eq_GtE
    # A Suspended condition is True or False (never Unknown), so `>=` is `==`; and False always
    # reads Resumed with no message: `<`, `<=` or `is not` (always true on a plain str) for
    # `==` re-states that same condition (no transition, no Event, the same
    # lastTransitionTime; at most its observedGeneration moves).
    if any(c.status == TRUE for c in suspension):  # pragma: no mutate: *_Eq_Lt*,*_Eq_GtE,*_IsNot
        return [Wanted(CT.SUSPENDED, FALSE, Reason.RESUMED, "")]
    return []


def compute(
    cj: models.CompositionJob,
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    now: datetime.datetime,
    settings: OperatorSettings,
    seed: int,
    nodes: Mapping[str, Mapping[str, str]] | None = None,
    queue: Queue | None = None,
    refusal: Refusal | None = None,
) -> Outcome:
    """The status of a CompositionJob whose child Job exists: one function per condition.

    ``queue`` is set when the Job is held suspended behind the caps (a resumed job waiting for
    a slot); ``refusal`` is the latest word of the Job controller that it cannot create the
    pod of one of the job's Jobs."""
    run = read_run(cj, job, pods, nodes or {}, settings, refusal)
    wanted: list[Wanted] = [Wanted(CT.ACCEPTED, TRUE, Reason.VALID, ""), _queued(cj, run, queue)]
    failure = _failure(run, job)
    succeeded = _succeeded(run, failure)
    stop_job = False
    report = None
    if succeeded is not None:
        report = run.success.report if run.success else None
        wanted += [Wanted(CT.STARTED, TRUE, Reason.RUNNING, ""), succeeded]
    elif failure is not None:
        report = run.last_failed.report if run.last_failed else None
        if run.start_time is not None:
            wanted.append(Wanted(CT.STARTED, TRUE, Reason.RUNNING, ""))
        wanted.append(Wanted(CT.FAILED, TRUE, failure[0], failure[1]))
    elif cj.spec.suspend or queue is not None:
        # Suspended for the user, or held suspended behind the caps once resumed: the Job
        # named is the latest attempt's (an edit while it waits makes a new one).
        message = f"job {run.job_name} suspended"
        wanted.append(Wanted(CT.STARTED, FALSE, Reason.JOB_CREATED, message))
    elif not run.job_suspended:  # a suspended Job waits for Kueue: the Queued condition says so
        reason, message = _progress(run)
        late = _start_deadline(cj, run, now, reason, message)
        stop_job = late is not None
        wanted.append(late or Wanted(CT.STARTED, TRUE, reason, message))
    finished = any(w.type in (CT.SUCCEEDED, CT.FAILED) for w in wanted)
    wanted.extend(_resumed_at_the_end(cj, finished))
    if report is None and run.view is not None:
        report = run.view.report
    status, transitions = finish(
        cj.status,
        cj.metadata.generation,
        wanted,
        now,
        seed=seed,
        attempt=(len(run.attempts) - 1) if run.attempts else None,
        attempts=run.attempts,
        queue_position=queue.position if queue else None,
        start_time=run.start_time,
        timings=_timings(cj, job, run.latest, report, cj.status.timings),
        result=run.result,
    )
    return Outcome(status, transitions, stop_job=stop_job)


@dataclasses.dataclass(frozen=True)
class Event:
    """One Kubernetes Event about a CompositionJob."""

    type: str  # Normal or Warning
    reason: str
    message: str


def event_for(previous: models.CompositionJobStatus, outcome: Outcome) -> Event | None:
    """The Event a status write posts, if any: the transitions a user reads.

    Those are the first status of a job (created, queued or rejected), the start of its run,
    its end, a suspension or resumption, and every warning (no GPU capacity, image pull
    back-off, a retry, a spot interruption). Progress within a phase (the Job created, the pod
    scheduled, the image pulling) is in status only. So a successful job posts three Events.
    The reason is the most telling transition's; the message lists them all."""
    items = outcome.transitions
    if not items:
        return None
    phase = outcome.status.phase
    finished = outcome.terminal and previous.phase not in models.TERMINAL_PHASES
    started = phase == models.Phase.RUNNING and previous.phase != models.Phase.RUNNING
    warnings = [t for t in items if t.warning]
    # No condition type sorts after Suspended: `>=` for `==` cannot change the result.
    suspension = any(t.type == CT.SUSPENDED for t in items)  # pragma: no mutate: *_Eq_GtE
    if not (not previous.conditions or finished or started or warnings or suspension):
        return None
    # Succeeded and Failed are only ever set True: `is not` for `==` (always true on a plain
    # str), `<=` (True or False) or `>=` (True or Unknown) keeps the same transitions.
    ending = [
        t
        for t in items
        if t.type in (CT.SUCCEEDED, CT.FAILED)
        and t.status == TRUE  # pragma: no mutate: *_Eq_IsNot, *_Eq_[GL]tE
    ]
    named = (ending or warnings or items)[-1]
    text = "; ".join(
        f"{t.type}={t.status} {t.reason}" + (f": {t.message}" if t.message else "") for t in items
    )
    return Event("Warning" if warnings else "Normal", named.reason, text)


def start_deadline_at(
    cj: models.CompositionJob, job: Mapping[str, Any], outcome: Outcome
) -> datetime.datetime | None:
    """When the start deadline of a Job whose pod has not run yet falls due (None: it does
    not apply): the first whole second past ``startDeadlineSeconds`` after the Job started."""
    if outcome.status.phase != models.Phase.STARTING or outcome.status.start_time is not None:
        return None
    if (job.get("spec") or {}).get("suspend"):
        return None
    origin = parse_time((job.get("status") or {}).get("startTime")) or _created(job)
    if origin is None:
        return None
    seconds = cj.spec.execution.start_deadline_seconds + 1
    return origin + datetime.timedelta(seconds=seconds)


def to_patch(new: pydantic.BaseModel, old: pydantic.BaseModel) -> dict[str, Any] | None:
    """A JSON merge patch for a ``status`` (a job's or a pool's; None when nothing changed);
    removed keys become null."""
    before = old.model_dump(mode="json", by_alias=True, exclude_none=True)
    after = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    if before == after:
        return None
    patch: dict[str, Any] = dict(after)
    for key in before:
        if key not in after:
            patch[key] = None
    return patch
