"""The edges of the status mapping that a small slip would get wrong: reasons told apart by
name, a Job failure with no reason, a deadline one second later, a job never suspended."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import pytest

from compose_api import contract, models
from compose_operator import status
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_status import (
    JOB,
    at,
    cond,
    job,
    pod,
    report,
    scheduled,
    succeeded_pod,
    terminated,
    ts,
)


def from_api(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as it arrives from the API server: decoded from JSON, so its strings are new
    objects (not the interned literals of the test), as the operator's are."""
    decoded: dict[str, Any] = json.loads(json.dumps(body))
    return decoded


def _compute(
    tmp_path: pathlib.Path,
    child: dict[str, Any],
    pods: list[dict[str, Any]],
    now: float,
    *,
    previous: models.CompositionJobStatus | None = None,
    queue: status.Queue | None = None,
    **spec: Any,
) -> status.Outcome:
    cj = make_cj(**spec)
    if previous is not None:
        cj = cj.model_copy(update={"status": previous})
    return status.compute(
        cj, child, pods, now=at(now), settings=make_settings(tmp_path), seed=42, queue=queue
    )


def _ended(
    code: int,
    message: str | None,
    *,
    name: str = "p1",
    created: float = 6,
    phase: str = "Failed",
) -> dict[str, Any]:
    """A pod whose container exited with ``code`` and the termination ``message``."""
    return pod(
        name,
        created,
        phase=phase,
        node="gpu-1",
        conditions=[scheduled(created + 1)],
        state=terminated(code, created + 2, created + 5, message),
    )


def _condition(outcome: status.Outcome, kind: str) -> models.Condition:
    return next(c for c in outcome.status.conditions if c.type == kind)


def test_a_pod_held_by_a_scheduling_gate_is_scheduling_not_unschedulable() -> None:
    # PodScheduled=False for another reason than Unschedulable (Kueue's or a user's scheduling
    # gates): the pod waits to be scheduled, it is no sign of missing GPU capacity.
    gated = pod("p1", 6, conditions=[cond("PodScheduled", "SchedulingGated", "", "False")])
    assert status.view_pod(from_api(gated)).reason == models.Reason.SCHEDULING
    full = pod("p1", 6, conditions=[cond("PodScheduled", "Unschedulable", "0/3 nodes", "False")])
    assert status.view_pod(from_api(full)).reason == models.Reason.UNSCHEDULABLE
    # PodScheduled=Unknown is no placement on a node: still scheduling, not pulling the image.
    unknown = pod("p1", 6, conditions=[cond("PodScheduled", "", "", "Unknown")])
    assert status.view_pod(from_api(unknown)).reason == models.Reason.SCHEDULING
    assert not status.view_pod(from_api(unknown)).ran


def test_a_job_that_failed_without_a_reason_or_a_pod_is_a_container_failure(
    tmp_path: pathlib.Path,
) -> None:
    outcome = _compute(tmp_path, job({"type": "Failed", "status": "True"}), [], 30)
    failed = next(c for c in outcome.status.conditions if c.type == "Failed")
    assert (failed.reason, failed.message) == (models.Reason.CONTAINER_FAILED, "the job failed")


def test_the_start_deadline_timer_is_one_second_past_an_odd_deadline(
    tmp_path: pathlib.Path,
) -> None:
    execution = {"startDeadlineSeconds": 61, "activeDeadlineSeconds": 600}
    outcome = _compute(tmp_path, job(), [pod("p1", 6)], 10, execution=execution)
    cj = make_cj(execution=execution)
    assert status.start_deadline_at(cj, job(), outcome) == at(5 + 61 + 1)


def test_a_job_never_suspended_finishes_without_a_suspended_condition(
    tmp_path: pathlib.Path,
) -> None:
    running = _compute(
        tmp_path,
        job(),
        [
            pod(
                "p1",
                6,
                node="gpu-1",
                conditions=[scheduled(8)],
                state={"running": {"startedAt": ts(20)}},
            )
        ],
        30,
    )
    assert running.status.phase == models.Phase.RUNNING
    done = _compute(
        tmp_path,
        job(cond("Complete", "CompletionsReached")),
        [succeeded_pod()],
        61,
        previous=running.status,
    )
    assert done.status.phase == models.Phase.SUCCEEDED
    assert all(c.type != "Suspended" for c in done.status.conditions)
    assert all(t.type != "Suspended" for t in done.transitions)


