"""The edges of plan(): the attempt after a rebuild, when a terminal status counts as settled,
which writes are coalesced and which are not, the lost Job's name, suspension both ways, and,
in pool mode, names and states decoded from the API as the operator reads them."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import pytest

from compose_api import contract, models
from compose_api import pools as protocol
from compose_operator import names, observed, plan, settings, status
from tests.operator.unit import test_pool_plan as pool_plan
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_plan import job_view, kinds, seen
from tests.operator.unit.test_status import at, cond, pod, report, scheduled, terminated, ts


@pytest.fixture
def config(tmp_path: pathlib.Path) -> settings.OperatorSettings:
    return make_settings(tmp_path, COMPOSE_JOB_TTL_SECONDS="600")


def from_api(value: Any) -> Any:
    """``value`` as decoded from the API server's JSON: its strings are new objects."""
    return json.loads(json.dumps(value))


def only_write(decided: plan.Plan) -> plan.WriteStatus:
    (write,) = decided.actions
    assert isinstance(write, plan.WriteStatus)
    return write


def with_intent(
    attempts: tuple[models.Attempt, ...] = (),
) -> tuple[models.CompositionJob, str]:
    """A job whose status records, at 0 s, the intent to create its first Job (and the given
    attempts); with that Job's name."""
    cj = make_cj()
    name = names.job_name("portrait", cj.metadata.uid or "", 0)
    intent = status.waiting(cj, seed=42, queue=None, now=at(0), creating=name).status
    return cj.model_copy(
        update={"status": intent.model_copy(update={"attempts": [*attempts]})}
    ), name


def test_a_rebuild_after_the_second_attempt_makes_the_third(
    config: settings.OperatorSettings,
) -> None:
    before = make_cj()
    edited = make_cj(params={"seed": 42, "steps": 20})
    decided = plan.plan(seen(edited, jobs=(job_view(config, before, attempt=1),)), at(6), config)
    create, delete = decided.actions
    assert isinstance(create, plan.CreateJob) and isinstance(delete, plan.DeleteJob)
    assert create.manifest["metadata"]["name"].endswith("-2")
    assert delete.name.endswith("-1")


def test_a_failure_on_finished_pods_is_written_at_once(config: settings.OperatorSettings) -> None:
    # A permanent exit code on a pod that finished: nothing more to wait for or to list.
    cj = make_cj()
    no_face = pod(
        "p1",
        6,
        phase="Failed",
        node="gpu-1",
        conditions=[scheduled(8)],
        state=terminated(11, 20, 30, report(contract.ExitCode.NO_FACE, "no face in person")),
    )
    decided = plan.plan(seen(cj, jobs=(job_view(config, cj),), pods=(no_face,)), at(31), config)
    assert decided.need is None
    write = only_write(decided)
    assert write.outcome.status.phase == models.Phase.FAILED


def test_a_phase_change_is_written_at_once_within_the_coalescing_window(
    config: settings.OperatorSettings,
) -> None:
    cj = make_cj()
    created = only_write(plan.plan(seen(cj, jobs=(job_view(config, cj),)), at(6), config))
    starting = cj.model_copy(update={"status": created.outcome.status})
    assert starting.status.phase == models.Phase.STARTING
    running = pod(
        "p1",
        6,
        phase="Running",
        node="gpu-1",
        conditions=[scheduled(7)],
        state={"running": {"startedAt": ts(8)}},
    )
    soon = seen(starting, jobs=(job_view(config, cj),), pods=(running,), since_last_write=0.25)
    write = only_write(plan.plan(soon, at(8), config))
    assert write.outcome.status.phase == models.Phase.RUNNING


