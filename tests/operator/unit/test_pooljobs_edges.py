"""The edges of a pool job's status: reports matched by value, the start deadline's origin
after a suspension, suspension both ways, the attempt numbers, the interruption allowance,
failures that are final at once, and attempts dropped or kept when a job is taken back."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import pytest

from compose_api import contract, models
from compose_operator import builders, plan, pooljobs, settings
from tests.operator.unit.test_builders import make_settings
from tests.operator.unit.test_pool_plan import (
    OFFER,
    POOL,
    WORKER,
    after,
    assigned_job,
    conditions,
    lease,
    only_write,
    pool_cj,
    report,
    seen,
)
from tests.operator.unit.test_status import at

Outcome = models.AttemptOutcome


@pytest.fixture
def config(tmp_path: pathlib.Path) -> settings.OperatorSettings:
    return make_settings(tmp_path)


def decoded(value: Any) -> Any:
    """A model as read back from the API server's JSON: its strings are new objects."""
    return type(value).model_validate(json.loads(value.model_dump_json(by_alias=True)))


def attempt(index: int, outcome: str, **fields: Any) -> models.Attempt:
    return models.Attempt(index=index, pool=POOL, pod_name=WORKER, outcome=outcome, **fields)


def with_attempts(cj: models.CompositionJob, *attempts: models.Attempt) -> models.CompositionJob:
    return cj.model_copy(
        update={"status": cj.status.model_copy(update={"attempts": list(attempts)})}
    )