def test_the_start_deadline_counts_from_the_jobs_start_not_its_creation(
    tmp_path: pathlib.Path,
) -> None:
    # Created at 5 s, started (admitted) at 30 s: the 60 s start deadline ends after 90 s.
    admitted_late = job()
    admitted_late["status"]["startTime"] = ts(30)
    waiting = _compute(tmp_path, admitted_late, [pod("p1", 31)], 80)
    assert waiting.status.phase == models.Phase.STARTING
    assert not waiting.stop_job
    assert status.start_deadline_at(make_cj(), admitted_late, waiting) == at(30 + 60 + 1)
    late = _compute(tmp_path, admitted_late, [pod("p1", 31)], 91)
    assert late.stop_job


def test_a_job_suspended_by_its_user_reads_suspended(tmp_path: pathlib.Path) -> None:
    outcome = _compute(tmp_path, job(suspend=True), [], 10, suspend=True)
    assert outcome.status.phase == models.Phase.SUSPENDED
    suspended = next(c for c in outcome.status.conditions if c.type == "Suspended")
    assert (suspended.status, suspended.reason) == ("True", models.Reason.SUSPENDED_BY_USER)


def test_a_job_that_finishes_while_suspended_is_no_longer_suspended(
    tmp_path: pathlib.Path,
) -> None:
    # Suspended after its pod had already succeeded: it finishes, and says it is not suspended.
    held = _compute(tmp_path, job(suspend=True), [], 10, suspend=True)
    done = _compute(
        tmp_path,
        job(cond("Complete", "CompletionsReached"), suspend=True),
        [succeeded_pod()],
        61,
        previous=held.status,
        suspend=True,
    )
    assert done.status.phase == models.Phase.SUCCEEDED
    suspended = next(c for c in done.status.conditions if c.type == "Suspended")
    assert (suspended.status, suspended.reason) == ("False", models.Reason.RESUMED)
    # The Event is named after the ending, not after the resumption that came with it.
    event = status.event_for(held.status, done)
    assert event is not None
    assert (event.type, event.reason) == ("Normal", models.Reason.COMPLETED)


def test_a_job_held_behind_the_cap_has_no_queue_time_yet(tmp_path: pathlib.Path) -> None:
    # The operator holds the Job suspended (no Kueue): it has not been admitted.
    outcome = _compute(
        tmp_path, job(suspend=True, start=None), [], 10, queue=status.Queue(position=1, depth=1)
    )
    assert outcome.status.timings is None or outcome.status.timings.queued is None


def test_the_compose_container_is_read_whatever_its_place_among_the_containers() -> None:
    # A sidecar (a service mesh proxy) listed first, still running: the compose container's
    # exit decides.
    failed = pod(
        "p1",
        6,
        phase="Running",
        node="gpu-1",
        conditions=[scheduled(8)],
        state=terminated(11, 20, 30, report(contract.ExitCode.NO_FACE, "no face in person")),
    )
    compose = failed["status"]["containerStatuses"][0]
    sidecar = {"name": "istio-proxy", "state": {"running": {"startedAt": ts(7)}}}
    failed["status"]["containerStatuses"] = [sidecar, compose]
    view = status.view_pod(from_api(failed))
    assert (view.outcome, view.reason, view.exit_code) == (
        models.AttemptOutcome.FAILED,
        models.Reason.NO_FACE_FOUND,
        11,
    )


def test_a_failed_pod_without_a_container_state_is_read_from_its_phase() -> None:
    # Stopped at activeDeadlineSeconds before its container started: DeadlineExceeded.
    expired = pod("p1", 6, phase="Failed", conditions=[scheduled(8)])
    expired["status"].update(reason="DeadlineExceeded", message="Pod was active too long")
    view = status.view_pod(from_api(expired))
    assert (view.outcome, view.reason, view.message) == (
        models.AttemptOutcome.FAILED,
        models.Reason.DEADLINE_EXCEEDED,
        "Pod was active too long",
    )
    # Failed for another reason (evicted, no disruption condition): a container failure.
    evicted = pod("p1", 6, phase="Failed", conditions=[scheduled(8)])
    evicted["status"].update(reason="Evicted", message="low on ephemeral storage")
    view = status.view_pod(from_api(evicted))
    assert (view.outcome, view.reason) == (models.AttemptOutcome.FAILED, "ContainerFailed")