def test_a_one_second_window_still_coalesces_and_a_first_write_never_waits(
    tmp_path: pathlib.Path,
) -> None:
    # The progress that clears a warning (Unschedulable, then scheduled and pulling) is
    # coalesced within status_coalesce_seconds.
    config = make_settings(tmp_path, COMPOSE_STATUS_COALESCE_SECONDS="1")
    cj = make_cj()
    short = (pod("p1", 6, conditions=[cond("PodScheduled", "Unschedulable", "0/3", "False")]),)
    stuck = only_write(plan.plan(seen(cj, jobs=(job_view(config, cj),), pods=short), at(6), config))
    assert stuck.outcome.status.phase == models.Phase.STARTING
    starting = cj.model_copy(update={"status": stuck.outcome.status})
    pulling = (pod("p1", 6, node="gpu-1", conditions=[scheduled(7)], state={"waiting": {}}),)
    soon = seen(starting, jobs=(job_view(config, cj),), pods=pulling, since_last_write=0.25)
    decided = plan.plan(soon, at(7), config)
    assert decided.actions == ()
    assert decided.later == pytest.approx(0.75)
    # Never written by this process (a restart): written now.
    fresh = seen(starting, jobs=(job_view(config, cj),), pods=pulling, since_last_write=None)
    assert kinds(plan.plan(fresh, at(7), config)) == ["WriteStatus"]


def test_a_one_second_position_refresh_rewrites_a_moved_position(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path, COMPOSE_QUEUE_POSITION_REFRESH_SECONDS="1")
    first = only_write(plan.plan(seen(make_cj(), queue=status.Queue(5, 9)), at(1), config))
    waiting = make_cj().model_copy(update={"status": first.outcome.status})
    due = seen(waiting, queue=status.Queue(2, 9), since_last_write=2.0)
    assert only_write(plan.plan(due, at(3), config)).outcome.status.queue_position == 2
    early = seen(waiting, queue=status.Queue(2, 9), since_last_write=0.5)
    assert plan.plan(early, at(2), config).actions == ()


def _lost_message(decided: plan.Plan) -> str:
    write = only_write(decided)
    failed = next(c for c in write.outcome.status.conditions if c.type == "Failed")
    assert failed.reason == models.Reason.JOB_LOST
    return failed.message


def test_a_lost_job_is_named_after_its_last_attempt(config: settings.OperatorSettings) -> None:
    attempts = [
        models.Attempt(index=i, job_name=f"portrait-x-{i}", outcome=models.AttemptOutcome.FAILED)
        for i in range(3)
    ]
    cj = make_cj().model_copy(update={"status": models.CompositionJobStatus(attempts=attempts)})
    message = _lost_message(plan.plan(seen(cj, listed=True), at(10), config))
    assert message == "job portrait-x-2 disappeared before it finished"


def test_a_lost_job_without_attempts_is_named_after_its_first_job(
    config: settings.OperatorSettings,
) -> None:
    lost, name = with_intent()
    message = _lost_message(plan.plan(seen(lost, listed=True), at(601), config))
    assert message == f"job {name} disappeared before it finished"


def test_suspending_a_running_job_suspends_its_job_and_says_so(
    config: settings.OperatorSettings,
) -> None:
    cj = make_cj(suspend=True)
    decided = plan.plan(seen(cj, jobs=(job_view(config, make_cj()),)), at(9), config)
    suspend, write = decided.actions
    assert suspend == plan.SuspendJob(job_view(config, cj).name, True)
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.SUSPENDED
    assert decided.take_offer is False  # Job mode: no worker is ever taken


def test_resuming_reads_the_job_as_unsuspended(config: settings.OperatorSettings) -> None:
    cj = make_cj()
    parked = observed.view_job(plan.suspended(job_view(config, cj, started=None).body, True))
    decided = plan.plan(seen(cj, jobs=(parked,)), at(9), config)
    resume, write = decided.actions
    assert resume == plan.SuspendJob(parked.name, False)
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.STARTING


def test_the_suspension_patch_and_the_body_it_leaves() -> None:
    body = {"metadata": {"name": "j"}, "spec": {"suspend": False, "backoffLimit": 2}}
    held = plan.suspended(body, True)
    assert held["spec"] == {"suspend": True, "backoffLimit": 2}
    assert held["metadata"]["name"] == "j"  # the rest of the metadata is kept
    assert held["metadata"]["annotations"] == {names.SUSPENDED_ANNOTATION: "true"}
    assert plan.suspended(held, False)["metadata"]["annotations"] == {}
    # Either way a replacement no longer waits for the Job it replaced.
    replacing = {**body, "metadata": {"annotations": {names.REPLACES_ANNOTATION: "j-0"}}}
    assert plan.suspended(replacing, True)["metadata"]["annotations"] == {
        names.SUSPENDED_ANNOTATION: "true"
    }
    assert plan.suspended(replacing, False)["metadata"]["annotations"] == {}
    assert plan.suspend_patch(True) == {
        "metadata": {
            "annotations": {names.SUSPENDED_ANNOTATION: "true", names.REPLACES_ANNOTATION: None}
        },
        "spec": {"suspend": True},
    }
    assert plan.suspend_patch(False)["metadata"]["annotations"] == {
        names.SUSPENDED_ANNOTATION: None,
        names.REPLACES_ANNOTATION: None,
    }


