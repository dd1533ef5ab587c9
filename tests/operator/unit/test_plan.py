"""The pure decision: what the reconciler is told to do, in which order, for each situation."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pydantic
import pytest

from compose_api import contract, models
from compose_operator import builders, names, observed, plan, settings, status
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_status import at, pod, report, scheduled, terminated, ts


@pytest.fixture
def config(tmp_path: pathlib.Path) -> settings.OperatorSettings:
    return make_settings(tmp_path, COMPOSE_JOB_TTL_SECONDS="600")


def job_view(
    config: settings.OperatorSettings,
    cj: models.CompositionJob,
    *,
    attempt: int = 0,
    conditions: list[dict[str, Any]] | None = None,
    started: float | None = 5,
) -> observed.JobView:
    body = builders.build_job(cj, config.profiles["instantid-sdxl"], config, attempt, 42)
    body["metadata"]["creationTimestamp"] = ts(5)
    body["status"] = {"conditions": conditions or []}
    if started is not None:
        body["status"]["startTime"] = ts(started)
    return observed.view_job(body)


def seen(cj: models.CompositionJob, **fields: Any) -> observed.Observed:
    return observed.Observed(
        meta=cj.metadata, previous=cj.status, spec=cj.spec, spec_error=None, **fields
    )


def kinds(decided: plan.Plan) -> list[str]:
    return [type(action).__name__ for action in decided.actions]


def test_the_intent_is_written_before_the_job_is_created(
    config: settings.OperatorSettings,
) -> None:
    decided = plan.plan(seen(make_cj()), at(1), config)
    assert kinds(decided) == ["WriteStatus", "CreateJob"]
    write, create = decided.actions
    assert isinstance(write, plan.WriteStatus) and isinstance(create, plan.CreateJob)
    assert status.intent(write.outcome.status.conditions) is not None
    assert create.manifest["metadata"]["name"] == status.intent(
        write.outcome.status.conditions
    ).message.removeprefix("creating job ")  # type: ignore[union-attr]
    assert write.event is not None and write.event.reason == "JobCreated"
    assert not decided.admit  # no caps: nothing to take
    capped = plan.plan(seen(make_cj(), capped=True), at(1), config)
    assert capped.admit


def test_the_intent_goes_with_the_create_only_with_a_long_job_ttl(
    config: settings.OperatorSettings, tmp_path: pathlib.Path
) -> None:
    assert config.job_ttl_seconds == plan.UNRECORDED_CREATE_MIN_TTL_SECONDS
    assert plan.plan(seen(make_cj()), at(1), config).together
    assert plan.plan(seen(make_cj(), capped=True), at(1), config).together
    assert plan.plan(seen(make_cj()), at(1), make_settings(tmp_path)).together  # the default
    short = make_settings(tmp_path, COMPOSE_JOB_TTL_SECONDS="599")
    assert not plan.plan(seen(make_cj()), at(1), short).together
    # Nothing else is sent at once: a wait, a Job followed.
    assert not plan.plan(seen(make_cj(), queue=status.Queue(3, 7)), at(1), config).together
    cj = make_cj()
    followed = plan.plan(seen(cj, jobs=(job_view(config, cj),)), at(9), config)
    assert followed.actions and not followed.together


def test_a_job_behind_the_cap_is_written_queued_and_nothing_is_created(
    config: settings.OperatorSettings,
) -> None:
    decided = plan.plan(seen(make_cj(), queue=status.Queue(3, 7), capped=True), at(1), config)
    assert kinds(decided) == ["WriteStatus"]
    (write,) = decided.actions
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.QUEUED
    assert write.outcome.status.queue_position == 3
    assert not decided.admit


def test_a_waiting_job_costs_no_write_until_its_moved_position_is_due(
    config: settings.OperatorSettings, tmp_path: pathlib.Path
) -> None:
    first = plan.plan(seen(make_cj(), queue=status.Queue(5, 9)), at(1), config).actions[0]
    assert isinstance(first, plan.WriteStatus)
    waiting = make_cj().model_copy(update={"status": first.outcome.status})
    same = seen(waiting, queue=status.Queue(5, 12), since_last_write=1.0)
    assert plan.plan(same, at(2), config).actions == ()  # depth changed, position did not
    moved = seen(waiting, queue=status.Queue(2, 9), since_last_write=59.0)
    assert plan.plan(moved, at(60), config).actions == ()  # not due yet (60 s by default)
    due = seen(waiting, queue=status.Queue(2, 9), since_last_write=60.0)
    (write,) = plan.plan(due, at(61), config).actions
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.queue_position == 2
    assert write.event is None  # a position is no transition a user is told about
    never = make_settings(tmp_path, COMPOSE_QUEUE_POSITION_REFRESH_SECONDS="0")
    assert plan.plan(due, at(61), never).actions == ()


def test_a_waiting_job_that_is_edited_is_written_with_its_new_generation(
    config: settings.OperatorSettings,
) -> None:
    # GitOps tools read observedGeneration == generation as "the controller has seen my edit".
    first = plan.plan(seen(make_cj(), queue=status.Queue(5, 9)), at(1), config).actions[0]
    assert isinstance(first, plan.WriteStatus)
    edited = make_cj(params={"seed": 42, "steps": 20})
    edited.metadata.generation = 2
    waiting = edited.model_copy(update={"status": first.outcome.status})
    since = {"since_last_write": 1.0}
    (write,) = plan.plan(seen(waiting, queue=status.Queue(5, 9), **since), at(2), config).actions
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.observed_generation == 2
    assert write.event is None


def test_a_waiting_job_edited_into_a_new_attempt_names_its_new_job(
    config: settings.OperatorSettings,
) -> None:
    def written(decided: plan.Plan) -> models.CompositionJobStatus:
        write = decided.actions[-1]
        assert isinstance(write, plan.WriteStatus)
        return write.outcome.status

    running = job_view(config, make_cj(), started=None)
    paused = make_cj(suspend=True)
    paused.status = written(plan.plan(seen(paused, jobs=(running,), capped=True), at(8), config))
    parked = observed.view_job(plan.suspended(running.body, True))
    resumed = make_cj().model_copy(update={"status": paused.status})
    waiting = seen(resumed, jobs=(parked,), queue=status.Queue(1, 1), capped=True)
    resumed.status = written(plan.plan(waiting, at(9), config))
    started = next(c for c in resumed.status.conditions if c.type == "Started")
    assert parked.name in started.message
    # Edited while it waits: its new attempt's Job, held too, is the one its status names.
    edited = make_cj(params={"seed": 42, "steps": 20}).model_copy(update={"status": resumed.status})
    edited.metadata.generation = 2
    new = observed.view_job(
        plan.suspended(job_view(config, edited, attempt=1, started=None).body, True)
    )
    waiting = seen(edited, jobs=(new,), queue=status.Queue(1, 1), capped=True, since_last_write=1.0)
    soon = plan.plan(waiting, at(10), config)  # news, not a transition: coalesced
    assert soon.actions == () and soon.later is not None
    waiting = dataclasses.replace(waiting, since_last_write=30.0)
    edited.status = written(plan.plan(waiting, at(30), config))
    started = next(c for c in edited.status.conditions if c.type == "Started")
    assert new.name in started.message
    assert edited.status.observed_generation == 2
    # Unchanged but for its place: not written.
    moved = seen(edited, jobs=(new,), queue=status.Queue(2, 3), capped=True, since_last_write=1.0)
    assert plan.plan(moved, at(31), config) == plan.Plan()


def test_terminal_stays_terminal(config: settings.OperatorSettings) -> None:
    done = status.lost(make_cj(), "gone", now=at(1)).status
    cj = make_cj().model_copy(update={"status": done})
    assert plan.plan(seen(cj, queue=None), at(2), config) == plan.Plan()


def test_an_invalid_spec_is_rejected_naming_the_field(config: settings.OperatorSettings) -> None:
    cj = make_cj()
    with pytest.raises(pydantic.ValidationError) as caught:
        models.CompositionJobSpec.model_validate(
            {**cj.spec.model_dump(by_alias=True), "params": {"steps": 0}}
        )
    error = models.describe_validation_error(caught.value)
    bad = observed.Observed(meta=cj.metadata, previous=cj.status, spec=None, spec_error=error)
    (write,) = plan.plan(bad, at(1), config).actions
    assert isinstance(write, plan.WriteStatus)
    failed = next(c for c in write.outcome.status.conditions if c.type == "Failed")
    assert failed.reason == "InvalidSpec"
    assert "spec.params.steps" in failed.message
    assert write.event is not None and write.event.type == "Warning"


def test_a_missing_job_is_listed_then_created_or_lost(config: settings.OperatorSettings) -> None:
    name = names.job_name("portrait", make_cj().metadata.uid or "", 0)
    intent = status.waiting(make_cj(), seed=42, queue=None, now=at(0), creating=name).status
    cj = make_cj().model_copy(update={"status": intent})
    assert plan.plan(seen(cj), at(10), config).need is plan.Need.LIST
    recent = plan.plan(seen(cj, listed=True), at(10), config)
    assert kinds(recent) == ["WriteStatus", "CreateJob"]
    rewrite = recent.actions[0]
    assert isinstance(rewrite, plan.WriteStatus)
    assert status.to_patch(rewrite.outcome.status, intent) is None  # already written: no patch
    old = plan.plan(seen(cj, listed=True), at(601), config)
    (write,) = old.actions
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.FAILED
    assert next(c for c in write.outcome.status.conditions if c.type == "Failed").reason == (
        "JobLost"
    )


def test_a_starting_job_names_when_its_start_deadline_falls_due(
    config: settings.OperatorSettings,
) -> None:
    cj = make_cj()
    decided = plan.plan(seen(cj, jobs=(job_view(config, cj),), pods=(pod("p1", 6),)), at(7), config)
    assert kinds(decided) == ["WriteStatus"]
    assert decided.recheck_at == at(66)  # the Job started at 5 s, startDeadlineSeconds 60
    late = plan.plan(seen(cj, jobs=(job_view(config, cj),), pods=(pod("p1", 6),)), at(66), config)
    assert late.need is plan.Need.LIST  # a terminal status is decided on fresh pods
    fresh = seen(cj, jobs=(job_view(config, cj),), pods=(pod("p1", 6),), listed=True)
    late = plan.plan(fresh, at(66), config)
    assert kinds(late) == ["DeleteJob", "WriteStatus"]  # stop the Job, then say why
    assert late.recheck_at is None


def test_progress_within_a_phase_is_coalesced(config: settings.OperatorSettings) -> None:
    cj = make_cj()
    created = plan.plan(seen(cj, jobs=(job_view(config, cj),)), at(6), config).actions[0]
    assert isinstance(created, plan.WriteStatus)
    starting = cj.model_copy(update={"status": created.outcome.status})
    pending = (pod("p1", 6, node="gpu-1", conditions=[scheduled(7)], state={"waiting": {}}),)
    soon = seen(starting, jobs=(job_view(config, cj),), pods=pending, since_last_write=0.25)
    decided = plan.plan(soon, at(7), config)
    assert decided.actions == ()
    # A starting Job's normal progress waits the longer window: Running usually comes first.
    assert config.starting_progress_seconds > config.status_coalesce_seconds
    assert decided.later == pytest.approx(config.starting_progress_seconds - 0.25)
    since = config.status_coalesce_seconds + 0.5
    within = seen(starting, jobs=(job_view(config, cj),), pods=pending, since_last_write=since)
    assert plan.plan(within, at(8), config).actions == ()
    since = config.starting_progress_seconds + 0.5
    later = seen(starting, jobs=(job_view(config, cj),), pods=pending, since_last_write=since)
    assert kinds(plan.plan(later, at(40), config)) == ["WriteStatus"]
    # The pod runs: a phase change, written at once however recent the last write.
    running = (
        pod("p1", 6, phase="Running", node="gpu-1", state={"running": {"startedAt": ts(9)}}),
    )
    now = seen(starting, jobs=(job_view(config, cj),), pods=running, since_last_write=0.25)
    assert kinds(plan.plan(now, at(9), config)) == ["WriteStatus"]


def test_a_warning_while_starting_and_its_clearing_keep_the_short_window(
    config: settings.OperatorSettings,
) -> None:
    cj = make_cj()
    created = plan.plan(seen(cj, jobs=(job_view(config, cj),)), at(6), config).actions[0]
    assert isinstance(created, plan.WriteStatus)
    starting = cj.model_copy(update={"status": created.outcome.status})
    no_room = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
               "message": "0/3 nodes are available", "lastTransitionTime": ts(7)}  # fmt: skip
    unschedulable = (pod("p1", 6, conditions=[no_room]),)
    soon = seen(starting, jobs=(job_view(config, cj),), pods=unschedulable, since_last_write=0.25)
    warned = plan.plan(soon, at(7), config)
    assert kinds(warned) == ["WriteStatus"]  # a warning: at once
    write = warned.actions[0]
    assert isinstance(write, plan.WriteStatus) and write.event is not None
    assert write.event.type == "Warning" and write.event.reason == "Unschedulable"
    shown = starting.model_copy(update={"status": write.outcome.status})
    # A node came: the pod is scheduled and pulls its image. Clearing the warning is news.
    pulling = (pod("p1", 6, node="gpu-1", conditions=[scheduled(20)], state={"waiting": {}}),)
    soon = seen(shown, jobs=(job_view(config, cj),), pods=pulling, since_last_write=0.25)
    cleared = plan.plan(soon, at(20), config)
    assert cleared.actions == ()
    assert cleared.later == pytest.approx(config.status_coalesce_seconds - 0.25)
    since = config.status_coalesce_seconds + 0.5
    due = seen(shown, jobs=(job_view(config, cj),), pods=pulling, since_last_write=since)
    assert kinds(plan.plan(due, at(26), config)) == ["WriteStatus"]


def test_a_spec_change_before_the_start_runs_as_a_new_attempt(
    config: settings.OperatorSettings,
) -> None:
    before = make_cj()
    edited = make_cj(params={"seed": 42, "steps": 20})
    decided = plan.plan(seen(edited, jobs=(job_view(config, before),)), at(6), config)
    assert kinds(decided) == ["CreateJob", "DeleteJob"]  # create first: a crash leaves one
    create, delete = decided.actions
    assert isinstance(create, plan.CreateJob) and isinstance(delete, plan.DeleteJob)
    assert create.manifest["metadata"]["name"].endswith("-1")
    assert delete.name.endswith("-0")


def _replacement(decided: plan.Plan) -> observed.JobView:
    """The new attempt's Job of a rebuild, as the watch will show it."""
    assert kinds(decided) == ["CreateJob", "DeleteJob"]
    create = decided.actions[0]
    assert isinstance(create, plan.CreateJob)
    return observed.view_job({**create.manifest, "status": {}})