def test_a_pod_that_succeeded_without_a_container_state_has_no_result() -> None:
    bare = pod("p1", 6, phase="Succeeded", node="gpu-1", conditions=[scheduled(8)])
    view = status.view_pod(from_api(bare))
    assert (view.outcome, view.reason) == (
        models.AttemptOutcome.FAILED,
        models.Reason.RESULT_UNREADABLE,
    )


def test_a_pod_whose_node_stopped_reporting_is_not_finished() -> None:
    # Phase Unknown: the node lost contact; the container was running when last heard of.
    lost = pod(
        "p1",
        6,
        phase="Unknown",
        node="gpu-1",
        conditions=[scheduled(8)],
        state={"running": {"startedAt": ts(20)}},
    )
    assert status.view_pod(from_api(lost)).outcome == models.AttemptOutcome.RUNNING


def test_which_pods_ran() -> None:
    # What decides whether a spec edit may still rebuild the Job (no pod has run yet).
    assert status.view_pod(from_api(succeeded_pod())).ran
    pulling = pod("p1", 6, node="gpu-1", conditions=[scheduled(8)], state={"waiting": {}})
    assert not status.view_pod(from_api(pulling)).ran


def test_a_disrupted_pod_that_exited_with_a_permanent_code_is_retried(
    tmp_path: pathlib.Path,
) -> None:
    # podFailurePolicy ignores a disruption before it looks at exit codes: the Job replaces
    # the pod, and the status agrees that nothing failed for good.
    raced = pod(
        "p1",
        6,
        phase="Failed",
        node="gpu-1",
        conditions=[scheduled(8), cond("DisruptionTarget", "TerminationByKubelet", "shutdown")],
        state=terminated(11, 20, 30, report(contract.ExitCode.NO_FACE, "no face in person")),
    )
    outcome = _compute(tmp_path, job(), [from_api(raced)], 31)
    assert outcome.status.phase == models.Phase.STARTING
    assert outcome.status.attempts[0].outcome == models.AttemptOutcome.INTERRUPTED
    assert all(c.type != "Failed" for c in outcome.status.conditions)


def test_a_job_out_of_retries_names_the_last_attempts_failure(tmp_path: pathlib.Path) -> None:
    def failed(name: str, created: float, code: contract.ExitCode) -> dict[str, Any]:
        return _ended(int(code), report(code, "broke"), name=name, created=created)

    pods = [
        failed("p1", 6, contract.ExitCode.MODEL_LOAD_FAILED),
        failed("p2", 20, contract.ExitCode.OUT_OF_GPU_MEMORY),
    ]
    child = job(cond("Failed", "BackoffLimitExceeded", "Job has reached the backoff limit"))
    outcome = _compute(tmp_path, child, pods, 40)
    reason = next(c.reason for c in outcome.status.conditions if c.type == "Failed")
    assert reason == models.Reason.OUT_OF_GPU_MEMORY


def test_a_job_failed_by_its_failure_policy_without_pods_is_no_backoff(
    tmp_path: pathlib.Path,
) -> None:
    message = "Container compose for pod p1 failed with exit code 11 matching FailJob rule"
    outcome = _compute(tmp_path, job(cond("Failed", "PodFailurePolicy", message)), [], 30)
    failed = next(c for c in outcome.status.conditions if c.type == "Failed")
    assert (failed.reason, failed.message) == (models.Reason.CONTAINER_FAILED, message)


def test_events_for_kueue_waiting_and_for_the_start_after_it(tmp_path: pathlib.Path) -> None:
    kueue = {"queueName": "gpu-queue", "startDeadlineSeconds": 60, "activeDeadlineSeconds": 600}
    cj = make_cj(execution=kueue)
    creating = status.waiting(cj, seed=42, queue=None, now=at(1), creating="portrait-x-0")
    held = _compute(
        tmp_path, job(suspend=True, start=None), [], 6, previous=creating.status, execution=kueue
    )
    assert held.status.phase == models.Phase.QUEUED
    assert held.transitions  # Queued=True WaitingForAdmission: in status, no Event
    assert status.event_for(creating.status, held) is None
    running_pod = pod(
        "p1",
        31,
        phase="Running",
        node="gpu-1",
        conditions=[scheduled(32)],
        state={"running": {"startedAt": ts(40)}},
    )
    admitted = job()
    admitted["status"]["startTime"] = ts(30)
    started = _compute(tmp_path, admitted, [running_pod], 41, previous=held.status, execution=kueue)
    assert started.status.phase == models.Phase.RUNNING
    event = status.event_for(held.status, started)
    assert event is not None
    assert (event.type, event.reason) == ("Normal", models.Reason.RUNNING)