def test_pods_seen_after_a_restart_need_no_list(config: settings.OperatorSettings) -> None:
    # Pods are in the watch: the status can be computed without listing first.
    attempt = models.Attempt(index=0, job_name="x", pod_name="p1")
    cj = make_cj().model_copy(update={"status": models.CompositionJobStatus(attempts=[attempt])})
    decided = plan.plan(seen(cj, jobs=(job_view(config, cj),), pods=(pod("p1", 6),)), at(7), config)
    assert decided.need is None
    assert kinds(decided) == ["WriteStatus"]


def test_an_unknown_profile_is_rejected_naming_the_known_ones(
    config: settings.OperatorSettings,
) -> None:
    cj = make_cj(profile="nope")
    write = only_write(plan.plan(seen(cj), at(1), config))
    failed = next(c for c in write.outcome.status.conditions if c.type == "Failed")
    assert failed.reason == models.Reason.UNKNOWN_PROFILE
    assert failed.message == "spec.profile: unknown profile 'nope' (known: instantid-sdxl, smoke)"


def test_no_bucket_anywhere_is_rejected_naming_the_field(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path, COMPOSE_OUTPUT_BUCKET="")
    write = only_write(plan.plan(seen(make_cj()), at(1), config))
    failed = next(c for c in write.outcome.status.conditions if c.type == "Failed")
    assert failed.reason == models.Reason.INVALID_SPEC
    assert failed.message.startswith("spec.output.bucket: ")


# -- pool mode --------------------------------------------------------------------------------


def test_a_draining_worker_read_from_the_api_gives_the_job_back(
    config: settings.OperatorSettings,
) -> None:
    cj = pool_plan.assigned_job(config)
    body = protocol.lease_body(
        pool=pool_plan.POOL,
        namespace="studio",
        pod=pool_plan.WORKER,
        pod_uid="u",
        instance="run-1",
        lease_seconds=15,
        now=at(10),
        state=protocol.STATE_DRAINING,
    )
    draining = protocol.view_lease(from_api(body))
    decided = plan.plan(pool_plan.seen(cj, lease=draining), at(11), config)
    assert only_write(decided).outcome.status.assignment is None


def test_a_job_read_from_the_api_stays_with_its_pool(config: settings.OperatorSettings) -> None:
    # The pool's name in the spec and in the assignment are separate strings, equal by value.
    assigned = pool_plan.assigned_job(config)
    decoded = models.CompositionJob.model_validate(
        from_api(assigned.model_dump(mode="json", by_alias=True))
    )
    decided = plan.plan(
        pool_plan.seen(decoded, pool_name=decoded.spec.execution.pool, lease=pool_plan.lease(3)),
        at(5),
        config,
    )
    assert decided.actions == ()


def test_an_assigned_job_no_worker_accepted_fails_at_its_start_deadline(
    config: settings.OperatorSettings,
) -> None:
    cj = pool_plan.assigned_job(config)  # admitted at 1 s: the deadline falls at 1 + 60 + 1
    fresh = pool_plan.lease(61)  # the worker is alive, it just never accepted
    waits = plan.plan(pool_plan.seen(cj, lease=fresh), at(61), config)
    assert waits.actions == ()
    decided = plan.plan(pool_plan.seen(cj, lease=fresh), at(62), config)
    write = only_write(decided)
    assert write.conditional
    assert write.outcome.status.phase == models.Phase.FAILED


def test_any_edit_before_the_start_rebuilds_whichever_way_its_hash_sorts(
    config: settings.OperatorSettings,
) -> None:
    one, other = make_cj(), make_cj(params={"seed": 42, "steps": 20})
    for before, edited in ((one, other), (other, one)):
        decided = plan.plan(seen(edited, jobs=(job_view(config, before),)), at(6), config)
        assert kinds(decided) == ["CreateJob", "DeleteJob"]