def test_a_new_attempt_keeps_the_hold_of_the_job_it_replaces(
    config: settings.OperatorSettings,
) -> None:
    before = make_cj()
    running = job_view(config, before, started=None)
    parked = observed.view_job(plan.suspended(running.body, True))
    edited = make_cj(params={"seed": 42, "steps": 20})

    free = _replacement(plan.plan(seen(edited, jobs=(running,)), at(6), config))
    assert (free.suspended, free.held_by_operator, free.replaces) == (False, False, None)
    # Under the caps it waits, suspended, for the Job whose slot it takes.
    capped = _replacement(plan.plan(seen(edited, jobs=(running,), capped=True), at(6), config))
    assert (capped.suspended, capped.held_by_operator, capped.replaces) == (
        True,
        False,
        running.name,
    )
    # Waiting for a slot, or suspended by the user: held by the operator, as the old one was.
    waiting = seen(edited, jobs=(parked,), queue=status.Queue(1, 1), capped=True)
    queued = _replacement(plan.plan(waiting, at(6), config))
    assert (queued.suspended, queued.held_by_operator, queued.replaces) == (True, True, None)
    paused = make_cj(params={"seed": 42, "steps": 20}, suspend=True)
    for jobs in ((parked,), (running,)):
        for caps in (True, False):
            held = _replacement(plan.plan(seen(paused, jobs=jobs, capped=caps), at(6), config))
            assert (held.suspended, held.held_by_operator, held.replaces) == (True, True, None)
    # Kueue's: created suspended for Kueue to admit (a new workload), with no mark of the
    # operator's, whatever held the old one.
    for suspend in (False, True):
        kueue = make_cj(
            params={"seed": 42, "steps": 20}, execution={"queueName": "gpu"}, suspend=suspend
        )
        for jobs in ((parked,), (running,)):
            for_kueue = _replacement(plan.plan(seen(kueue, jobs=jobs), at(6), config))
            assert (for_kueue.suspended, for_kueue.held_by_operator) == (True, False)
            assert for_kueue.replaces is None


