"""What the reconciler's entry points set going: the sweep reconciles only what failed or waits
on time, a deleted job or a finished Job admits the next waiting job, an operator that stops
standing by reconciles every active job, and a suspension frees its slot at once.

The reconciles themselves are recorded, not run (``tests/operator/cluster`` runs them on the
real control plane): these pin which jobs each entry point picks.
"""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any, cast

import pytest

from compose_api import models
from compose_operator import handlers, kubeapi, names, plan, reconciler
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_reconciler_timing import add_jobs

NAMESPACE = "studio"


class Api:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []

    async def patch_job(self, namespace: str, name: str, patch: Any) -> None:
        self.requests.append(("patch job", name, patch))


def capped(
    tmp_path: pathlib.Path, count: int
) -> tuple[reconciler.Reconciler, Api, list[str], list[str]]:
    """``count`` jobs under a namespace cap of 1, the first admitted; the reconciles the
    operator starts, and the admissions, are recorded (in that order of lists)."""
    api = Api()
    jobs = reconciler.Reconciler(
        make_settings(tmp_path, COMPOSE_MAX_RUNNING_PER_NAMESPACE="1"),
        cast(kubeapi.KubeClient, api),
    )
    add_jobs(jobs, count)
    jobs.inventory.admit("u-0")
    reconciled: list[str] = []
    admitted: list[str] = []

    async def reconcile(uid: str) -> None:
        reconciled.append(uid)

    async def admit(uid: str) -> None:
        admitted.append(uid)

    jobs.reconcile = reconcile  # type: ignore[method-assign]
    jobs._admit = admit  # type: ignore[method-assign]
    jobs._spawn = lambda uid, after=0.0: reconciled.append(uid)  # type: ignore[method-assign]
    return jobs, api, reconciled, admitted


def written(jobs: reconciler.Reconciler, uid: str, phase: models.Phase) -> None:
    status = models.CompositionJobStatus(phase=phase)
    jobs.inventory.record_write(uid, status, "5")


def job_of(uid: str, *conditions: str, suspended: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"job-{uid}",
        "namespace": NAMESPACE,
        "labels": {names.UID_LABEL: uid},
        "creationTimestamp": "2026-01-02T03:05:00Z",
    }
    if suspended:
        meta["annotations"] = {names.SUSPENDED_ANNOTATION: "true"}
    return {
        "metadata": meta,
        "spec": {"suspend": suspended},
        "status": {"conditions": [{"type": c, "status": "True"} for c in conditions]},
    }


async def test_a_sweep_reconciles_what_failed_or_waits_on_time_and_nothing_else(
    tmp_path: pathlib.Path,
) -> None:
    jobs, _, reconciled, _ = capped(tmp_path, 6)
    written(jobs, "u-0", models.Phase.STARTING)  # its start deadline may be due
    written(jobs, "u-1", models.Phase.RUNNING)
    written(jobs, "u-2", models.Phase.QUEUED)
    written(jobs, "u-3", models.Phase.SUSPENDED)
    written(jobs, "u-4", models.Phase.RUNNING)
    jobs._failed.add("u-4")  # its last reconcile raised
    # u-5: never written (its first reconcile has not happened)
    await jobs.sweep()
    assert reconciled == ["u-0", "u-4", "u-5"]


async def test_a_sweep_admits_what_the_queue_admits(tmp_path: pathlib.Path) -> None:
    jobs, _, _, admitted = capped(tmp_path, 3)
    for uid in ("u-1", "u-2"):
        written(jobs, uid, models.Phase.QUEUED)
    jobs.settings = jobs.settings.model_copy(update={"queue_position_refresh_seconds": 0})
    await jobs.sweep()
    await asyncio.sleep(0)
    assert admitted == []  # the slot is taken
    jobs.inventory.forget("u-0")  # gone while no event said so (the sweep is the safety net)
    await jobs.sweep()
    await asyncio.sleep(0)
    assert admitted == ["u-1"]