def test_a_report_read_from_the_api_matches_its_assignment_by_value(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    assignment = cj.status.assignment
    assert assignment is not None
    found = pooljobs.report_for(decoded(assignment), decoded(report(4)))
    assert found is not None and found.worker_instance == assignment.worker_instance
    assert pooljobs.report_for(assignment, report(4, attempt=1)) is None
    # Compared by value even past the integers Python keeps one object of.
    far = assignment.model_copy(update={"attempt": 300})
    found = pooljobs.report_for(decoded(far), decoded(report(4, attempt=300)))
    assert found is not None and found.attempt == 300


def test_a_job_resumed_after_its_start_deadline_waits_for_a_worker_anew(
    config: settings.OperatorSettings,
) -> None:
    waiting = after(pool_cj(), plan.plan(seen(pool_cj()), at(1), config))
    held_cj = pool_cj().model_copy(
        update={"spec": waiting.spec.model_copy(update={"suspend": True})}
    )
    held = after(
        waiting,
        plan.plan(seen(held_cj.model_copy(update={"status": waiting.status})), at(2), config),
    )
    assert held.status.phase == models.Phase.SUSPENDED
    assert conditions(held)["Started"] == ("False", "SuspendedByUser")
    # Resumed long after the start deadline would have passed: the deadline counts afresh.
    resumed = pool_cj().model_copy(update={"status": held.status})
    decided = plan.plan(seen(resumed), at(500), config)
    new = only_write(decided).outcome.status
    assert new.phase == models.Phase.STARTING
    assert conditions(new)["Started"] == ("Unknown", "WaitingForWorker")
    assert conditions(new)["Suspended"] == ("False", "Resumed")
    assert decided.recheck_at == at(500 + 60 + 1)


def test_a_job_suspended_before_it_ever_started_has_no_started_condition(
    config: settings.OperatorSettings,
) -> None:
    cj = pool_cj().model_copy(update={"spec": pool_cj().spec.model_copy(update={"suspend": True})})
    first = after(cj, plan.plan(seen(cj), at(1), config))
    assert first.status.phase == models.Phase.SUSPENDED
    assert "Started" not in conditions(first)
    # And again, with its Suspended condition in the status now.
    again = pooljobs.waiting(first, seed=42, queue=None, pool=POOL, now=at(2))
    assert "Started" not in conditions(again.status)


def test_resuming_an_assigned_job_says_it_is_no_longer_suspended(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    spec = cj.spec.model_copy(update={"suspend": True})
    taken = only_write(
        plan.plan(seen(cj.model_copy(update={"spec": spec}), lease=lease(3)), at(4), config)
    ).outcome.status
    assert taken.phase == models.Phase.SUSPENDED
    resumed = cj.model_copy(update={"status": taken})
    new = only_write(plan.plan(seen(resumed, offer=OFFER), at(5), config)).outcome.status
    assert new.phase == models.Phase.STARTING
    assert conditions(new)["Suspended"] == ("False", "Resumed")


def _assign(
    config: settings.OperatorSettings, cj: models.CompositionJob, index: int, now: float
) -> models.CompositionJob:
    offer = pooljobs.Offer(POOL, f"w{index}", f"w{index}/run")
    given = pooljobs.assigned(cj, offer, seed=42, bucket="b", key_prefix="p/", now=at(now))
    assert given.status.assignment is not None and given.status.assignment.attempt == index
    return cj.model_copy(update={"status": given.status})


def _report(
    config: settings.OperatorSettings, cj: models.CompositionJob, now: float, **fields: Any
) -> models.CompositionJob:
    """The assigned worker reports the attempt finished at ``now`` (a retryable failure unless
    ``fields`` say otherwise)."""
    assignment = cj.status.assignment
    assert assignment is not None
    values: dict[str, Any] = {
        "code": int(contract.ExitCode.MODEL_LOAD_FAILED),
        "reason": "ModelLoadFailed",
        "message": "bad sha",
        **fields,
    }
    done = report(
        now - 1,
        finished=now,
        attempt=assignment.attempt,
        worker=assignment.worker,
        worker_instance=assignment.worker_instance,
        **values,
    )
    outcome = pooljobs.reported(
        cj, assignment, done, seed=42, nodes={}, settings=config, now=at(now)
    )
    return cj.model_copy(update={"status": outcome.status})


def test_a_retry_names_the_last_attempt_and_the_end_the_attempt_number(
    config: settings.OperatorSettings,
) -> None:
    cj = pool_cj(backoffLimit=2)
    cj = _report(config, _assign(config, cj, 0, 1), 3)
    cj = _report(config, _assign(config, cj, 1, 4), 6, message="bad sha again")
    assert cj.status.phase == models.Phase.STARTING
    assert cj.status.attempt == 1
    started = next(c for c in cj.status.conditions if c.type == "Started")
    assert started.reason == models.Reason.RETRYING
    assert started.message.startswith("attempt 1 ended: ModelLoadFailed: bad sha again; ")
    final = _report(config, _assign(config, cj, 2, 7), 9)
    assert final.status.phase == models.Phase.FAILED
    assert final.status.attempt == 2


def test_a_failure_keeps_the_workers_message(config: settings.OperatorSettings) -> None:
    cj = _report(config, _assign(config, pool_cj(), 0, 1), 3, message="boom")
    assert [(a.reason, a.message) for a in cj.status.attempts] == [("ModelLoadFailed", "boom")]


def test_success_without_a_result_fails_at_once(config: settings.OperatorSettings) -> None:
    cj = _report(config, _assign(config, pool_cj(backoffLimit=2), 0, 1), 3, code=0, reason=None)
    assert cj.status.phase == models.Phase.FAILED
    assert conditions(cj)["Failed"] == ("True", "ResultUnreadable")


def _spot_lost(config: settings.OperatorSettings, cj: models.CompositionJob) -> pooljobs.Outcome:
    """The job's next attempt assigned, accepted, and its worker's spot node taken away."""
    cj = _assign(config, cj, len(cj.status.attempts), 100)
    assignment = cj.status.assignment
    assert assignment is not None
    accepted = report(
        101,
        attempt=assignment.attempt,
        worker=assignment.worker,
        worker_instance=assignment.worker_instance,
    )
    return pooljobs.worker_gone(
        cj, assignment, accepted, seed=42, why="worker lost", disrupted="spot",
        nodes={}, now=at(102),
    )  # fmt: skip


def test_interruptions_past_the_allowance_fail_the_job(config: settings.OperatorSettings) -> None:
    limit = 1  # backoffLimit: 1 + INTERRUPTION_ALLOWANCE interruptions are absorbed
    absorbed = builders.INTERRUPTION_ALLOWANCE + limit

    def interrupted(count: int) -> pooljobs.Outcome:
        earlier = [
            attempt(i, Outcome.INTERRUPTED, start_time=at(i), reason="SpotInterrupted")
            for i in range(count - 1)
        ]
        return _spot_lost(config, with_attempts(pool_cj(backoffLimit=limit), *earlier))

    kept = interrupted(absorbed)
    assert kept.status.phase == models.Phase.STARTING
    failed = interrupted(absorbed + 1)
    assert failed.status.phase == models.Phase.FAILED
    assert (failed.status.message or "").endswith(f" (interrupted {absorbed + 1} times)")


def test_only_interrupted_attempts_count_as_interruptions() -> None:
    attempts = [
        attempt(0, Outcome.FAILED),
        attempt(1, Outcome.INTERRUPTED),
        attempt(2, Outcome.SUCCEEDED),
        attempt(3, Outcome.PENDING),
        attempt(4, Outcome.RUNNING),
    ]
    assert pooljobs.interruptions(attempts) == 1
    assert pooljobs.failures(attempts) == 1


def test_suspensions_are_not_interruptions(config: settings.OperatorSettings) -> None:
    """A job suspended and resumed more often than any allowance still runs: the attempts its
    suspensions ended are the user's doing, not disruptions."""
    limit = 0
    many = builders.INTERRUPTION_ALLOWANCE + limit + 3
    suspended = [
        attempt(i, Outcome.INTERRUPTED, start_time=at(i), reason="SuspendedByUser")
        for i in range(many)
    ]
    assert pooljobs.interruptions(suspended) == 0
    gone = _spot_lost(config, with_attempts(pool_cj(backoffLimit=limit), *suspended))
    assert gone.status.phase == models.Phase.STARTING  # one real interruption: retried


def test_the_queue_time_is_kept_to_the_millisecond_and_never_negative() -> None:
    cj = pool_cj()  # created at 0 s
    given = pooljobs.assigned(cj, OFFER, seed=42, bucket="b", key_prefix="p/", now=at(0.23456))
    assert given.status.timings is not None and given.status.timings.queued == 0.235
    skewed = pooljobs.assigned(cj, OFFER, seed=42, bucket="b", key_prefix="p/", now=at(-2))
    assert skewed.status.timings is not None and skewed.status.timings.queued == 0.0


def _second_assigned(config: settings.OperatorSettings) -> models.CompositionJob:
    """Attempt 0 failed; attempt 1 assigned, not accepted yet."""
    return _assign(config, _report(config, _assign(config, pool_cj(), 0, 1), 3), 1, 4)


def test_an_unaccepted_attempt_is_dropped_and_the_earlier_ones_kept(
    config: settings.OperatorSettings,
) -> None:
    cj = _second_assigned(config)
    assignment = cj.status.assignment
    assert assignment is not None
    assert [a.index for a in cj.status.attempts] == [0, 1]
    failed = pooljobs.failed(
        cj, "StartDeadlineExceeded", "late", assignment=assignment, report=None, nodes={},
        now=at(70),
    )  # fmt: skip
    assert [a.index for a in failed.status.attempts] == [0]
    back = pooljobs.taken_back(cj, assignment, None, seed=42, why="suspended", nodes={}, now=at(5))
    assert [a.index for a in back.status.attempts] == [0]
    lost = pooljobs.worker_gone(
        cj, assignment, None, seed=42, why="worker lost", disrupted=None, nodes={}, now=at(5)
    )
    assert [a.index for a in lost.status.attempts] == [0]


def test_a_job_failed_before_any_worker_ran_it_never_started(
    config: settings.OperatorSettings,
) -> None:
    waiting = after(pool_cj(), plan.plan(seen(pool_cj()), at(1), config))
    unserved = pooljobs.failed(
        waiting, "PoolNotFound", "no pool", assignment=None, report=None, nodes={}, now=at(70)
    )
    assert conditions(unserved.status).get("Started") != ("True", "Running")
    cj = assigned_job(config)
    assignment = cj.status.assignment
    assert assignment is not None
    accepted = report(2)
    late = pooljobs.failed(
        cj, "DeadlineExceeded", "late", assignment=assignment, report=accepted, nodes={},
        now=at(700),
    )  # fmt: skip
    assert conditions(late.status)["Started"] == ("True", "Running")


def test_an_offer_cannot_change_once_made() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        OFFER.__setattr__("pod", "other")


def test_a_report_of_an_earlier_attempt_is_not_this_ones(
    config: settings.OperatorSettings,
) -> None:
    cj = _second_assigned(config)
    assignment = cj.status.assignment
    assert assignment is not None and assignment.attempt == 1
    stale = report(2, attempt=0, worker_instance=assignment.worker_instance)
    assert pooljobs.report_for(assignment, stale) is None


def test_a_worker_killed_by_a_signal_is_retried(config: settings.OperatorSettings) -> None:
    # A negative exit code (a process killed by a signal) is a failure like any other, not a
    # success without a result.
    cj = _report(config, _assign(config, pool_cj(backoffLimit=2), 0, 1), 3, code=-9, reason=None)
    assert cj.status.phase == models.Phase.STARTING
    assert [(a.outcome, a.reason) for a in cj.status.attempts] == [("Failed", "ContainerFailed")]


def test_the_start_deadline_of_a_pool_job_is_one_second_past_an_odd_deadline(
    config: settings.OperatorSettings,
) -> None:
    cj = pool_cj(startDeadlineSeconds=61)
    decided = plan.plan(seen(cj), at(1), config)
    assert decided.recheck_at == at(1 + 61 + 1)


def test_another_worker_instance_is_never_this_assignments(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    assignment = cj.status.assignment
    assert assignment is not None
    for other in ("a-worker/run-0", "zz-worker/run-9"):
        assert pooljobs.report_for(assignment, report(4, worker_instance=other)) is None
    # Its Lease held by another process of whatever name: the assigned one is lost.
    for instance in ("aaa", "zzz"):
        assert pooljobs.lost(assignment, lease(3, instance=instance), at(4))
    assert not pooljobs.lost(assignment, lease(3), at(4))


def test_an_assigned_job_failed_before_its_worker_accepted_never_started(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    assignment = cj.status.assignment
    assert assignment is not None
    late = pooljobs.failed(
        cj, "StartDeadlineExceeded", "late", assignment=assignment, report=None, nodes={},
        now=at(70),
    )  # fmt: skip
    assert conditions(late.status).get("Started") != ("True", "Running")


def test_the_end_of_a_retried_job_keeps_its_first_start_and_queue_time(
    config: settings.OperatorSettings,
) -> None:
    cj = pool_cj(backoffLimit=2)  # created at 0 s
    first = _assign(config, cj, 0, 1.5)
    assert first.status.timings is not None and first.status.timings.queued == 1.5
    accepted = report(2, attempt=0, worker="w0", worker_instance="w0/run")
    assignment = first.status.assignment
    assert assignment is not None
    running = pooljobs.running(first, assignment, accepted, nodes={}, now=at(2))
    first = first.model_copy(update={"status": running.status})
    assert first.status.start_time == at(2)
    failed_once = _report(config, first, 4)
    second = _assign(config, failed_once, 1, 10)
    assert second.status.timings is not None and second.status.timings.queued == 1.5
    timings = models.Timings(inference=9.0)  # the worker's own; the queue time is not one
    done = _report(config, second, 12, code=0, reason=None, result=result_of(), timings=timings)
    assert done.status.phase == models.Phase.SUCCEEDED
    assert done.status.start_time == at(2)
    assert done.status.timings is not None
    assert (done.status.timings.queued, done.status.timings.inference) == (1.5, 9.0)
    failed = _report(config, second, 12)
    failed = _report(config, _assign(config, failed, 2, 13), 15)
    assert failed.status.phase == models.Phase.FAILED
    assert failed.status.start_time == at(2)


def result_of() -> models.Result:
    return models.Result(
        s3_uri="s3://results-bucket/compose/studio/portrait/u/result.png",
        sha256="a" * 64,
        width=1024,
        height=1024,
        seed=42,
    )


def test_a_job_that_finishes_as_it_is_suspended_is_not_left_suspended(
    config: settings.OperatorSettings,
) -> None:
    cj = _assign(config, pool_cj(), 0, 1)
    suspended = cj.model_copy(update={"spec": cj.spec.model_copy(update={"suspend": True})})
    done = _report(config, suspended, 3, code=0, reason=None, result=result_of())
    assert done.status.phase == models.Phase.SUCCEEDED
    assert conditions(done).get("Suspended", ("False", ""))[0] == "False"