def test_a_replacement_starts_once_the_job_it_replaces_is_gone(
    config: settings.OperatorSettings,
) -> None:
    before = make_cj()
    edited = make_cj(params={"seed": 42, "steps": 20})
    old = job_view(config, before, started=None)
    new = _replacement(plan.plan(seen(edited, jobs=(old,), capped=True), at(6), config))
    assert kinds(plan.plan(seen(edited, jobs=(new, old), capped=True), at(7), config)) == [
        "DeleteJob"  # the old one still there: deleted again, nothing else, no write
    ]
    ending = observed.view_job({**old.body, "metadata": {**old.body["metadata"],
                               "deletionTimestamp": ts(7)}})  # fmt: skip
    for jobs in ((new,), (new, ending)):
        decided = plan.plan(seen(edited, jobs=jobs, capped=True), at(8), config)
        start, write = decided.actions[len(jobs) - 1 :]
        assert start == plan.SuspendJob(new.name, False)
        assert not decided.admit  # the slot is the one the job held all along
        # Its status reads the Job as let go: starting, with the new Job named.
        assert isinstance(write, plan.WriteStatus)
        assert write.outcome.status.phase == "Starting"
        started = next(c for c in write.outcome.status.conditions if c.type == "Started")
        assert new.name in started.message
    # The user suspended the job meanwhile: the replacement is held by the operator instead.
    paused = make_cj(params={"seed": 42, "steps": 20}, suspend=True)
    decided = plan.plan(seen(paused, jobs=(new,), capped=True), at(8), config)
    assert decided.actions[0] == plan.SuspendJob(new.name, True)