def test_an_assigned_job_moved_to_any_other_pool_is_taken_back(
    config: settings.OperatorSettings,
) -> None:
    cj = pool_plan.assigned_job(config)
    for pool in ("a-first", "z-last"):
        decided = plan.plan(
            pool_plan.seen(cj, pool_name=pool, lease=pool_plan.lease(3)), at(5), config
        )
        new = only_write(decided).outcome.status
        assert new.assignment is None


def test_a_job_without_a_seed_annotation_keeps_the_seed_in_its_status(
    config: settings.OperatorSettings,
) -> None:
    cj = make_cj(params={"seed": 42})
    body = dict(job_view(config, cj).body)
    meta = dict(body["metadata"])
    meta["annotations"] = {}  # a Job from before the seed annotation
    body["metadata"] = meta
    unannotated = observed.view_job(body)
    assert unannotated.seed is None
    earlier = cj.model_copy(update={"status": models.CompositionJobStatus(seed=7)})
    write = only_write(plan.plan(seen(earlier, jobs=(unannotated,)), at(7), config))
    assert write.outcome.status.seed == 7


def test_the_status_written_with_a_suspension_reads_the_job_as_suspended(
    config: settings.OperatorSettings,
) -> None:
    # The Job is suspended before its first status: it was not admitted, so no queue time.
    cj = make_cj(suspend=True)
    decided = plan.plan(seen(cj, jobs=(job_view(config, make_cj()),)), at(9), config)
    _, write = decided.actions
    assert isinstance(write, plan.WriteStatus)
    timings = write.outcome.status.timings
    assert timings is None or timings.queued is None


def test_a_missing_job_whose_attempts_are_recorded_is_lost_not_created_again(
    config: settings.OperatorSettings,
) -> None:
    _, name = with_intent()
    ran = models.Attempt(index=0, job_name=name, pod_name="p1", outcome="Running")
    recorded, _ = with_intent((ran,))
    decided = plan.plan(seen(recorded, listed=True), at(10), config)  # well within the TTL
    assert kinds(decided) == ["WriteStatus"]
    assert _lost_message(decided) == f"job {name} disappeared before it finished"


