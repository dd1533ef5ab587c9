"""The edges of the status mapping: which changes are transitions, which post Events and of
what type, exactly when the start deadline falls due, and durations that never go negative."""

from __future__ import annotations

import pathlib
from typing import Any

from compose_api import models
from compose_operator import status
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_status import at, cond, job, pod, scheduled, ts

CT = models.ConditionType


def _conditions(*items: tuple[str, str, str]) -> list[models.Condition]:
    return [
        models.Condition(
            type=kind, status=value, reason=reason, message="", last_transition_time=at(0)
        )
        for kind, value, reason in items
    ]


def test_a_change_of_reason_alone_is_a_transition() -> None:
    before = _conditions(("Started", "True", "Scheduling"))
    merged, transitions = status.merge_conditions(
        before, [status.Wanted(CT.STARTED, status.TRUE, "ImagePulling")], now=at(5), generation=1
    )
    assert [(t.type, t.status, t.reason) for t in transitions] == [
        ("Started", "True", "ImagePulling")
    ]
    # Same status: the transition time stays.
    assert merged[0].last_transition_time == at(0)
    _, none = status.merge_conditions(
        before, [status.Wanted(CT.STARTED, status.TRUE, "Scheduling")], now=at(5), generation=1
    )
    assert none == []


def _outcome(
    tmp_path: pathlib.Path,
    previous: models.CompositionJobStatus,
    now: float,
    *pods: dict[str, Any],
) -> status.Outcome:
    cj = make_cj().model_copy(update={"status": previous})
    return status.compute(
        cj, job(), list(pods), now=at(now), settings=make_settings(tmp_path), seed=42
    )


def test_unschedulable_posts_a_warning_event_even_within_one_phase(tmp_path: pathlib.Path) -> None:
    scheduling = _outcome(tmp_path, models.CompositionJobStatus(), 7, pod("p1", 6))
    unschedulable = _outcome(
        tmp_path,
        scheduling.status,
        20,
        pod("p1", 6, conditions=[cond("PodScheduled", "Unschedulable", "0/3 nodes", "False")]),
    )
    assert unschedulable.status.phase == scheduling.status.phase == models.Phase.STARTING
    event = status.event_for(scheduling.status, unschedulable)
    assert event is not None
    assert (event.type, event.reason) == ("Warning", "Unschedulable")
    assert "no GPU capacity" in event.message


def test_progress_within_a_phase_posts_no_event(tmp_path: pathlib.Path) -> None:
    scheduling = _outcome(tmp_path, models.CompositionJobStatus(), 7, pod("p1", 6))
    pulling = _outcome(
        tmp_path,
        scheduling.status,
        9,
        pod("p1", 6, node="gpu-1", conditions=[scheduled(8)], state={"waiting": {}}),
    )
    assert [t.reason for t in pulling.transitions] == ["ImagePulling"]
    assert status.event_for(scheduling.status, pulling) is None
    # The first status of a job always posts one: it is the "created" Event.
    first = status.event_for(models.CompositionJobStatus(), scheduling)
    assert first is not None
    assert first.type == "Normal"


def test_the_start_deadline_is_exceeded_only_after_it_has_passed(tmp_path: pathlib.Path) -> None:
    # The Job started at 5 s with a 60 s start deadline: at 65 s it is due, not yet exceeded.
    on_time = _outcome(tmp_path, models.CompositionJobStatus(), 65, pod("p1", 6))
    assert on_time.status.phase == models.Phase.STARTING
    assert not on_time.stop_job
    late = _outcome(tmp_path, models.CompositionJobStatus(), 66, pod("p1", 6))
    assert late.status.phase == models.Phase.FAILED
    assert late.stop_job
    # The timer fires at the first second past the deadline.
    cj = make_cj()
    assert status.start_deadline_at(cj, job(), on_time) == at(66)
    assert status.start_deadline_at(cj, job(), late) is None  # terminal: nothing to wait for


def test_durations_never_go_negative(tmp_path: pathlib.Path) -> None:
    # Clock skew between nodes: the pod's scheduling time is before its creation.
    skewed = pod("p1", 10, node="gpu-1", conditions=[scheduled(8)], state={"waiting": {}})
    skewed["metadata"]["creationTimestamp"] = ts(10)
    outcome = _outcome(tmp_path, models.CompositionJobStatus(), 12, skewed)
    assert outcome.status.timings is not None
    assert outcome.status.timings.scheduling == 0.0