def test_a_finished_job_waits_for_its_pods_then_lists_them(
    config: settings.OperatorSettings,
) -> None:
    cj = make_cj()
    complete = job_view(
        config, cj, conditions=[{"type": "Complete", "status": "True", "reason": "Done"}]
    )
    running = pod("p1", 6, phase="Running", node="gpu-1", state={"running": {"startedAt": ts(9)}})
    assert plan.plan(seen(cj, jobs=(complete,), pods=(running,)), at(30), config).need is (
        plan.Need.PODS
    )
    waited = seen(cj, jobs=(complete,), pods=(running,), pods_waited=True)
    assert plan.plan(waited, at(30), config).need is plan.Need.LIST
    done = pod(
        "p1",
        6,
        phase="Succeeded",
        node="gpu-1",
        state=terminated(0, 9, 29, report(contract.ExitCode.OK, result=True)),
    )
    decided = plan.plan(seen(cj, jobs=(complete,), pods=(done,)), at(30), config)
    (write,) = decided.actions
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.SUCCEEDED
    assert write.event is not None and write.event.reason == "Completed"


def test_resuming_under_the_cap_waits_for_a_slot_then_unsuspends(
    config: settings.OperatorSettings,
) -> None:
    cj = make_cj()
    parked = observed.view_job(plan.suspended(job_view(config, cj, started=None).body, True))
    assert parked.held_by_operator
    held = plan.plan(seen(cj, jobs=(parked,), queue=status.Queue(1, 1), capped=True), at(9), config)
    assert kinds(held) == ["WriteStatus"]
    assert not held.admit
    free = plan.plan(seen(cj, jobs=(parked,), capped=True), at(9), config)
    assert kinds(free)[0] == "SuspendJob"
    assert free.admit
    suspend = free.actions[0]
    assert isinstance(suspend, plan.SuspendJob) and suspend.suspended is False