def test_actions_cannot_change_once_planned() -> None:
    outcome = status.waiting(make_cj(), seed=42, queue=None, now=at(1))
    for action in (
        plan.CreateJob({}),
        plan.DeleteJob("j"),
        plan.SuspendJob("j", True),
        plan.WriteStatus(outcome, None),
        plan.Plan(),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            action.__setattr__("name", "other")


def test_a_suspension_within_the_coalescing_window_is_written_at_once(
    config: settings.OperatorSettings,
) -> None:
    # Running to Suspended: a phase change, whichever way the phases sort.
    cj = make_cj()
    running_pod = pod(
        "p1",
        6,
        phase="Running",
        node="gpu-1",
        conditions=[scheduled(7)],
        state={"running": {"startedAt": ts(8)}},
    )
    first = only_write(
        plan.plan(seen(cj, jobs=(job_view(config, cj),), pods=(running_pod,)), at(9), config)
    )
    assert first.outcome.status.phase == models.Phase.RUNNING
    held = make_cj(suspend=True).model_copy(update={"status": first.outcome.status})
    decided = plan.plan(
        seen(held, jobs=(job_view(config, cj),), pods=(running_pod,), since_last_write=0.25),
        at(10),
        config,
    )
    assert kinds(decided) == ["SuspendJob", "WriteStatus"]


def test_a_pool_of_any_other_profile_is_refused(config: settings.OperatorSettings) -> None:
    for profile in ("aaa-first", "zzz-last"):
        other = pool_plan.pool_view(profile=profile)
        decided = plan.plan(pool_plan.seen(pool_plan.pool_cj(), pool=other), at(1), config)
        assert only_write(decided).outcome.status.phase == models.Phase.FAILED


def test_an_attempt_well_past_its_active_deadline_is_ended(
    config: settings.OperatorSettings,
) -> None:
    cj = pool_plan.assigned_job(config)
    accepted = pool_plan.report(4)
    running = after_write(
        cj,
        plan.plan(
            pool_plan.seen(cj, lease=pool_plan.lease(3), worker_report=accepted), at(5), config
        ),
    )
    late = plan.plan(
        pool_plan.seen(running, lease=pool_plan.lease(690), worker_report=accepted), at(700), config
    )
    new = only_write(late).outcome.status
    assert [(a.outcome, a.reason) for a in new.attempts] == [("Failed", "DeadlineExceeded")]


def after_write(cj: models.CompositionJob, decided: plan.Plan) -> models.CompositionJob:
    return cj.model_copy(update={"status": only_write(decided).outcome.status})


def test_a_listed_job_without_pods_is_decided_on_what_it_shows(
    config: settings.OperatorSettings,
) -> None:
    # The list came back with no pod (all gone): no need to list again.
    attempt = models.Attempt(index=0, job_name="x", pod_name="p1")
    cj = make_cj().model_copy(update={"status": models.CompositionJobStatus(attempts=[attempt])})
    decided = plan.plan(seen(cj, jobs=(job_view(config, cj),), listed=True), at(7), config)
    assert decided.need is None
    assert kinds(decided) == ["WriteStatus"]


def test_an_edit_after_a_pod_started_runs_in_the_same_job(
    config: settings.OperatorSettings,
) -> None:
    before = make_cj()
    started = make_cj(params={"seed": 42, "steps": 20}).model_copy(
        update={"status": models.CompositionJobStatus(start_time=at(8))}
    )
    decided = plan.plan(seen(started, jobs=(job_view(config, before),)), at(9), config)
    assert "CreateJob" not in kinds(decided)


def test_a_job_that_ended_without_pods_in_the_watch_is_listed_first(
    config: settings.OperatorSettings,
) -> None:
    # Past its deadline with no pod seen: a terminal status is decided on a fresh list.
    cj = make_cj()
    expired = job_view(
        config, cj, conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
    )
    assert plan.plan(seen(cj, jobs=(expired,)), at(700), config).need is plan.Need.LIST
    (write,) = plan.plan(seen(cj, jobs=(expired,), listed=True), at(700), config).actions
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.FAILED


# -- found by the full mutation run of plan.py ------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "normal"),
    [
        (models.Phase.STARTING, models.Phase.STARTING, True),
        (models.Phase.QUEUED, models.Phase.STARTING, False),
        (models.Phase.STARTING, models.Phase.RUNNING, False),
        (models.Phase.STARTING, models.Phase.SUSPENDED, False),
        (models.Phase.RUNNING, models.Phase.RUNNING, False),
        (models.Phase.QUEUED, models.Phase.QUEUED, False),
        (models.Phase.SUSPENDED, models.Phase.SUSPENDED, False),
    ],
)
def test_only_starting_before_and_after_is_a_normal_start(
    before: models.Phase, after: models.Phase, normal: bool
) -> None:
    # Phases sort on both sides of "Starting": a comparison by order instead of equality
    # would take a running or suspended job's progress for a starting one's (30 s window).
    previous = models.CompositionJobStatus(phase=before)
    outcome = status.Outcome(models.CompositionJobStatus(phase=after), [])
    assert plan._normal_start(previous, outcome) is normal


def test_a_warning_before_is_no_normal_start() -> None:
    warned = {"type": "Started", "status": "Unknown", "reason": "Unschedulable",
              "message": "0/3 nodes", "lastTransitionTime": ts(6)}  # fmt: skip
    previous = models.CompositionJobStatus.model_validate(
        {"phase": models.Phase.STARTING, "conditions": [warned]}
    )
    outcome = status.Outcome(models.CompositionJobStatus(phase=models.Phase.STARTING), [])
    assert plan._normal_start(previous, outcome) is False


def test_a_wait_that_ends_now_is_written_now(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path, COMPOSE_STATUS_COALESCE_SECONDS="1")
    cj = make_cj()
    short = (pod("p1", 6, conditions=[cond("PodScheduled", "Unschedulable", "0/3", "False")]),)
    stuck = only_write(plan.plan(seen(cj, jobs=(job_view(config, cj),), pods=short), at(6), config))
    starting = cj.model_copy(update={"status": stuck.outcome.status})
    pulling = (pod("p1", 6, node="gpu-1", conditions=[scheduled(7)], state={"waiting": {}}),)
    due = seen(starting, jobs=(job_view(config, cj),), pods=pulling, since_last_write=1.0)
    decided = plan.plan(due, at(7), config)
    assert kinds(decided) == ["WriteStatus"] and decided.later is None


