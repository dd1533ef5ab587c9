"""The pure decisions for a CompositionJob that runs on a pool's warm workers: wait, assign,
follow the worker's report, retry, and take back; with the same conditions, reasons and
attempts as in Job mode."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import pytest

from compose_api import contract, models
from compose_api import pools as protocol
from compose_operator import observed, plan, pooljobs, pools, settings, status
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_pools import pool_view
from tests.operator.unit.test_status import NODES, at

POOL = "interactive"
WORKER = "interactive-workers-7d9f-abcde"
INSTANCE = f"{WORKER}/run-1"
OFFER = pooljobs.Offer(POOL, WORKER, INSTANCE)


@pytest.fixture
def config(tmp_path: pathlib.Path) -> settings.OperatorSettings:
    return make_settings(tmp_path)


def pool_cj(**execution: Any) -> models.CompositionJob:
    return make_cj(
        execution={
            "startDeadlineSeconds": 60,
            "activeDeadlineSeconds": 600,
            "pool": POOL,
            **execution,
        }
    )


def lease(renewed: float = 0, *, instance: str = "run-1", state: str = "ready") -> Any:
    body = protocol.lease_body(
        pool=POOL,
        namespace="studio",
        pod=WORKER,
        pod_uid="u",
        instance=instance,
        lease_seconds=15,
        now=at(renewed),
        state=state,
    )
    return protocol.view_lease(body)


def seen(cj: models.CompositionJob, **fields: Any) -> observed.Observed:
    fields.setdefault("pool_name", POOL)
    fields.setdefault("pool", pool_view())
    return observed.Observed(
        meta=cj.metadata, previous=cj.status, spec=cj.spec, spec_error=None, **fields
    )


def after(cj: models.CompositionJob, decided: plan.Plan) -> models.CompositionJob:
    """The job with the status the plan wrote (the next decision reads it)."""
    writes = [a for a in decided.actions if isinstance(a, plan.WriteStatus)]
    assert writes, decided
    return cj.model_copy(update={"status": writes[-1].outcome.status})


def only_write(decided: plan.Plan) -> plan.WriteStatus:
    (write,) = decided.actions
    assert isinstance(write, plan.WriteStatus)
    return write


def conditions(
    job: models.CompositionJob | models.CompositionJobStatus,
) -> dict[str, tuple[str, str]]:
    found = job.status if isinstance(job, models.CompositionJob) else job
    return {c.type: (c.status, c.reason) for c in found.conditions}


def report(
    accepted: float, *, finished: float | None = None, code: int | None = None, **fields: Any
) -> models.WorkerReport:
    values: dict[str, Any] = {
        "attempt": 0,
        "worker": WORKER,
        "worker_instance": INSTANCE,
        "node_name": "gpu-1",
        "accepted_at": at(accepted),
    }
    if finished is not None:
        values.update(finished_at=at(finished), exit_code=code)
    values.update(fields)
    return models.WorkerReport.model_validate(values)


def result(seed: int = 42) -> models.Result:
    return models.Result(
        s3_uri="s3://results-bucket/compose/studio/portrait/u/result.png",
        sha256="a" * 64,
        width=1024,
        height=1024,
        seed=seed,
    )


def assigned_job(config: settings.OperatorSettings) -> models.CompositionJob:
    decided = plan.plan(seen(pool_cj(), offer=OFFER), at(1), config)
    return after(pool_cj(), decided)


def test_a_job_waits_for_a_worker_without_a_job_or_pod(config: settings.OperatorSettings) -> None:
    decided = plan.plan(seen(pool_cj()), at(1), config)
    write = only_write(decided)
    new = write.outcome.status
    assert conditions(new)["Started"] == ("Unknown", "WaitingForWorker")
    assert conditions(new)["Queued"] == ("False", "Admitted")
    assert new.phase == models.Phase.STARTING and new.assignment is None
    assert not any(isinstance(a, plan.CreateJob) for a in decided.actions)
    assert decided.recheck_at == at(1 + 60 + 1)  # the start deadline is watched
    assert write.event is not None and write.event.type == "Normal"  # the first status: created
    # Nothing changed: nothing is written again.
    assert plan.plan(seen(after(pool_cj(), decided)), at(5), config).actions == ()


def test_a_missing_pool_is_named_and_the_job_waits(config: settings.OperatorSettings) -> None:
    new = only_write(plan.plan(seen(pool_cj(), pool=None), at(1), config)).outcome.status
    assert conditions(new)["Started"] == ("Unknown", "PoolNotFound")
    assert new.message == "pool interactive not found in namespace studio"


def test_an_offered_worker_gets_the_job_in_one_conditional_write(
    config: settings.OperatorSettings,
) -> None:
    decided = plan.plan(seen(pool_cj(), offer=OFFER, lease=lease()), at(1), config)
    write = only_write(decided)
    assert write.conditional and decided.take_offer and not decided.admit
    new = write.outcome.status
    assert new.assignment is not None
    assert (new.assignment.worker, new.assignment.worker_instance, new.assignment.attempt) == (
        WORKER,
        INSTANCE,
        0,
    )
    assert new.assignment.seed == 42 and new.assignment.output_bucket == "results-bucket"
    assert (
        new.assignment.output_key_prefix
        == "compose/studio/portrait/" + make_cj().metadata.uid + "/"
    )
    assert conditions(new)["Started"] == ("Unknown", "AssignedToWorker")
    assert [(a.index, a.pool, a.pod_name, a.outcome) for a in new.attempts] == [
        (0, POOL, WORKER, "Pending")
    ]
    assert new.timings is not None and new.timings.queued is not None
    assert write.event is not None  # created: one of the three Events of a job
    capped = plan.plan(seen(pool_cj(), offer=OFFER, capped=True), at(1), config)
    assert capped.admit  # the assignment takes a slot under the caps


def test_behind_the_cap_a_pool_job_is_queued_like_any(config: settings.OperatorSettings) -> None:
    decided = plan.plan(seen(pool_cj(), queue=status.Queue(2, 5), capped=True), at(1), config)
    new = only_write(decided).outcome.status
    assert new.phase == models.Phase.QUEUED and new.queue_position == 2
    assert conditions(new)["Queued"] == ("True", "WaitingForCapacity")


def test_a_pool_of_another_profile_is_refused(config: settings.OperatorSettings) -> None:
    other = pool_view(profile="smoke")
    new = only_write(plan.plan(seen(pool_cj(), pool=other), at(1), config)).outcome.status
    assert new.phase == models.Phase.FAILED
    assert conditions(new)["Accepted"] == ("False", "InvalidSpec")
    assert "serves profile smoke, not instantid-sdxl" in (new.message or "")


def test_an_assigned_job_waits_for_the_accept_and_watches_the_lease(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    decided = plan.plan(seen(cj, lease=lease(3)), at(5), config)
    assert decided.actions == () and decided.need is None
    assert decided.recheck_at == at(19)  # the first whole second after the Lease expires


def test_an_accepted_job_runs_and_reads_its_node(config: settings.OperatorSettings) -> None:
    cj = assigned_job(config)
    decided = plan.plan(
        seen(cj, lease=lease(3), worker_report=report(4), nodes=NODES), at(5), config
    )
    write = only_write(decided)
    assert not write.conditional
    new = write.outcome.status
    assert new.phase == models.Phase.RUNNING and new.start_time == at(4)
    (attempt,) = new.attempts
    assert (attempt.outcome, attempt.node_name, attempt.instance_type, attempt.capacity_type) == (
        "Running",
        "gpu-1",
        "g5.2xlarge",
        "spot",
    )
    assert write.event is not None and write.event.reason == "Running"
    assert decided.recheck_at == at(19)


def test_a_report_of_success_finishes_the_job_with_its_result(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    running = after(cj, plan.plan(seen(cj, lease=lease(3), worker_report=report(4)), at(5), config))
    timings = models.Timings(fetch=0.2, face_analysis=0.1, inference=18.5, upload=0.3, total=19.1)
    done = report(4, finished=24, code=0, result=result(), timings=timings)
    decided = plan.plan(seen(running, lease=lease(18), worker_report=done), at(24), config)
    write = only_write(decided)
    new = write.outcome.status
    assert new.phase == models.Phase.SUCCEEDED and new.assignment is None
    assert new.result is not None and new.result.url == (
        "https://results-bucket.s3.eu-west-1.amazonaws.com/compose/studio/portrait/u/result.png"
    )
    assert new.timings is not None and new.timings.inference == 18.5
    assert new.timings.model_load is None  # a warm worker loads nothing
    assert new.attempts[-1].outcome == "Succeeded" and new.attempts[-1].end_time == at(24)
    assert write.event is not None and write.event.reason == "Completed"
    patch = status.to_patch(new, running.status)
    assert patch is not None and patch["assignment"] is None  # the job leaves the worker's watch


def test_bad_input_fails_at_once_with_the_same_reason_as_a_job(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    bad = report(
        4,
        finished=5,
        code=int(contract.ExitCode.NO_FACE),
        reason="NoFaceFound",
        message="spec.inputs.person.uri: no face found in the person photo",
    )
    new = only_write(
        plan.plan(seen(cj, lease=lease(3), worker_report=bad), at(6), config)
    ).outcome.status
    assert new.phase == models.Phase.FAILED
    assert conditions(new)["Failed"] == ("True", "NoFaceFound")
    assert new.attempts[-1].exit_code == 11 and new.assignment is None


def test_a_retryable_failure_runs_again_on_a_worker_until_the_backoff_limit(
    config: settings.OperatorSettings,
) -> None:
    cj = pool_cj(backoffLimit=1)
    cj = after(cj, plan.plan(seen(cj, offer=OFFER), at(1), config))
    failed = report(
        2,
        finished=3,
        code=int(contract.ExitCode.OUT_OF_GPU_MEMORY),
        reason="OutOfGPUMemory",
        message="CUDA out of memory",
    )
    retry = after(cj, plan.plan(seen(cj, lease=lease(2), worker_report=failed), at(3), config))
    assert retry.status.phase == models.Phase.STARTING and retry.status.assignment is None
    assert conditions(retry)["Started"] == ("True", "Retrying")
    assert [a.outcome for a in retry.status.attempts] == ["Failed"]
    # The next worker gets attempt 1; its failure exhausts backoffLimit 1.
    second = pooljobs.Offer(POOL, "w2", "w2/run-9")
    again = after(retry, plan.plan(seen(retry, offer=second), at(4), config))
    assert again.status.assignment is not None and again.status.assignment.attempt == 1
    failed2 = report(
        5,
        finished=6,
        code=1,
        reason="ContainerFailed",
        message="boom",
        attempt=1,
        worker="w2",
        worker_instance="w2/run-9",
    )
    other = lease(5, instance="run-9")
    final = plan.plan(seen(again, lease=other, worker_report=failed2), at(6), config)
    new = only_write(final).outcome.status
    assert new.phase == models.Phase.FAILED
    assert conditions(new)["Failed"] == ("True", "BackoffLimitExceeded")
    assert "after 2 failed attempts" in (new.message or "")
    assert [a.index for a in new.attempts] == [0, 1]


def test_a_lost_worker_is_checked_on_the_server_then_the_job_runs_elsewhere(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    running = after(cj, plan.plan(seen(cj, lease=lease(2), worker_report=report(3)), at(4), config))
    asked = plan.plan(seen(running, lease=lease(2), worker_report=report(3)), at(30), config)
    assert asked.need is plan.Need.LEASE and asked.actions == ()
    decided = plan.plan(
        seen(running, lease=None, lease_checked=True, worker_report=report(3)), at(30), config
    )
    write = only_write(decided)
    assert write.conditional
    new = write.outcome.status
    assert new.assignment is None and conditions(new)["Started"] == ("True", "Retrying")
    assert [(a.outcome, a.reason) for a in new.attempts] == [("Failed", "WorkerLost")]
    # The same, with the worker's pod disrupted (a spot interruption): not counted.
    spot = plan.plan(
        seen(
            running,
            lease=None,
            lease_checked=True,
            worker_report=report(3),
            worker_disrupted="TerminationByKubelet: spot interruption",
        ),
        at(30),
        config,
    )
    interrupted = only_write(spot).outcome.status
    assert [(a.outcome, a.reason) for a in interrupted.attempts] == [
        ("Interrupted", "SpotInterrupted")
    ]
    assert pooljobs.failures(interrupted.attempts) == 0


def test_a_worker_lost_before_it_accepted_hands_the_same_attempt_on(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    restarted = lease(10, instance="run-2")  # the container restarted: a new process
    decided = plan.plan(seen(cj, lease=restarted, lease_checked=True), at(11), config)
    new = only_write(decided).outcome.status
    assert new.assignment is None and new.attempts == []
    assert conditions(new)["Started"] == ("Unknown", "WaitingForWorker")
    assert "restarted" in (new.message or "")
    draining = plan.plan(seen(cj, lease=lease(10, state="draining")), at(11), config)
    assert only_write(draining).outcome.status.assignment is None  # declined by draining
    again = after(cj, decided)
    nxt = plan.plan(seen(again, offer=pooljobs.Offer(POOL, "w2", "w2/x")), at(12), config)
    assignment = only_write(nxt).outcome.status.assignment
    assert assignment is not None and assignment.attempt == 0


def test_the_start_deadline_fails_a_job_no_worker_took(config: settings.OperatorSettings) -> None:
    waiting = after(pool_cj(), plan.plan(seen(pool_cj()), at(1), config))
    assert plan.plan(seen(waiting), at(61), config).actions == ()
    problem = ("Unschedulable", "no GPU capacity: 0/3 nodes are available")
    new = only_write(plan.plan(seen(waiting, pool_problem=problem), at(62), config)).outcome.status
    assert new.phase == models.Phase.FAILED
    assert conditions(new)["Failed"] == ("True", "Unschedulable")
    assert "no worker of pool interactive accepted the job within 60s" in (new.message or "")
    gone = only_write(plan.plan(seen(waiting, pool=None), at(62), config)).outcome.status
    assert conditions(gone)["Failed"] == ("True", "PoolNotFound")


def test_the_active_deadline_fails_an_attempt_that_never_reports(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    running = after(cj, plan.plan(seen(cj, lease=lease(3), worker_report=report(4)), at(5), config))
    fresh = lease(630)
    assert (
        plan.plan(seen(running, lease=fresh, worker_report=report(4)), at(634), config).actions
        == ()
    )
    decided = plan.plan(seen(running, lease=fresh, worker_report=report(4)), at(635), config)
    write = only_write(decided)
    assert write.conditional
    new = write.outcome.status
    # Retried as a Job pod stopped at its deadline is (backoffLimit 2 by default) ...
    assert new.phase == models.Phase.STARTING and new.assignment is None
    assert [(a.outcome, a.reason) for a in new.attempts] == [("Failed", "DeadlineExceeded")]
    # ... and failed for good once retries are spent.
    spent = pool_cj(backoffLimit=0)
    spent = after(spent, plan.plan(seen(spent, offer=OFFER), at(1), config))
    spent = after(
        spent, plan.plan(seen(spent, lease=lease(3), worker_report=report(4)), at(5), config)
    )
    final = plan.plan(seen(spent, lease=fresh, worker_report=report(4)), at(635), config)
    assert conditions(only_write(final).outcome.status)["Failed"] == ("True", "DeadlineExceeded")


def test_a_deadline_reported_by_the_worker_is_retried(config: settings.OperatorSettings) -> None:
    cj = assigned_job(config)
    late = report(4, finished=605, code=25, reason="DeadlineExceeded", message="stopped at 600s")
    new = only_write(plan.plan(seen(cj, lease=lease(600), worker_report=late), at(606), config))
    assert new.outcome.status.phase == models.Phase.STARTING
    assert conditions(new.outcome.status)["Started"] == ("True", "Retrying")


def test_suspending_takes_the_job_back_and_resuming_assigns_it_again(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    running = after(cj, plan.plan(seen(cj, lease=lease(3), worker_report=report(4)), at(5), config))
    spec = running.spec.model_copy(update={"suspend": True})
    suspended = running.model_copy(update={"spec": spec})
    write = only_write(
        plan.plan(seen(suspended, lease=lease(5), worker_report=report(4)), at(6), config)
    )
    new = write.outcome.status
    assert write.conditional and new.assignment is None and new.phase == models.Phase.SUSPENDED
    assert [(a.outcome, a.reason) for a in new.attempts] == [("Interrupted", "SuspendedByUser")]
    resumed = suspended.model_copy(
        update={"spec": spec.model_copy(update={"suspend": False}), "status": new}
    )
    again = plan.plan(seen(resumed, offer=OFFER), at(7), config)
    assignment = only_write(again).outcome.status.assignment
    assert assignment is not None and assignment.attempt == 1


def test_the_default_pool_of_a_profile(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path, COMPOSE_DEFAULT_POOLS="instantid-sdxl=interactive")
    assert pooljobs.pool_of(make_cj().spec, config) == POOL
    kueue = make_cj(execution={"queueName": "gpu"})
    assert pooljobs.pool_of(kueue.spec, config) is None  # Kueue admits Jobs, not pool jobs
    assert pooljobs.pool_of(make_cj().spec, make_settings(tmp_path)) is None


def test_a_successful_pool_job_posts_three_events(config: settings.OperatorSettings) -> None:
    cj = pool_cj()
    events = []
    steps: list[tuple[dict[str, Any], datetime.datetime]] = [
        ({"offer": OFFER}, at(1)),
        ({"lease": lease(2), "worker_report": report(2)}, at(3)),
        (
            {"lease": lease(2), "worker_report": report(2, finished=9, code=0, result=result())},
            at(9),
        ),
    ]
    for fields, moment in steps:
        write = only_write(plan.plan(seen(cj, **fields), moment, config))
        events.append(write.event.reason if write.event else None)
        cj = cj.model_copy(update={"status": write.outcome.status})
    assert events == ["AssignedToWorker", "Running", "Completed"]
    assert cj.status.phase == models.Phase.SUCCEEDED


def test_a_report_of_another_attempt_is_not_read_as_this_one(
    config: settings.OperatorSettings,
) -> None:
    cj = assigned_job(config)
    old = report(0, finished=1, code=0, result=result(), attempt=3)
    assert plan.plan(seen(cj, lease=lease(3), worker_report=old), at(4), config).actions == ()
    foreign = report(0, finished=1, code=0, result=result(), worker_instance="other/x")
    assert plan.plan(seen(cj, lease=lease(3), worker_report=foreign), at(4), config).actions == ()


def test_pools_module_exports_the_view_used_here() -> None:
    assert isinstance(pool_view(), pools.PoolView)


def test_past_the_caps_a_waiting_pool_job_takes_its_slot(config: settings.OperatorSettings) -> None:
    decided = plan.plan(seen(pool_cj(), capped=True), at(1), config)
    assert decided.admit and only_write(decided).outcome.status.phase == models.Phase.STARTING
    unchanged = after(pool_cj(), decided)
    again = plan.plan(seen(unchanged, capped=True), at(2), config)
    assert again.actions == () and not again.admit  # nothing written, nothing taken twice