def _waited(config: settings.OperatorSettings) -> models.CompositionJob:
    """A job whose Queued record (waiting behind the caps) was written."""
    first = plan.plan(seen(make_cj(), queue=status.Queue(2, 5), capped=True), at(1), config)
    write = first.actions[0]
    assert isinstance(write, plan.WriteStatus)
    return make_cj().model_copy(update={"status": write.outcome.status})


def test_a_job_that_waited_is_admitted_with_its_job_create_alone(
    config: settings.OperatorSettings, tmp_path: pathlib.Path
) -> None:
    waited = _waited(config)
    decided = plan.plan(seen(waited, capped=True), at(30), config)
    assert kinds(decided) == ["CreateJob"]  # its Queued record stands for the intent
    assert decided.admit
    (create,) = decided.actions
    assert isinstance(create, plan.CreateJob)
    assert create.manifest["metadata"]["name"] == names.job_name(
        "portrait", waited.metadata.uid or "", 0
    )
    assert create.manifest["metadata"]["annotations"][builders.SEED_ANNOTATION] == str(
        waited.status.seed
    )
    # The default TTL (an hour) is long enough too.
    hour = make_settings(tmp_path, COMPOSE_JOB_TTL_SECONDS="3600")
    assert kinds(plan.plan(seen(waited, capped=True), at(30), hour)) == ["CreateJob"]
    # A short Job TTL: a restart could not tell a Job deleted by it from one never created.
    short = make_settings(tmp_path, COMPOSE_JOB_TTL_SECONDS="599")
    assert plan.UNRECORDED_CREATE_MIN_TTL_SECONDS == 600
    assert kinds(plan.plan(seen(waited, capped=True), at(30), short)) == [
        "WriteStatus",
        "CreateJob",
    ]
    # The caps were lifted (the operator restarted without them): the intent is written.
    assert kinds(plan.plan(seen(waited), at(30), config)) == ["WriteStatus", "CreateJob"]
    # A job never written as waiting writes its intent, waiting or not.
    assert kinds(plan.plan(seen(make_cj(), capped=True), at(30), config)) == [
        "WriteStatus",
        "CreateJob",
    ]
    # A record that already holds the intent (a restart after it): written again, no patch.
    intent = status.waiting(
        waited, seed=42, queue=None, now=at(20), creating=create.manifest["metadata"]["name"]
    ).status
    recorded = waited.model_copy(update={"status": intent})
    assert kinds(plan.plan(seen(recorded, capped=True, listed=True), at(30), config)) == [
        "WriteStatus",
        "CreateJob",
    ]