def test_a_failure_posts_a_warning_event_even_for_a_reason_that_is_no_warning(
    tmp_path: pathlib.Path,
) -> None:
    # NoFaceFound is no warning while the job runs; as the reason a job failed for good, it is.
    assert models.Reason.NO_FACE_FOUND not in status.WARNING_REASONS
    no_face = pod(
        "p1",
        6,
        phase="Failed",
        node="gpu-1",
        conditions=[scheduled(8)],
        state=terminated(11, 20, 30, report(contract.ExitCode.NO_FACE, "no face in person")),
    )
    outcome = _compute(tmp_path, job(), [from_api(no_face)], 31)
    assert outcome.status.phase == models.Phase.FAILED
    event = status.event_for(models.CompositionJobStatus(), outcome)
    assert event is not None
    assert (event.type, event.reason) == ("Warning", models.Reason.NO_FACE_FOUND)


def test_a_job_failed_without_a_reason_names_its_pods_failure_alone(
    tmp_path: pathlib.Path,
) -> None:
    no_face = pod(
        "p1",
        6,
        phase="Failed",
        node="gpu-1",
        conditions=[scheduled(8)],
        state=terminated(11, 20, 30, report(contract.ExitCode.NO_FACE, "no face in person")),
    )
    outcome = _compute(tmp_path, job({"type": "Failed", "status": "True"}), [no_face], 31)
    failed = next(c for c in outcome.status.conditions if c.type == "Failed")
    assert (failed.reason, failed.message) == (models.Reason.NO_FACE_FOUND, "no face in person")


def test_a_scheduled_pod_read_from_the_api_is_pulling_its_image() -> None:
    pulling = pod("p1", 6, node="gpu-1", conditions=[scheduled(8)], state={"waiting": {}})
    assert status.view_pod(from_api(pulling)).reason == models.Reason.IMAGE_PULLING


def test_the_queue_time_of_the_first_job_is_kept_for_the_next_attempts(
    tmp_path: pathlib.Path,
) -> None:
    first = _compute(tmp_path, job(), [pod("p1", 6)], 7)
    assert first.status.timings is not None and first.status.timings.queued == 5.0
    # A later attempt's Job, created at 100 s: the job was queued once, before the first.
    retry = job()
    retry["metadata"]["creationTimestamp"] = ts(100)
    again = _compute(tmp_path, retry, [pod("p2", 101)], 102, previous=first.status)
    assert again.status.timings is not None and again.status.timings.queued == 5.0


def test_the_status_message_is_a_true_or_unknown_conditions_never_a_false_ones() -> None:
    previous = models.CompositionJobStatus()
    quiet, _ = status.finish(
        previous,
        1,
        [
            status.Wanted(status.CT.ACCEPTED, status.TRUE, models.Reason.VALID, ""),
            status.Wanted(status.CT.QUEUED, status.FALSE, models.Reason.ADMITTED, "not queued"),
        ],
        at(1),
    )
    assert quiet.message is None
    waiting, _ = status.finish(
        previous,
        1,
        [
            status.Wanted(status.CT.QUEUED, status.FALSE, models.Reason.ADMITTED, "not queued"),
            status.Wanted(status.CT.STARTED, status.UNKNOWN, models.Reason.JOB_CREATED, "creating"),
        ],
        at(1),
    )
    assert waiting.message == "creating"