async def test_a_sweep_rewrites_the_moved_positions_that_are_due(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs, _, _, admitted = capped(tmp_path, 3)
    for position, uid in enumerate(("u-1", "u-2"), start=5):  # written further back
        jobs.inventory.record_write(
            uid,
            models.CompositionJobStatus(phase=models.Phase.QUEUED, queue_position=position),
            "5",
        )
    await jobs.sweep()
    await asyncio.sleep(0)
    assert sorted(admitted) == ["u-1", "u-2"]  # reconciled to write their places (1 and 2)
    assert not [r for r in caplog.records if "missed changes" in r.getMessage()]


async def test_a_deleted_job_admits_the_next_and_leaves_no_timer(tmp_path: pathlib.Path) -> None:
    jobs, _, _, admitted = capped(tmp_path, 3)
    jobs.later("u-0", 30)
    jobs._failed.add("u-0")
    timer = jobs._deferred["u-0"]
    jobs.forget({"metadata": {"uid": "u-0", "namespace": NAMESPACE, "name": "job-0"}})
    await asyncio.sleep(0)
    assert admitted == ["u-1"]
    assert "u-0" not in jobs._deferred and timer.cancelled()
    assert "u-0" not in jobs._failed
    assert "u-0" not in jobs.inventory.tracked


async def test_a_finished_job_frees_its_slot_and_a_running_one_does_not(
    tmp_path: pathlib.Path,
) -> None:
    jobs, _, _, admitted = capped(tmp_path, 3)
    assert jobs.child_changed("job", job_of("u-0"), deleted=False) == "u-0"
    await asyncio.sleep(0)
    assert admitted == []  # a live Job holds the slot
    # The same Job again (its pod counters aside): nothing a decision reads has changed.
    same = job_of("u-0")
    same["status"]["active"] = 1
    assert jobs.child_changed("job", same, deleted=False) is None
    assert jobs.child_changed("job", job_of("u-0", "Complete"), deleted=False) == "u-0"
    await asyncio.sleep(0)
    assert admitted == ["u-1"]  # the Job controller finished it: the next job starts


async def test_a_pod_event_costs_no_admission_decision(tmp_path: pathlib.Path) -> None:
    jobs, _, _, admitted = capped(tmp_path, 2)
    jobs.inventory.forget("u-0")  # a free slot that no event has offered yet
    pod = {"metadata": {"name": "p1", "namespace": NAMESPACE, "labels": {names.UID_LABEL: "u-1"}},
           "status": {"phase": "Pending"}}  # fmt: skip
    assert jobs.child_changed("pod", pod, deleted=False) == "u-1"
    assert jobs.child_changed("pod", pod, deleted=True) == "u-1"
    await asyncio.sleep(0)
    assert admitted == []  # only a Job's end, or a job's, frees a slot


async def test_a_deleted_job_object_frees_its_slot(tmp_path: pathlib.Path) -> None:
    jobs, _, _, admitted = capped(tmp_path, 2)
    jobs.inventory.release("u-0")  # its slot held by its Job alone, as after a restart
    jobs.child_changed("job", job_of("u-0"), deleted=False)
    await asyncio.sleep(0)
    assert admitted == []
    assert jobs.child_changed("job", job_of("u-0"), deleted=True) == "u-0"
    await asyncio.sleep(0)
    # The slot is free, and the oldest waiting job is the one whose Job went: its reconcile
    # decides whether that Job was lost or is made again.
    assert admitted == ["u-0"]


async def test_standing_by_and_back_reconciles_every_active_job(tmp_path: pathlib.Path) -> None:
    jobs, _, reconciled, admitted = capped(tmp_path, 3)
    jobs.set_paused(True)
    assert reconciled == [] and jobs.paused
    jobs.set_paused(True)  # still standing by: nothing to catch up on
    assert reconciled == []
    jobs.inventory.forget("u-0")  # what happened while it stood by
    jobs.set_paused(False)
    await asyncio.sleep(0)
    assert sorted(reconciled) == ["u-1", "u-2"]
    assert admitted == ["u-1"]  # and the queue admits as it now stands
    reconciled.clear()
    jobs.set_paused(False)  # acting already: no reconcile of everything
    assert reconciled == []


async def test_a_suspension_frees_the_slot_before_the_watch_shows_it(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, _, admitted = capped(tmp_path, 2)
    jobs.child_changed("job", job_of("u-0"), deleted=False)
    body = jobs.inventory.body("u-0") or {}
    body["spec"]["suspend"] = True  # the user suspends it: the plan suspends its Job
    jobs.inventory.put(body)
    await jobs._set_suspended("u-0", NAMESPACE, plan.SuspendJob("job-u-0", True))
    await asyncio.sleep(0)
    assert api.requests == [("patch job", "job-u-0", plan.suspend_patch(True))]
    assert jobs.inventory.job("u-0", "job-u-0").suspended  # type: ignore[union-attr]
    assert admitted == ["u-1"]


async def test_a_resume_is_seen_by_the_queue_at_once_and_admits_nobody(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, _, admitted = capped(tmp_path, 2)
    jobs.child_changed("job", job_of("u-0", suspended=True), deleted=False)
    await jobs._set_suspended("u-0", NAMESPACE, plan.SuspendJob("job-u-0", False))
    await asyncio.sleep(0)
    assert api.requests == [("patch job", "job-u-0", plan.suspend_patch(False))]
    assert not jobs.inventory.job("u-0", "job-u-0").suspended  # type: ignore[union-attr]
    assert jobs.inventory.holds_slot("u-0")  # running again before the watch says so
    assert admitted == []


async def test_a_resumed_job_keeps_its_slot_when_a_late_event_still_shows_it_suspended(
    tmp_path: pathlib.Path,
) -> None:
    jobs, _, _, admitted = capped(tmp_path, 2)
    held = job_of("u-0", suspended=True)
    jobs.child_changed("job", held, deleted=False)
    await jobs._set_suspended("u-0", NAMESPACE, plan.SuspendJob("job-u-0", False))
    jobs.child_changed("job", held, deleted=False)  # the watch's event from before the resume
    await asyncio.sleep(0)
    assert jobs.inventory.holds_slot("u-0")
    assert admitted == []


async def test_a_run_of_child_events_costs_one_reconcile_a_new_job_none_of_the_wait(
    tmp_path: pathlib.Path,
) -> None:
    jobs = reconciler.Reconciler(make_settings(tmp_path), cast(kubeapi.KubeClient, Api()))
    runtime = handlers.Runtime(settings=jobs.settings, reconciler=jobs)
    loop = asyncio.get_running_loop()
    started: list[tuple[str, float]] = []

    async def reconcile(uid: str) -> None:
        jobs._poked.discard(uid)
        started.append((uid, loop.time()))

    jobs.reconcile = reconcile  # type: ignore[method-assign]
    body = make_cj("job-0").model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"]["uid"] = "u-0"
    begun = loop.time()
    handlers.composition_job_event(runtime, "ADDED", body)
    await asyncio.sleep(0.01)
    assert [uid for uid, _ in started] == ["u-0"]  # a new job: at once
    assert started[0][1] - begun < reconciler.CHILD_EVENTS_SECONDS

    pod = {"metadata": {"name": "p1", "namespace": NAMESPACE, "labels": {names.UID_LABEL: "u-0"}},
           "status": {"phase": "Pending"}}  # fmt: skip
    begun = loop.time()
    handlers.pod_event(runtime, "ADDED", pod)
    pod["status"] = {"phase": "Running"}
    handlers.pod_event(runtime, "MODIFIED", pod)
    handlers.job_event(runtime, "ADDED", job_of("u-0"))
    await asyncio.sleep(0.3)  # well within the time a person watching would notice
    assert [uid for uid, _ in started] == ["u-0", "u-0"]  # one for the three events
    assert started[1][1] - begun >= reconciler.CHILD_EVENTS_SECONDS