def test_a_quietly_admitted_job_shows_its_admission_with_its_start(
    config: settings.OperatorSettings,
) -> None:
    waited = _waited(config)
    job = (job_view(config, waited),)  # created at 5 s
    pending = (pod("p1", 6, node="gpu-1", conditions=[scheduled(7)], state={"waiting": {}}),)
    held = plan.plan(seen(waited, jobs=job, pods=pending, capped=True), at(8), config)
    assert held.actions == ()  # still shown waiting while the Job starts as usual
    assert held.later == pytest.approx(config.starting_progress_seconds - 3)
    assert held.recheck_at == at(66)  # the start deadline still counts from the Job's start
    window = config.starting_progress_seconds
    late = plan.plan(seen(waited, jobs=job, pods=pending, capped=True), at(10 + window), config)
    assert kinds(late) == ["WriteStatus"]  # past the window: at once
    nearly = seen(waited, jobs=job, pods=pending, capped=True)
    assert plan.plan(nearly, at(5 + window - 0.5), config).later == pytest.approx(0.5)
    due = plan.plan(seen(waited, jobs=job, pods=pending, capped=True), at(5 + window), config)
    (write,) = due.actions
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.STARTING
    queued = next(c for c in write.outcome.status.conditions if c.type == "Queued")
    assert (queued.status, queued.reason) == ("False", "Admitted")
    assert queued.last_transition_time == at(5)  # admitted when its Job was created
    assert write.event is None  # admission and progress are in status only
    assert write.outcome.status.timings is not None
    assert write.outcome.status.timings.queued == 5.0  # from the Job's creation
    # The pod runs within the window: one write shows the admission and the start.
    running = (
        pod("p1", 6, phase="Running", node="gpu-1", state={"running": {"startedAt": ts(9)}}),
    )
    started = plan.plan(seen(waited, jobs=job, pods=running, capped=True), at(9), config)
    (write,) = started.actions
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.RUNNING
    assert write.event is not None and write.event.reason == "Running"
    queued = next(c for c in write.outcome.status.conditions if c.type == "Queued")
    assert queued.last_transition_time == at(5)
    # A Job whose creation the operator's clock puts later than now: the decision's time.
    skewed = plan.plan(seen(waited, jobs=job, pods=running, capped=True), at(4), config)
    (write,) = skewed.actions
    assert isinstance(write, plan.WriteStatus)
    queued = next(c for c in write.outcome.status.conditions if c.type == "Queued")
    assert queued.last_transition_time == at(4)
    # The pod ran and finished before anything was written: the end is written at once.
    done = pod(
        "p1",
        6,
        phase="Succeeded",
        node="gpu-1",
        state=terminated(0, 7, 9, report(contract.ExitCode.OK, result=True)),
    )
    ended = seen(waited, jobs=job, pods=(done,), capped=True, listed=True)
    (write,) = plan.plan(ended, at(10), config).actions
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.SUCCEEDED
    # A warning is written at once.
    no_room = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
               "message": "0/3 nodes are available", "lastTransitionTime": ts(7)}  # fmt: skip
    stuck = (pod("p1", 6, conditions=[no_room]),)
    warned = plan.plan(seen(waited, jobs=job, pods=stuck, capped=True), at(8), config)
    (write,) = warned.actions
    assert isinstance(write, plan.WriteStatus) and write.event is not None
    assert write.event.type == "Warning"
    # Kueue's waiting is not the operator's: its admission is written at once.
    kueued = waited.model_copy(
        update={
            "status": waited.status.model_copy(
                update={
                    "conditions": [
                        c.model_copy(update={"reason": "WaitingForAdmission"})
                        if c.type == "Queued"
                        else c
                        for c in waited.status.conditions
                    ]
                }
            )
        }
    )
    assert kinds(plan.plan(seen(kueued, jobs=job, pods=pending), at(8), config)) == ["WriteStatus"]


