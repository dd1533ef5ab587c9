"""How an attempt ends when its Job is suspended: the Job controller stops the pod (SIGTERM,
then deletes it), which is neither a failure nor a spot interruption, and the attempt says so.

On a real cluster the stopped pod first shows its container terminated (143 for the SIGTERM)
with ``metadata.deletionTimestamp`` set, then goes; kwok deletes it at once. Both are covered."""

from __future__ import annotations

import pathlib
from typing import Any

from compose_api import contract, models
from compose_operator import status
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_status import (
    JOB,
    NODES,
    at,
    cond,
    job,
    pod,
    report,
    scheduled,
    terminated,
    ts,
)

Reason = models.Reason
Outcome = models.AttemptOutcome


def running_pod() -> dict[str, Any]:
    return pod(
        "p0",
        6,
        phase="Running",
        node="gpu-1",
        conditions=[scheduled(7)],
        state={"running": {"startedAt": ts(20)}},
    )


def stopping(body: dict[str, Any], state: dict[str, Any], phase: str = "Failed") -> dict[str, Any]:
    """The pod as the kubelet reports it once the Job controller deleted it."""
    stopped = dict(body)
    stopped["metadata"] = {**body["metadata"], "deletionTimestamp": ts(40)}
    stopped["status"] = {
        **body["status"],
        "phase": phase,
        "containerStatuses": [{"name": "compose", "state": state}],
    }
    return stopped


def sigterm() -> dict[str, Any]:
    return terminated(143, 20, 41, None)


def compute(
    tmp_path: pathlib.Path,
    previous: status.Outcome | None,
    the_job: dict[str, Any],
    pods: list[dict[str, Any]],
    seconds: float,
    *,
    suspend: bool = False,
) -> status.Outcome:
    cj = make_cj(suspend=suspend)
    if previous is not None:
        cj = cj.model_copy(update={"status": previous.status})
    return status.compute(
        cj,
        the_job,
        pods,
        now=at(seconds),
        settings=make_settings(tmp_path),
        seed=1,
        nodes=NODES,
    )


def conditions(outcome: status.Outcome) -> dict[str, tuple[str, str, str]]:
    return {str(c.type): (str(c.status), c.reason, c.message) for c in outcome.status.conditions}


def test_a_pod_stopped_by_the_users_suspension_ends_its_attempt_interrupted(
    tmp_path: pathlib.Path,
) -> None:
    ran = compute(tmp_path, None, job(), [running_pod()], 30)
    held = compute(
        tmp_path, ran, job(suspend=True), [stopping(running_pod(), sigterm())], 41, suspend=True
    )
    attempt = held.status.attempts[0]
    assert (attempt.outcome, attempt.reason) == (Outcome.INTERRUPTED, Reason.SUSPENDED_BY_USER)
    assert attempt.message == "the pod was stopped when the job was suspended"
    assert attempt.exit_code == 143  # what the container did is kept
    assert attempt.end_time == at(41)
    # Not a retry and not a failure: the job reads suspended, with no warning.
    assert held.status.phase == models.Phase.SUSPENDED
    assert conditions(held)["Started"] == ("False", Reason.JOB_CREATED, f"job {JOB} suspended")
    assert "Failed" not in conditions(held)
    assert not [t for t in held.transitions if t.warning]
    event = status.event_for(ran.status, held)
    assert event is not None and event.type == "Normal"
    # Once the pod is gone, the attempt stays as it ended.
    gone = compute(tmp_path, held, job(suspend=True), [], 45, suspend=True)
    assert gone.status.attempts == held.status.attempts


def test_the_same_pod_stopped_while_the_job_runs_is_a_failed_attempt(
    tmp_path: pathlib.Path,
) -> None:
    # Deleted by hand while its Job runs: the exit is a failure the Job controller retries.
    ran = compute(tmp_path, None, job(), [running_pod()], 30)
    later = compute(tmp_path, ran, job(), [stopping(running_pod(), sigterm())], 41)
    attempt = later.status.attempts[0]
    assert (attempt.outcome, attempt.reason) == (Outcome.FAILED, Reason.CONTAINER_FAILED)
    assert conditions(later)["Started"][1] == Reason.RETRYING


def test_a_pod_of_a_job_suspended_but_not_by_its_user_names_the_job(
    tmp_path: pathlib.Path,
) -> None:
    # Kueue suspends a Job to take its quota back; spec.suspend is not set.
    ran = compute(tmp_path, None, job(), [running_pod()], 30)
    taken = compute(tmp_path, ran, job(suspend=True), [stopping(running_pod(), sigterm())], 41)
    attempt = taken.status.attempts[0]
    assert (attempt.outcome, attempt.reason) == (Outcome.INTERRUPTED, Reason.JOB_SUSPENDED)
    assert attempt.message == (
        f"the pod was stopped when job {JOB} was suspended, not by spec.suspend"
    )
    assert not [t for t in taken.transitions if t.warning]