def test_a_suspended_job_that_never_started_starts_when_resumed(
    config: settings.OperatorSettings,
) -> None:
    # Its status holds a Suspended condition and no Started one: no Job was ever meant to
    # exist, so none is missing (it is not lost), even on a fresh list.
    parked = make_cj(suspend=True)
    held = only_write(plan.plan(seen(parked), at(1), config)).outcome.status
    assert held.phase == models.Phase.SUSPENDED
    resumed = make_cj().model_copy(update={"status": held})
    for listed in (False, True):
        decided = plan.plan(seen(resumed, listed=listed), at(5), config)
        assert kinds(decided) == ["WriteStatus", "CreateJob"]


def test_a_missing_job_is_lost_once_the_ttl_since_the_intent_has_passed(
    config: settings.OperatorSettings,
) -> None:
    recorded, _ = with_intent()
    within = plan.plan(seen(recorded, listed=True), at(599), config)  # TTL 600 s
    assert kinds(within) == ["WriteStatus", "CreateJob"]  # never created: create it
    at_ttl = plan.plan(seen(recorded, listed=True), at(600), config)
    assert kinds(at_ttl) == ["WriteStatus"]
    assert _lost_message(at_ttl)


def test_a_resumed_job_held_by_the_cap_is_not_rewritten_for_a_moved_position(
    config: settings.OperatorSettings,
) -> None:
    cj = make_cj()
    parked = observed.view_job(plan.suspended(job_view(config, cj, started=None).body, True))
    first = plan.plan(
        seen(cj, jobs=(parked,), queue=status.Queue(3, 5), capped=True), at(9), config
    )
    waiting = cj.model_copy(update={"status": only_write(first).outcome.status})
    assert waiting.status.phase == models.Phase.QUEUED
    moved = seen(
        waiting, jobs=(parked,), queue=status.Queue(2, 5), capped=True, since_last_write=5.0
    )
    assert plan.plan(moved, at(14), config).actions == ()
    due = dataclasses.replace(moved, since_last_write=61.0)
    assert only_write(plan.plan(due, at(70), config)).outcome.status.queue_position == 2


def test_a_pool_job_far_past_its_start_deadline_fails(config: settings.OperatorSettings) -> None:
    waiting = pool_plan.after(
        pool_plan.pool_cj(), plan.plan(pool_plan.seen(pool_plan.pool_cj()), at(1), config)
    )
    late = only_write(plan.plan(pool_plan.seen(waiting), at(300), config)).outcome.status
    assert late.phase == models.Phase.FAILED
    cj = pool_plan.assigned_job(config)
    fresh = pool_plan.lease(299)
    decided = plan.plan(pool_plan.seen(cj, lease=fresh), at(300), config)
    assert only_write(decided).outcome.status.phase == models.Phase.FAILED


def test_a_queued_status_without_a_position_gets_its_position_written(
    config: settings.OperatorSettings,
) -> None:
    # A status written before positions were recorded (or edited by hand): the position is
    # news, whatever the refresh interval.
    first = only_write(plan.plan(seen(make_cj(), queue=status.Queue(3, 5)), at(1), config))
    bare = first.outcome.status.model_copy(update={"queue_position": None})
    waiting = make_cj().model_copy(update={"status": bare})
    behind = seen(waiting, queue=status.Queue(2, 5), capped=True, since_last_write=1.0)
    assert only_write(plan.plan(behind, at(2), config)).outcome.status.queue_position == 2


def test_only_the_newest_job_is_kept(config: settings.OperatorSettings) -> None:
    cj = make_cj()
    newest, stale = job_view(config, cj, attempt=1), job_view(config, cj, attempt=0)
    decided = plan.plan(seen(cj, jobs=(newest, stale)), at(6), config)
    deleted = [a.name for a in decided.actions if isinstance(a, plan.DeleteJob)]
    assert deleted == [stale.name]