def test_only_a_plain_wait_behind_the_caps_is_admitted_quietly(
    config: settings.OperatorSettings,
) -> None:
    waited = _waited(config)
    queued = next(c for c in waited.status.conditions if c.type == "Queued")
    name = names.job_name("portrait", waited.metadata.uid or "", 0)
    intent = models.Condition(
        type="Started",
        status="Unknown",
        reason="JobCreated",
        message=f"creating job {name}",
        last_transition_time=at(0),
    )
    # An intent left from an earlier admission whose create failed: the usual rule holds.
    earlier = waited.model_copy(
        update={"status": waited.status.model_copy(
            update={"conditions": [*waited.status.conditions, intent]}
        )}
    )  # fmt: skip
    assert earlier.status.phase == models.Phase.QUEUED
    decided = plan.plan(seen(earlier, capped=True, listed=True), at(30), config)
    assert kinds(decided) == ["WriteStatus", "CreateJob"]
    # Suspended while waiting (the Queued condition as it was), then resumed: the resumption
    # is written before the create.
    pause = models.Condition(
        type="Suspended",
        status="True",
        reason="SuspendedByUser",
        message="suspended by spec.suspend",
        last_transition_time=at(10),
    )
    paused = waited.status.model_copy(
        update={"conditions": [*waited.status.conditions, pause], "phase": "Suspended"}
    )
    assert status.derive_phase(paused.conditions) == models.Phase.SUSPENDED
    assert queued in paused.conditions
    resumed = waited.model_copy(update={"status": paused})
    decided = plan.plan(seen(resumed, capped=True), at(30), config)
    assert kinds(decided) == ["WriteStatus", "CreateJob"]
    write = decided.actions[0]
    assert isinstance(write, plan.WriteStatus) and write.event is not None
    assert "Suspended=False Resumed" in write.event.message


def test_the_spec_digest_at_hand_decides_a_rebuild(config: settings.OperatorSettings) -> None:
    before = make_cj()
    edited = make_cj(params={"seed": 42, "steps": 20})
    job = (job_view(config, before),)
    told = builders.spec_hash(edited.spec)
    assert kinds(plan.plan(seen(edited, jobs=job, spec_hash=told), at(6), config)) == [
        "CreateJob",
        "DeleteJob",
    ]
    # The digest the reconciler passes is the one compared (it kept it with the spec).
    stale = builders.spec_hash(before.spec)
    assert "CreateJob" not in kinds(
        plan.plan(seen(edited, jobs=job, spec_hash=stale), at(6), config)
    )


def test_a_refused_create_is_shown_and_tried_again_without_a_write(
    config: settings.OperatorSettings,
) -> None:
    name = names.job_name("portrait", make_cj().metadata.uid or "", 0)
    intent = status.waiting(make_cj(), seed=42, queue=None, now=at(0), creating=name)
    cj = make_cj().model_copy(update={"status": intent.status})
    answer = 'Forbidden: jobs.batch "x" is forbidden: exceeded quota'
    refused = status.waiting(cj, seed=42, queue=None, now=at(1), creating=name, refused=answer)
    shown = refused.status
    assert shown.phase == models.Phase.STARTING
    started = next(c for c in shown.conditions if c.type == "Started")
    assert (started.status, started.reason) == ("Unknown", "JobCreateFailed")
    assert started.last_transition_time == at(0)  # still the intent's time
    assert shown.message == f"creating job {name} was refused, trying again: {answer}"
    event = status.event_for(intent.status, refused)
    assert event is not None and (event.type, event.reason) == ("Warning", "JobCreateFailed")
    # Tried again, long after the job TTL: the refusal proves no Job was made, so it is
    # created, and the refusal record stays as it is (no write before the create).
    again = cj.model_copy(update={"status": shown})
    assert plan.plan(seen(again), at(5000), config).need is plan.Need.LIST
    decided = plan.plan(seen(again, listed=True), at(5000), config)
    assert kinds(decided) == ["WriteStatus", "CreateJob"]
    write = decided.actions[0]
    assert isinstance(write, plan.WriteStatus)
    assert status.to_patch(write.outcome.status, shown) is None
    # A plain intent that old is another story: the Job may have run and been deleted.
    lost = plan.plan(seen(cj, listed=True), at(5000), config)
    assert kinds(lost) == ["WriteStatus"]
    assert lost.actions[0].outcome.status.phase == models.Phase.FAILED  # type: ignore[union-attr]
    # Another Job's refusal (a new name) is not carried over.
    other = status.waiting(again, seed=42, queue=None, now=at(9), creating=name + "x").status
    fresh = next(c for c in other.conditions if c.type == "Started")
    assert (fresh.reason, fresh.message) == ("JobCreated", f"creating job {name}x")