def test_a_pod_still_starting_when_stopped_is_interrupted_too(tmp_path: pathlib.Path) -> None:
    # No container ran: the pod was Pending, pulling its image, when the Job was suspended.
    pulling = pod("p0", 6, node="gpu-1", conditions=[scheduled(7)])
    before = compute(tmp_path, None, job(), [pulling], 10)
    assert before.status.attempts[0].reason == Reason.IMAGE_PULLING
    deleted = dict(pulling, metadata={**pulling["metadata"], "deletionTimestamp": ts(11)})
    held = compute(tmp_path, before, job(suspend=True), [deleted], 11, suspend=True)
    attempt = held.status.attempts[0]
    assert (attempt.outcome, attempt.reason) == (Outcome.INTERRUPTED, Reason.SUSPENDED_BY_USER)
    assert attempt.exit_code is None


def test_a_pod_that_vanished_while_suspended_says_why(tmp_path: pathlib.Path) -> None:
    # kwok (and a grace period of 0) deletes the pod at once: the attempt's pod is just gone.
    ran = compute(tmp_path, None, job(), [running_pod()], 30)
    by_user = compute(tmp_path, ran, job(suspend=True), [], 41, suspend=True)
    attempt = by_user.status.attempts[0]
    assert (attempt.outcome, attempt.reason) == (Outcome.INTERRUPTED, Reason.SUSPENDED_BY_USER)
    assert attempt.message == "the pod was stopped when the job was suspended"
    by_kueue = compute(tmp_path, ran, job(suspend=True), [], 41)
    assert by_kueue.status.attempts[0].reason == Reason.JOB_SUSPENDED
    # Gone while nothing was suspended: deleted, and the last reason it had is not kept.
    deleted = compute(tmp_path, ran, job(), [], 41)
    attempt = deleted.status.attempts[0]
    assert (attempt.outcome, attempt.reason) == (Outcome.INTERRUPTED, Reason.POD_DELETED)
    assert attempt.message == "the pod was deleted before it finished"


def test_a_job_resumed_before_its_stopped_pod_is_gone_starts_again_without_a_warning(
    tmp_path: pathlib.Path,
) -> None:
    ran = compute(tmp_path, None, job(), [running_pod()], 30)
    stopped = stopping(running_pod(), sigterm())
    held = compute(tmp_path, ran, job(suspend=True), [stopped], 41, suspend=True)
    # Resumed: the Job runs again while the old pod is still being deleted. Its attempt was
    # recorded as stopped by the suspension; the job is starting again, not interrupted.
    resumed = compute(tmp_path, held, job(), [stopped], 42)
    assert resumed.status.attempts[0].reason == Reason.SUSPENDED_BY_USER
    assert resumed.status.attempts[0].message == "the pod was stopped when the job was suspended"
    started = conditions(resumed)["Started"]
    assert started == ("True", Reason.JOB_CREATED, f"job {JOB} resumed; a new pod will be created")
    assert not [t for t in resumed.transitions if t.warning]
    assert resumed.status.phase == models.Phase.STARTING


def test_what_a_stopped_pod_did_before_the_stop_is_kept(tmp_path: pathlib.Path) -> None:
    ran = compute(tmp_path, None, job(), [running_pod()], 30)
    # Its result was in before the SIGTERM came: a success, whatever came after.
    done = terminated(0, 20, 39, report(contract.ExitCode.OK, result=True))
    finished = compute(
        tmp_path,
        ran,
        job(suspend=True),
        [stopping(running_pod(), done, "Succeeded")],
        41,
        suspend=True,
    )
    assert finished.status.attempts[0].outcome == Outcome.SUCCEEDED
    assert finished.status.phase == models.Phase.SUCCEEDED
    # The container said why it failed (no face): that failure stands.
    no_face = terminated(11, 20, 39, report(contract.ExitCode.NO_FACE, "no face"))
    failed = compute(
        tmp_path, ran, job(suspend=True), [stopping(running_pod(), no_face)], 41, suspend=True
    )
    attempt = failed.status.attempts[0]
    assert (attempt.outcome, attempt.reason) == (Outcome.FAILED, Reason.NO_FACE_FOUND)
    assert failed.status.phase == models.Phase.FAILED
    # A spot interruption that the suspension raced keeps its own reason.
    drained = stopping(running_pod(), sigterm())
    drained["status"]["conditions"] = [
        scheduled(7),
        cond("DisruptionTarget", "DeletionByTaintManager", "spot reclaimed"),
    ]
    spot = compute(tmp_path, ran, job(suspend=True), [drained], 41, suspend=True)
    attempt = spot.status.attempts[0]
    assert (attempt.outcome, attempt.reason) == (Outcome.INTERRUPTED, Reason.SPOT_INTERRUPTED)
