"""The reconciler's own decisions of time: the wait for the pod watch, the time since a job's
last write, the start-deadline recheck, the earliest of two timers, the queue-depth gauge, and
which waiting jobs a sweep rewrites.

The reconciler runs as in the operator, with the monotonic clock and the wall clock in the
test's hands. Its client is an in-memory stand-in that records requests and keeps the objects
it was given (a status patch merges into the stored status). The same paths on the real
control plane are in ``tests/operator/cluster``; these pin the figures that a cluster run
cannot time exactly.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import pathlib
from collections.abc import Mapping
from typing import Any, cast

import pytest

from compose_api import kube, models
from compose_operator import kubeapi, names, plan, reconciler
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_status import succeeded_pod

NAMESPACE = "studio"
START = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
TIME = "%Y-%m-%dT%H:%M:%SZ"


class Api:
    """The requests the reconciler makes, and the objects a list would return."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.pods: list[dict[str, Any]] = []
        self.jobs: list[dict[str, Any]] = []
        self.version = 10

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, resource_version: Any
    ) -> dict[str, Any]:
        self.requests.append(f"patch status {patch.get('phase')}")
        self.version += 1
        return {"metadata": {"resourceVersion": str(self.version)}}

    async def create_job(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self.requests.append("create job")
        job = copy.deepcopy(dict(manifest))
        job["metadata"]["creationTimestamp"] = START.strftime(TIME)
        self.jobs.append(job)
        return job

    async def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.requests.append("list jobs")
        return copy.deepcopy(self.jobs)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.requests.append("list pods")
        return copy.deepcopy(self.pods)

    async def node_labels(self, name: str) -> dict[str, str]:
        return {}

    async def post_event(self, body: Any, **_: Any) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.monotonic = 2.0  # early in the process's life: any value is a monotonic time
        self.wall = START

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += datetime.timedelta(seconds=seconds)


def operator(tmp_path: pathlib.Path, **spec: Any) -> tuple[reconciler.Reconciler, Api, Clock, str]:
    """A reconciler with one new job in its inventory."""
    api, clock = Api(), Clock()
    jobs = reconciler.Reconciler(
        make_settings(tmp_path),
        cast(kubeapi.KubeClient, api),
        clock=lambda: clock.wall,
        monotonic=lambda: clock.monotonic,
    )
    cj = make_cj(**spec)
    body = cj.model_dump(mode="json", by_alias=True, exclude_none=True)
    uid = jobs.inventory.put(body)
    return jobs, api, clock, uid


def add_jobs(jobs: reconciler.Reconciler, count: int, **spec: Any) -> list[str]:
    """``count`` new jobs in the reconciler's inventory, uids ``u-0``... created a second
    apart in that order."""
    uids = []
    for index in range(count):
        body = make_cj(f"job-{index}", **spec).model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
        created = START + datetime.timedelta(seconds=index)
        body["metadata"].update(uid=f"u-{index}", creationTimestamp=created.strftime(TIME))
        uids.append(jobs.inventory.put(body))
    return uids


def due_in(jobs: reconciler.Reconciler, uid: str) -> float:
    """Seconds until the job's next timed reconcile."""
    handle = jobs._deferred[uid]
    return handle.when() - asyncio.get_running_loop().time()


def finished(api: Api, jobs: reconciler.Reconciler, uid: str) -> dict[str, Any]:
    """The job's Job complete, with its pod succeeded (as a list from the API server shows)."""
    job = copy.deepcopy(api.jobs[-1])
    job["status"] = {
        "startTime": "2026-01-02T03:04:06Z",
        "completionTime": "2026-01-02T03:05:06Z",
        "succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True", "reason": "Completed"}],
    }
    api.jobs = [job]
    name = job["metadata"]["name"]
    done = succeeded_pod()
    done["metadata"].update(namespace=NAMESPACE, labels={names.UID_LABEL: uid, "job-name": name})
    api.pods = [done]
    return job


def running_copy(done: dict[str, Any]) -> dict[str, Any]:
    running = copy.deepcopy(done)
    running["metadata"]["name"] = "p1"
    running["status"]["phase"] = "Running"
    running["status"]["containerStatuses"] = [
        {"name": "compose", "state": {"running": {"startedAt": "2026-01-02T03:04:25Z"}}}
    ]
    return running