def test_a_crash_without_a_message_is_named_by_its_exit_code_and_reason() -> None:
    killed = pod("p1", 6, phase="Failed", node="gpu-1", state=terminated(137, 20, 30, None))
    killed["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    view = status.view_pod(from_api(killed))
    assert view.message == "exit code 137 (OOMKilled)"


def test_an_attempt_names_the_job_its_pod_belongs_to(tmp_path: pathlib.Path) -> None:
    theirs = pod("p1", 6)
    theirs["metadata"]["labels"]["job-name"] = "portrait-080e0235-1"
    outcome = _compute(tmp_path, job(), [theirs], 7)
    assert [a.job_name for a in outcome.status.attempts] == ["portrait-080e0235-1"]


def test_timings_are_kept_to_the_millisecond(tmp_path: pathlib.Path) -> None:
    bound = pod("p1", 6, node="gpu-1", conditions=[scheduled(8)], state={"waiting": {}})
    bound["status"]["conditions"][0]["lastTransitionTime"] = "2026-01-01T00:00:07.123456Z"
    outcome = _compute(tmp_path, job(), [bound], 9)
    assert outcome.status.timings is not None and outcome.status.timings.scheduling == 1.123


def test_a_crash_past_the_backoff_limit_read_from_the_api(tmp_path: pathlib.Path) -> None:
    limit = "Job has reached the specified backoff limit"
    crashed = pod("p1", 6, phase="Failed", node="gpu-1", state=terminated(137, 20, 30, None))
    child = from_api(job(cond("Failed", "BackoffLimitExceeded", limit)))
    outcome = _compute(tmp_path, child, [from_api(crashed)], 31)
    failed = next(c for c in outcome.status.conditions if c.type == "Failed")
    assert (failed.reason, failed.message) == (
        models.Reason.BACKOFF_LIMIT_EXCEEDED,
        f"{limit}: exit code 137 (Error)",
    )
    # A pod that failed with nothing to say adds nothing to the Job's message.
    mute = pod("p1", 6, phase="Failed", node="gpu-1")
    outcome = _compute(tmp_path, child, [from_api(mute)], 31)
    failed = next(c for c in outcome.status.conditions if c.type == "Failed")
    assert (failed.reason, failed.message) == (models.Reason.BACKOFF_LIMIT_EXCEEDED, limit)


def test_only_failed_pods_count_as_failed_attempts(tmp_path: pathlib.Path) -> None:
    load = pod(
        "p1",
        6,
        phase="Failed",
        node="gpu-1",
        conditions=[scheduled(8)],
        state=terminated(20, 20, 30, report(contract.ExitCode.MODEL_LOAD_FAILED, "bad sha")),
    )
    spot = pod(
        "p2",
        40,
        phase="Failed",
        node="gpu-1",
        conditions=[scheduled(41), cond("DisruptionTarget", "TerminationByKubelet", "shutdown")],
        state=terminated(143, 42, 50, None),
    )
    limit = "Job has reached the specified backoff limit"
    child = job(cond("Failed", "BackoffLimitExceeded", limit))
    outcome = _compute(tmp_path, from_api(child), [from_api(load), from_api(spot)], 51)
    failed = next(c for c in outcome.status.conditions if c.type == "Failed")
    assert failed.reason == models.Reason.MODEL_LOAD_FAILED
    assert "(after 1 failed attempts; " in failed.message


def test_a_result_that_raced_a_drain_keeps_its_timings(tmp_path: pathlib.Path) -> None:
    # The pod exited 0 while drained: the Job controller replaced it (the disruption is
    # ignored), and the replacement is the newest pod. The result and its timings are the
    # first pod's.
    raced = pod(
        "p1",
        6,
        phase="Failed",
        node="gpu-1",
        conditions=[scheduled(8), cond("DisruptionTarget", "EvictionByEvictionAPI", "drain")],
        state=terminated(0, 20, 60, report(contract.ExitCode.OK, result=True)),
    )
    replacement = pod("p2", 61)
    outcome = _compute(tmp_path, job(), [from_api(raced), from_api(replacement)], 62)
    assert outcome.status.phase == models.Phase.SUCCEEDED
    assert outcome.status.timings is not None and outcome.status.timings.inference == 9.0


def test_new_pods_are_attempts_in_creation_order_not_name_order(tmp_path: pathlib.Path) -> None:
    older = pod("p2", 6, phase="Failed", node="gpu-1", state=terminated(1, 7, 8, None))
    newer = pod("p10", 20)
    outcome = _compute(tmp_path, job(), [from_api(newer), from_api(older)], 21)
    assert [a.pod_name for a in outcome.status.attempts] == ["p2", "p10"]


def test_a_pod_without_a_job_label_is_an_attempt_of_the_job(tmp_path: pathlib.Path) -> None:
    bare = pod("p1", 6)
    del bare["metadata"]["labels"]
    outcome = _compute(tmp_path, job(), [bare], 7)
    assert [a.job_name for a in outcome.status.attempts] == [JOB]


def test_only_a_computed_outcome_stops_a_job(tmp_path: pathlib.Path) -> None:
    cj = make_cj()
    assert not status.waiting(cj, seed=42, queue=None, now=at(1)).stop_job
    assert not status.lost(cj, JOB, now=at(1)).stop_job
    assert not status.rejected(cj.status, 1, models.Reason.INVALID_SPEC, "x", now=at(1)).stop_job


def test_progress_while_running_posts_no_event() -> None:
    # The phase read back from the API is a plain string: still Running, so no "started" Event.
    running = models.CompositionJobStatus.model_validate(
        {"phase": "Running", "conditions": [
            {"type": "Started", "status": "True", "reason": "Running", "lastTransitionTime": ts(8)}
        ]}
    )  # fmt: skip
    after = running.model_copy(update={"message": "still running"})
    moved = status.Outcome(after, [status.Transition("Queued", "False", "Admitted", "")])
    assert status.event_for(running, moved) is None


# -- found by the full mutation run of status.py ----------------------------------------------

# A Job failed by its pod failure policy (a permanent exit code), not by its backoff limit.
POLICY_FAILED = cond("Failed", "PodFailurePolicy", "Container compose exited with a FailJob code")


@pytest.mark.parametrize("failures", [2, 3])
def test_a_retry_names_the_attempt_that_failed(failures: int, tmp_path: pathlib.Path) -> None:
    bad_sha = report(contract.ExitCode.MODEL_LOAD_FAILED, "bad sha")
    pods = [_ended(20, bad_sha, name=f"p{i}", created=6 + 10 * i) for i in range(failures)]
    outcome = _compute(tmp_path, job(), pods, 60)
    started = _condition(outcome, "Started")
    assert started.reason == "Retrying"
    assert (started.message or "").startswith(f"attempt {failures - 1} failed: ModelLoadFailed")
    assert outcome.status.attempt == failures - 1
    assert len(outcome.status.attempts) == failures


@pytest.mark.parametrize("value", ["False", "Unknown"])
def test_a_condition_not_true_is_not_true(value: str) -> None:
    obj = {"status": {"conditions": [{"type": "DisruptionTarget", "status": value}]}}
    assert status._is_true(obj, "DisruptionTarget") is None
    obj["status"]["conditions"][0]["status"] = "True"
    assert status._is_true(obj, "DisruptionTarget") is not None


def test_the_main_container_is_found_behind_a_sidecar() -> None:
    sidecar = {"name": "a-proxy", "state": {"terminated": {"exitCode": 1}}}
    main = {"name": "compose", "state": {"running": {}}}
    body = {"status": {"containerStatuses": [sidecar, main]}}
    assert status._container(body)["name"] == "compose"


@pytest.mark.parametrize(
    ("kind", "value", "reason", "warning"),
    [
        ("Accepted", "True", "Valid", False),
        ("Failed", "True", "NoFaceFound", True),
        ("Failed", "False", "Valid", False),
        ("Failed", "Unknown", "Valid", False),
        ("Started", "True", "Running", False),
        ("Started", "Unknown", "Unschedulable", True),
    ],
)
def test_which_transitions_are_warnings(kind: str, value: str, reason: str, warning: bool) -> None:
    assert status.Transition(kind, value, reason, "").warning is warning


def test_a_condition_that_turns_true_gets_a_new_transition_time() -> None:
    before = models.Condition.model_validate(
        {"type": "Queued", "status": "False", "reason": "Admitted", "lastTransitionTime": ts(1)}
    )
    wanted = [status.Wanted(models.ConditionType.QUEUED, models.ConditionStatus.TRUE, "X")]
    conditions, transitions = status.merge_conditions([before], wanted, now=at(9), generation=1)
    assert conditions[0].last_transition_time == at(9)
    assert [(t.type, t.status) for t in transitions] == [("Queued", "True")]


@pytest.mark.parametrize(
    ("kind", "value", "intent"),
    [("Started", "Unknown", True), ("Started", "True", False), ("Queued", "Unknown", False),
     ("Accepted", "Unknown", False), ("Succeeded", "Unknown", False)],
)  # fmt: skip
def test_only_a_started_condition_still_unknown_is_an_intent(
    kind: str, value: str, intent: bool
) -> None:
    found = models.Condition.model_validate(
        {"type": kind, "status": value, "reason": "JobCreated", "lastTransitionTime": ts(1)}
    )
    assert (status.intent([found]) is not None) is intent


def test_a_job_never_suspended_gets_no_suspended_condition() -> None:
    accepted = models.Condition.model_validate(
        {"type": "Accepted", "status": "True", "reason": "Valid", "lastTransitionTime": ts(1)}
    )
    cj = make_cj()
    cj = cj.model_copy(update={"status": models.CompositionJobStatus(conditions=[accepted])})
    assert status._suspension(cj) == []


def test_a_failure_by_the_pod_failure_policy_keeps_the_pods_own_message(
    tmp_path: pathlib.Path,
) -> None:
    # Only a Job failed for its backoff limit adds the count of attempts to the message.
    no_face = _ended(11, report(contract.ExitCode.NO_FACE, "no face in person"))
    decided = _condition(_compute(tmp_path, job(POLICY_FAILED), [no_face], 31), "Failed")
    assert (decided.reason, decided.message) == ("NoFaceFound", "no face in person")


def test_a_deadline_read_from_the_api_is_a_deadline(tmp_path: pathlib.Path) -> None:
    late = from_api(job(cond("Failed", "DeadlineExceeded", "Job was active longer than")))
    assert _condition(_compute(tmp_path, late, [], 700), "Failed").reason == "DeadlineExceeded"


def test_the_message_is_the_last_holding_conditions_before_one_in_progress() -> None:
    wanted = [
        status.Wanted(models.ConditionType.ACCEPTED, models.ConditionStatus.TRUE, "Valid", "ok"),
        status.Wanted(
            models.ConditionType.STARTED, models.ConditionStatus.UNKNOWN, "JobCreated", "creating"
        ),
    ]
    done, _ = status.finish(models.CompositionJobStatus(), 1, wanted, at(1))
    assert done.message == "ok"
    only_unknown, _ = status.finish(models.CompositionJobStatus(), 1, wanted[1:], at(1))
    assert only_unknown.message == "creating"


def test_a_resumed_job_says_so_in_a_suspended_false_condition() -> None:
    suspended = models.Condition.model_validate(
        {"type": "Suspended", "status": "True", "reason": "SuspendedByUser",
         "lastTransitionTime": ts(1)}
    )  # fmt: skip
    cj = make_cj()
    cj = cj.model_copy(update={"status": models.CompositionJobStatus(conditions=[suspended])})
    (resumed,) = status._suspension(cj)
    assert (resumed.type, resumed.status, resumed.reason) == ("Suspended", "False", "Resumed")


def test_a_suspension_alone_posts_an_event() -> None:
    accepted = models.Condition.model_validate(
        {"type": "Accepted", "status": "True", "reason": "Valid", "lastTransitionTime": ts(1)}
    )
    previous = models.CompositionJobStatus(phase=models.Phase.QUEUED, conditions=[accepted])
    turned = status.Transition("Suspended", "True", "SuspendedByUser", "suspended by spec")
    outcome = status.Outcome(
        models.CompositionJobStatus(phase=models.Phase.QUEUED, conditions=[accepted]), [turned]
    )
    event = status.event_for(previous, outcome)
    assert event is not None and event.reason == "SuspendedByUser"


def test_a_failed_upload_is_retried_not_final(tmp_path: pathlib.Path) -> None:
    # UploadFailed sorts after ResultUnreadable: only that one reason ends a run without a
    # permanent exit code.
    upload = _ended(21, report(contract.ExitCode.UPLOAD_FAILED, "S3 said 503"))
    outcome = _compute(tmp_path, job(), [upload], 21)
    assert outcome.status.phase == models.Phase.STARTING
    assert _condition(outcome, "Started").reason == "Retrying"


def test_an_exit_code_without_a_message_still_names_its_reason(tmp_path: pathlib.Path) -> None:
    # The image died before writing its termination message: the exit code alone says why.
    outcome = _compute(tmp_path, job(POLICY_FAILED), [_ended(11, None)], 21)
    assert _condition(outcome, "Failed").reason == "NoFaceFound"


@pytest.mark.parametrize("phase", [models.Phase.SUSPENDED, models.Phase.SUCCEEDED])
def test_no_start_deadline_outside_starting(phase: models.Phase) -> None:
    outcome = status.Outcome(models.CompositionJobStatus(phase=phase), [])
    assert status.start_deadline_at(make_cj(), job(), outcome) is None
    starting = status.Outcome(models.CompositionJobStatus(phase=models.Phase.STARTING), [])
    assert status.start_deadline_at(make_cj(), job(), starting) is not None


@pytest.mark.parametrize(
    "kind",
    [status.Wanted, status.Queue, status.Transition, status.PodView, status.Outcome, status.Run,
     status.Event],
)  # fmt: skip
def test_status_values_cannot_change_once_made(kind: type) -> None:
    # Views and outcomes are shared between the plan, the reconciler and the spans: values.
    assert dataclasses.is_dataclass(kind)
    assert kind.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_without_the_main_container_the_first_one_is_read() -> None:
    body = {"status": {"containerStatuses": [{"name": "first"}, {"name": "second"}]}}
    assert status._container(body)["name"] == "first"


def test_a_crash_under_another_job_failure_keeps_the_pods_message(tmp_path: pathlib.Path) -> None:
    crashed = _ended(1, report(contract.ExitCode.INTERNAL, "CUDA error: boom"))
    decided = _condition(_compute(tmp_path, job(POLICY_FAILED), [crashed], 21), "Failed")
    assert (decided.reason, decided.message) == ("ContainerFailed", "CUDA error: boom")


def test_a_kueue_job_waited_until_kueue_started_it(tmp_path: pathlib.Path) -> None:
    execution = {"queueName": "gpu-queue", "startDeadlineSeconds": 60}
    started = job(start=9)  # created at 5 s, unsuspended by Kueue and started at 9 s
    outcome = _compute(tmp_path, started, [], 10, execution=execution)
    created = make_cj().metadata.creation_timestamp
    assert created is not None
    assert outcome.status.timings is not None
    assert outcome.status.timings.queued == (at(9) - created).total_seconds()


def test_no_start_deadline_once_a_pod_has_run() -> None:
    retrying = models.CompositionJobStatus(phase=models.Phase.STARTING, start_time=at(8))
    assert status.start_deadline_at(make_cj(), job(), status.Outcome(retrying, [])) is None


def test_a_pod_has_run_once_its_container_runs_or_ended() -> None:
    running = pod("p1", 6, phase="Running", node="gpu-1", state={"running": {"startedAt": ts(8)}})
    ended = pod("p2", 6, phase="Failed", node="gpu-1", state=terminated(1, 8, 20, None))
    waiting = pod("p3", 6, node="gpu-1", state={"waiting": {"reason": "ContainerCreating"}})
    assert status.view_pod(running).ran and status.view_pod(ended).ran
    assert not status.view_pod(waiting).ran


def test_conditions_not_wanted_again_are_kept() -> None:
    accepted = models.Condition.model_validate(
        {"type": "Accepted", "status": "True", "reason": "Valid", "lastTransitionTime": ts(1)}
    )
    wanted = [status.Wanted(models.ConditionType.STARTED, models.ConditionStatus.UNKNOWN, "X")]
    conditions, _ = status.merge_conditions([accepted], wanted, now=at(9), generation=1)
    assert [(c.type, c.last_transition_time) for c in conditions] == [
        ("Accepted", at(1)),
        ("Started", at(9)),
    ]


def _succeeded_with(name: str, created: float, uri: str) -> dict[str, Any]:
    message = contract.TerminationMessage(
        exit_code=0,
        reason=models.Reason.COMPLETED,
        result=models.Result(s3_uri=uri, sha256="0" * 64, width=64, height=64, seed=42),
    ).to_json()
    return _ended(0, message, name=name, created=created, phase="Succeeded")


def test_of_two_pods_that_succeeded_the_newest_gives_the_result(tmp_path: pathlib.Path) -> None:
    older = _succeeded_with("p1", 6, "s3://results-bucket/older.png")
    newer = _succeeded_with("p2", 20, "s3://results-bucket/newer.png")
    done = job(cond("Complete", "CompletionsReached"))
    for pods in ([older, newer], [newer, older]):
        outcome = _compute(tmp_path, done, pods, 30)
        assert outcome.status.result is not None
        assert outcome.status.result.s3_uri == "s3://results-bucket/newer.png"


def test_a_pod_stuck_before_its_container_started_has_not_run() -> None:
    pulling = pod("p1", 6, node="gpu-1", state={"waiting": {"reason": "ImagePullBackOff"}})
    unplaced = pod("p2", 6, conditions=[cond("PodScheduled", "Unschedulable", "0/3", "False")])
    unreadable = pod(
        "p3", 6, phase="Succeeded", node="gpu-1", state=terminated(0, 8, 20, "not json")
    )
    assert status.view_pod(pulling).reason == "ImagePullBackOff"
    assert status.view_pod(unplaced).reason == "Unschedulable"
    assert not status.view_pod(pulling).ran and not status.view_pod(unplaced).ran
    assert status.view_pod(unreadable).reason == "ResultUnreadable"
    assert status.view_pod(unreadable).ran


def test_no_start_deadline_for_a_suspended_job() -> None:
    starting = status.Outcome(models.CompositionJobStatus(phase=models.Phase.STARTING), [])
    assert status.start_deadline_at(make_cj(), job(suspend=True), starting) is None