def test_a_refused_quiet_admission_is_shown_and_waits_again_with_its_record(
    config: settings.OperatorSettings,
) -> None:
    waited = _waited(config)
    name = names.job_name("portrait", waited.metadata.uid or "", 0)
    refused = status.waiting(
        waited, seed=42, queue=None, now=at(30), creating=name, refused="403 Forbidden: no"
    ).status
    assert refused.phase == models.Phase.STARTING
    queued = next(c for c in refused.conditions if c.type == "Queued")
    assert (queued.status, queued.reason) == ("False", "Admitted")
    assert refused.queue_position is None
    # Back in the queue (the slot went to another job): waiting, with the refusal kept.
    back = waited.model_copy(update={"status": refused})
    decided = plan.plan(
        seen(back, queue=status.Queue(1, 1), capped=True, listed=True), at(40), config
    )
    write = decided.actions[0]
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.QUEUED
    kept = status.intent(write.outcome.status.conditions)
    assert kept is not None and kept.reason == "JobCreateFailed"
    # Admitted again: not quietly (a refusal is on record), and no write before the create.
    requeued = back.model_copy(update={"status": write.outcome.status})
    again = plan.plan(seen(requeued, capped=True, listed=True), at(50), config)
    assert kinds(again) == ["WriteStatus", "CreateJob"]
    write = again.actions[0]
    assert isinstance(write, plan.WriteStatus)
    assert write.outcome.status.phase == models.Phase.STARTING
    assert status.intent(write.outcome.status.conditions).reason == "JobCreateFailed"  # type: ignore[union-attr]


def test_a_resumed_jobs_second_admission_is_timed_by_the_decision(
    config: settings.OperatorSettings,
) -> None:
    cj = make_cj()
    parked = observed.view_job(plan.suspended(job_view(config, cj, started=None).body, True))
    held = plan.plan(seen(cj, jobs=(parked,), queue=status.Queue(1, 1), capped=True), at(9), config)
    write = held.actions[0]
    assert isinstance(write, plan.WriteStatus)
    waiting = cj.model_copy(update={"status": write.outcome.status})
    queued = next(c for c in waiting.status.conditions if c.type == "Queued")
    assert (queued.status, queued.last_transition_time) == ("True", at(9))
    # Its Job was created at 5 s, before it waited again: that is not this admission's time.
    free = plan.plan(seen(waiting, jobs=(parked,), capped=True), at(20), config)
    write = next(a for a in free.actions if isinstance(a, plan.WriteStatus))
    queued = next(c for c in write.outcome.status.conditions if c.type == "Queued")
    assert (queued.status, queued.last_transition_time) == ("False", at(20))


def test_a_job_that_waited_for_a_pools_worker_writes_its_intent_as_a_job(
    config: settings.OperatorSettings,
) -> None:
    """A pool job whose pool went (its profile's default pool was dropped, say) runs as a Job:
    it waited for a worker, not behind the caps, so its Queued record does not stand for the
    intent."""
    waited = _waited(config)
    for_worker = waited.status.model_copy(
        update={
            "conditions": [
                c.model_copy(update={"reason": "WaitingForWorker"}) if c.type == "Queued" else c
                for c in waited.status.conditions
            ]
        }
    )
    cj = waited.model_copy(update={"status": for_worker})
    assert kinds(plan.plan(seen(cj, capped=True), at(30), config)) == ["WriteStatus", "CreateJob"]


def test_a_job_created_in_the_second_it_began_to_wait_is_admitted_in_that_second(
    config: settings.OperatorSettings,
) -> None:
    """The Job's creation is the admission's time when it is not before the Queued record's
    (creation times have one-second resolution: the same second is this admission's)."""
    waited = _waited(config)  # Queued at 1 s
    body = dict(job_view(config, waited).body)
    body["metadata"] = {**body["metadata"], "creationTimestamp": ts(1)}
    job = (observed.view_job(body),)
    running = (
        pod("p1", 2, phase="Running", node="gpu-1", state={"running": {"startedAt": ts(3)}}),
    )
    (write,) = plan.plan(seen(waited, jobs=job, pods=running, capped=True), at(4), config).actions
    assert isinstance(write, plan.WriteStatus)
    queued = next(c for c in write.outcome.status.conditions if c.type == "Queued")
    assert (queued.status, queued.last_transition_time) == ("False", at(1))