async def test_a_finished_job_waits_for_its_pods_events_for_the_catch_up_time(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, clock, uid = operator(tmp_path)
    await jobs.reconcile(uid)  # the intent and the Job, sent together
    assert sorted(api.requests) == ["create job", "patch status Starting"]
    job = finished(api, jobs, uid)
    jobs.inventory.put_child("job", job, deleted=False)
    jobs.inventory.put_child("pod", running_copy(api.pods[0]), deleted=False)  # the watch lags
    api.requests.clear()

    await jobs.reconcile(uid)
    assert api.requests == []  # nothing decided on a pod that may not be final
    assert plan.POD_CATCH_UP_SECONDS - 0.1 < due_in(jobs, uid) <= plan.POD_CATCH_UP_SECONDS

    clock.advance(plan.POD_CATCH_UP_SECONDS - 1)  # another event before the wait is over
    await jobs.reconcile(uid)
    assert api.requests == []
    assert 0.9 < due_in(jobs, uid) <= 1.0  # the same wait, not a new one

    clock.advance(1)
    await jobs.reconcile(uid)  # the wait is over: the pods are listed from the API server
    assert api.requests == ["list jobs", "list pods", "patch status Succeeded"]
    assert jobs.inventory.is_finished(uid)
    assert uid not in jobs._awaiting_pods


async def test_a_pod_wait_long_over_lists_at_once(tmp_path: pathlib.Path) -> None:
    jobs, api, clock, uid = operator(tmp_path)
    await jobs.reconcile(uid)
    jobs.inventory.put_child("job", finished(api, jobs, uid), deleted=False)
    jobs.inventory.put_child("pod", running_copy(api.pods[0]), deleted=False)
    await jobs.reconcile(uid)  # the wait begins
    api.requests.clear()
    clock.advance(plan.POD_CATCH_UP_SECONDS + 7)  # the timer ran late (a busy loop)
    await jobs.reconcile(uid)
    assert api.requests == ["list jobs", "list pods", "patch status Succeeded"]


async def test_a_plan_sees_the_time_since_the_jobs_last_write(tmp_path: pathlib.Path) -> None:
    jobs, _, clock, uid = operator(tmp_path)
    body = jobs.inventory.body(uid) or {}
    first = await jobs._observe(uid, body, listed=None, pods_waited=False)
    assert first.since_last_write is None  # never written
    await jobs.reconcile(uid)
    clock.advance(3)
    later = await jobs._observe(uid, body, listed=None, pods_waited=False)
    assert later.since_last_write == pytest.approx(3.0)


async def test_a_starting_job_is_reconciled_when_its_start_deadline_falls_due(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, clock, uid = operator(tmp_path, execution={"startDeadlineSeconds": 120})
    await jobs.reconcile(uid)
    job = copy.deepcopy(api.jobs[-1])
    job["status"] = {"active": 1}
    jobs.inventory.put_child("job", job, deleted=False)
    clock.advance(30)
    await jobs.reconcile(uid)
    # The Job was created at START: the deadline falls 121 s after (the first whole second
    # past it), 91 s from now.
    assert 90.5 < due_in(jobs, uid) <= 91.0


async def test_the_earliest_timer_wins(tmp_path: pathlib.Path) -> None:
    jobs, _, _, uid = operator(tmp_path)
    jobs.later(uid, 10)
    assert 9.9 < due_in(jobs, uid) <= 10
    jobs.later(uid, 20)  # later than the one set: kept as it is
    assert 9.9 < due_in(jobs, uid) <= 10
    jobs.later(uid, 10)  # the same time: kept
    assert 9.9 < due_in(jobs, uid) <= 10
    jobs.later(uid, 5)  # sooner: replaces it
    assert 4.9 < due_in(jobs, uid) <= 5


def waiting(tmp_path: pathlib.Path, count: int) -> tuple[reconciler.Reconciler, Clock, list[str]]:
    """``count`` jobs, created a second apart, behind a namespace cap of 1 that one more job
    holds (admitted, its Job created)."""
    clock = Clock()
    jobs = reconciler.Reconciler(
        make_settings(tmp_path, COMPOSE_MAX_RUNNING_PER_NAMESPACE="1"),
        cast(kubeapi.KubeClient, Api()),
        clock=lambda: clock.wall,
        monotonic=lambda: clock.monotonic,
    )
    uids = add_jobs(jobs, count + 1)
    jobs.inventory.admit(uids[0])
    return jobs, clock, uids[1:]


def gauge(jobs: reconciler.Reconciler) -> float:
    return float(jobs.metrics.queue_depth.labels(NAMESPACE)._value.get())


async def test_the_queue_depth_gauge_counts_the_jobs_left_waiting(tmp_path: pathlib.Path) -> None:
    # 4 waiting and 1 admitted: 3 left, where 4 ^ 1 would be 5 and 4 >> 1 would be 2.
    jobs, _, uids = waiting(tmp_path, 4)
    assert jobs.admitted(NAMESPACE) == frozenset()  # the one slot is taken
    assert gauge(jobs) == 4
    jobs.inventory.forget("u-0")  # the job holding the slot is deleted
    assert jobs.admitted(NAMESPACE) == frozenset({uids[0]})
    assert gauge(jobs) == 3  # the admitted job no longer counts


def written_queued(jobs: reconciler.Reconciler, uid: str, position: int) -> None:
    status = models.CompositionJobStatus(phase=models.Phase.QUEUED, queue_position=position)
    jobs.inventory.record_write(uid, status, "5")


async def test_a_sweep_rewrites_a_moved_position_only_once_its_refresh_is_due(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, clock, uids = waiting(tmp_path, 4)
    admitted: list[str] = []

    async def admit(uid: str) -> None:
        admitted.append(uid)

    monkeypatch.setattr(jobs, "_admit", admit)
    refresh = jobs.settings.queue_position_refresh_seconds
    for position, uid in enumerate(uids, start=2):  # written one place further back
        written_queued(jobs, uid, position)
    jobs._last_write = {
        uids[0]: clock.monotonic,
        uids[1]: clock.monotonic - refresh,
        uids[3]: clock.monotonic - refresh - 5,
    }
    # uids[2]: never written by this process (after a restart): due
    jobs._kick_queue(NAMESPACE, refresh_positions=True)
    await asyncio.sleep(0)
    assert sorted(admitted) == sorted(uids[1:])  # at the refresh and past it; not before it

    admitted.clear()
    written_queued(jobs, uids[2], 3)  # their positions are right: nothing to rewrite
    written_queued(jobs, uids[3], 4)
    jobs._kicked.clear()
    jobs._last_write[uids[0]] = clock.monotonic - refresh + 1
    jobs._kick_queue(NAMESPACE, refresh_positions=True)
    await asyncio.sleep(0)
    assert admitted == [uids[1]]


async def test_a_job_far_back_in_the_queue_is_not_rewritten_at_its_own_position(
    tmp_path: pathlib.Path,
) -> None:
    jobs, clock, uids = waiting(tmp_path, 300)
    kicked: list[str] = []

    async def admit(uid: str) -> None:
        kicked.append(uid)

    jobs._admit = admit  # type: ignore[method-assign]
    refresh = jobs.settings.queue_position_refresh_seconds
    for position, uid in enumerate(uids, start=1):  # every position as written
        written_queued(jobs, uid, position)
        jobs._last_write[uid] = clock.monotonic - refresh
    jobs._kick_queue(NAMESPACE, refresh_positions=True)
    await asyncio.sleep(0)
    assert kicked == []


async def test_a_job_being_admitted_is_not_admitted_twice(tmp_path: pathlib.Path) -> None:
    jobs, _, uids = waiting(tmp_path, 2)
    kicked: list[str] = []

    async def admit(uid: str) -> None:
        kicked.append(uid)

    jobs._admit = admit  # type: ignore[method-assign]
    jobs._kicked.add(uids[1])  # its admission is under way (not one the queue admits now)
    jobs.inventory.forget("u-0")
    jobs._kick_queue(NAMESPACE)
    await asyncio.sleep(0)
    assert kicked == [uids[0]]
    jobs._kick_queue(NAMESPACE)  # the first one's admission has not ended yet
    await asyncio.sleep(0)
    assert kicked == [uids[0]]


async def test_without_a_refresh_a_sweep_rewrites_no_position(tmp_path: pathlib.Path) -> None:
    jobs, _, uids = waiting(tmp_path, 2)
    jobs.settings = jobs.settings.model_copy(update={"queue_position_refresh_seconds": 0})
    kicked: list[str] = []

    async def admit(uid: str) -> None:
        kicked.append(uid)

    jobs._admit = admit  # type: ignore[method-assign]
    for position, uid in enumerate(uids, start=5):
        written_queued(jobs, uid, position)
    jobs._kick_queue(NAMESPACE, refresh_positions=True)
    await asyncio.sleep(0)
    assert kicked == []


async def test_a_failed_reconcile_is_counted_and_left_to_the_sweep(tmp_path: pathlib.Path) -> None:
    jobs, api, _, uid = operator(tmp_path)

    async def create_job(manifest: Mapping[str, Any]) -> dict[str, Any]:
        raise kube.KubeError(500, "InternalError", "etcd timeout")

    working = api.create_job
    api.create_job = create_job  # type: ignore[method-assign]
    await jobs.reconcile(uid)  # the error is not raised to the caller
    errors = jobs.metrics.reconcile_errors.labels("KubeError")
    assert errors._value.get() == 1
    assert uid in jobs._failed
    api.create_job = working  # type: ignore[method-assign]
    await jobs.reconcile(uid)
    assert uid not in jobs._failed
    assert errors._value.get() == 1


async def test_a_deleted_job_is_not_reconciled(tmp_path: pathlib.Path) -> None:
    jobs, api, _, uid = operator(tmp_path)
    body = jobs.inventory.body(uid) or {}
    body["metadata"]["deletionTimestamp"] = "2026-01-02T03:04:06Z"
    jobs.inventory.put(body)
    await jobs.reconcile(uid)
    assert api.requests == []
    jobs.set_paused(True)  # standing by for a peer: nothing is done either
    del body["metadata"]["deletionTimestamp"]
    jobs.inventory.put(body)
    await jobs.reconcile(uid)
    assert api.requests == []


async def test_a_failed_plan_that_admitted_nothing_frees_no_slot(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, api, _, uid = operator(tmp_path)

    async def create_job(*_: Any, **__: Any) -> dict[str, Any]:
        raise kube.KubeError(500, "InternalError", "etcd timeout")

    monkeypatch.setattr(api, "create_job", create_job)  # no Job made, and no slot was taken
    kicked: list[str] = []
    monkeypatch.setattr(jobs, "_kick_queue", kicked.append)
    await jobs.reconcile(uid)
    assert uid in jobs._failed
    assert kicked == []


async def test_a_refused_create_is_logged_once_per_answer(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs, api, _, uid = operator(tmp_path)

    async def create_job(manifest: Mapping[str, Any]) -> dict[str, Any]:
        api.requests.append("create job")
        raise kube.Forbidden(403, "Forbidden", "no new Jobs on Fridays")

    api.create_job = create_job  # type: ignore[method-assign]
    caplog.set_level(logging.DEBUG, logger=reconciler.__name__)
    await jobs.reconcile(uid)
    await jobs.reconcile(uid)  # the same answer again
    refusals = [r for r in caplog.records if "was refused" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING, logging.DEBUG]
    assert "no new Jobs on Fridays" in refusals[0].getMessage()
    assert not any(r.exc_info for r in refusals)  # no traceback
    assert jobs.metrics.reconcile_errors.labels("JobRefused")._value.get() == 2
    assert uid in jobs._failed  # the sweep tries again


async def test_a_stale_attempts_job_is_deleted_and_its_slot_freed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, api, _, uid = operator(tmp_path)
    await jobs.reconcile(uid)
    first = api.jobs[-1]
    second = copy.deepcopy(first)
    second["metadata"]["name"] = names.job_name("portrait", uid, 1)
    second["metadata"]["labels"][names.ATTEMPT_LABEL] = "1"
    jobs.inventory.put_child("job", second, deleted=False)
    deleted: list[str] = []

    async def delete_job(namespace: str, name: str) -> None:
        deleted.append(name)

    kicked: list[str] = []
    monkeypatch.setattr(api, "delete_job", delete_job, raising=False)
    monkeypatch.setattr(jobs, "_kick_queue", kicked.append)
    await jobs.reconcile(uid)
    assert deleted == [first["metadata"]["name"]]
    assert [job.name for job in jobs.inventory.jobs_of(uid)] == [second["metadata"]["name"]]
    assert kicked == [NAMESPACE]  # a slot it may have held is free
