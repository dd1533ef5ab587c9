"""What the reconciler reads into an observation (its place under the caps, a fresh list of its
children) and what one status write sets going (the Event, the queue kick of a job that ends,
the resourceVersion it records), with its failures kept apart from the job's.

The client is an in-memory stand-in that records the requests; the same paths on the real
control plane are in ``tests/operator/cluster``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import pathlib
from collections.abc import Mapping
from typing import Any, cast

import pytest

from compose_api import kube, models
from compose_operator import kubeapi, names, plan, reconciler, status
from tests.operator.unit.test_builders import make_settings
from tests.operator.unit.test_reconciler_timing import add_jobs

NAMESPACE = "studio"


class Api:
    def __init__(self) -> None:
        self.patches: list[tuple[Mapping[str, Any], str | None]] = []
        self.events: list[str] = []
        self.jobs: list[dict[str, Any]] = []
        self.pods: list[dict[str, Any]] = []
        self.patch_error: Exception | None = None
        self.event_error: Exception | None = None

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, resource_version: Any
    ) -> dict[str, Any]:
        if self.patch_error is not None:
            raise self.patch_error
        self.patches.append((patch, resource_version))
        return {"metadata": {"resourceVersion": "42"}}

    async def post_event(self, body: Any, *, reason: str, **_: Any) -> None:
        if self.event_error is not None:
            raise self.event_error
        self.events.append(reason)

    async def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.jobs)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pods)

    async def node_labels(self, name: str) -> dict[str, str]:
        return {"node.kubernetes.io/instance-type": f"g5.xlarge ({name})"}


def operator(
    tmp_path: pathlib.Path, *, cap: str = "0", count: int = 1, **spec: Any
) -> tuple[reconciler.Reconciler, Api, list[str]]:
    api = Api()
    jobs = reconciler.Reconciler(
        make_settings(tmp_path, COMPOSE_MAX_RUNNING_PER_NAMESPACE=cap),
        cast(kubeapi.KubeClient, api),
    )
    return jobs, api, add_jobs(jobs, count, **spec)


def child_job(uid: str, attempt: int, *, suspended: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"job-{uid}-{attempt}",
        "namespace": NAMESPACE,
        "labels": {names.UID_LABEL: uid, names.ATTEMPT_LABEL: str(attempt)},
        "creationTimestamp": "2026-01-02T03:05:00Z",
    }
    if suspended:
        meta["annotations"] = {names.SUSPENDED_ANNOTATION: "true"}
    return {"metadata": meta, "spec": {"suspend": suspended}, "status": {}}


async def observe(jobs: reconciler.Reconciler, uid: str) -> Any:
    body = jobs.inventory.body(uid) or {}
    return await jobs._observe(uid, body, listed=None, pods_waited=False)


# -- the place under the caps ---------------------------------------------------------------


async def test_without_caps_no_place_is_computed(tmp_path: pathlib.Path) -> None:
    jobs, _, uids = operator(tmp_path, count=2)
    seen = await observe(jobs, uids[1])
    assert (seen.queue, seen.capped) == (None, False)


async def test_a_job_for_kueue_is_not_under_the_operators_caps(tmp_path: pathlib.Path) -> None:
    jobs, _, uids = operator(tmp_path, cap="1", execution={"queueName": "team-a"})
    seen = await observe(jobs, uids[0])
    assert (seen.queue, seen.capped) == (None, False)


async def test_a_waiting_job_sees_its_place_and_an_admitted_one_none(
    tmp_path: pathlib.Path,
) -> None:
    jobs, _, uids = operator(tmp_path, cap="1", count=3)
    first, third = await observe(jobs, uids[0]), await observe(jobs, uids[2])
    assert (first.queue, first.capped) == (None, True)  # the slot is its to take
    assert third.capped and third.queue == status.Queue(position=2, depth=2)
    assert jobs.metrics.queue_depth.labels(NAMESPACE)._value.get() == 2


async def test_a_suspended_or_running_job_has_no_place_but_stays_capped(
    tmp_path: pathlib.Path,
) -> None:
    jobs, _, uids = operator(tmp_path, cap="1", count=2, suspend=True)
    seen = await observe(jobs, uids[1])
    assert (seen.queue, seen.capped) == (None, True)  # held by the user
    jobs, _, uids = operator(tmp_path, cap="1", count=2)
    jobs.inventory.put_child("job", child_job(uids[1], 0), deleted=False)  # running already
    seen = await observe(jobs, uids[1])
    assert (seen.queue, seen.capped) == (None, True)


async def test_a_resumed_job_held_by_the_operator_waits_for_its_place(
    tmp_path: pathlib.Path,
) -> None:
    jobs, _, uids = operator(tmp_path, cap="1", count=2)
    jobs.inventory.admit(uids[0])
    jobs.inventory.put_child("job", child_job(uids[1], 0, suspended=True), deleted=False)
    seen = await observe(jobs, uids[1])
    assert seen.capped and seen.queue == status.Queue(position=1, depth=1)


async def test_the_latest_attempt_and_its_pods_and_nodes_are_observed(
    tmp_path: pathlib.Path,
) -> None:
    jobs, _, uids = operator(tmp_path, cap="1")
    for attempt in (0, 1):
        jobs.inventory.put_child("job", child_job(uids[0], attempt), deleted=False)
        pod = {
            "metadata": {
                "name": f"p-{attempt}",
                "labels": {names.UID_LABEL: uids[0], "job-name": f"job-u-0-{attempt}"},
            },
            "spec": {"nodeName": f"gpu-{attempt}"},
            "status": {"phase": "Running"},
        }
        jobs.inventory.put_child("pod", pod, deleted=False)
    unplaced = {
        "metadata": {"name": "p-1b", "labels": {names.UID_LABEL: uids[0], "job-name": "job-u-0-1"}},
        "status": {"phase": "Pending"},
    }
    jobs.inventory.put_child("pod", unplaced, deleted=False)  # no node yet: none to read
    seen = await observe(jobs, uids[0])
    assert [job.attempt for job in seen.jobs] == [1, 0]
    assert sorted(pod["metadata"]["name"] for pod in seen.pods) == ["p-1", "p-1b"]
    assert seen.nodes == {"gpu-1": {"node.kubernetes.io/instance-type": "g5.xlarge (gpu-1)"}}
    assert (seen.queue, seen.capped) == (None, True)  # its latest Job runs


# -- a fresh list of the children -----------------------------------------------------------


async def test_a_list_puts_the_latest_attempt_first_with_its_pods_only(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, uids = operator(tmp_path)
    api.jobs = [child_job(uids[0], 0), child_job(uids[0], 2), child_job(uids[0], 1)]
    api.pods = [
        {"metadata": {"name": f"p-{attempt}", "labels": {"job-name": f"job-u-0-{attempt}"}}}
        for attempt in (0, 2)
    ]
    seen = await observe(jobs, uids[0])
    listed, pods = await jobs._list_children(seen)
    assert [job.attempt for job in listed] == [2, 1, 0]
    assert [pod["metadata"]["name"] for pod in pods] == ["p-2"]


async def test_a_list_with_no_job_reads_no_pods(tmp_path: pathlib.Path) -> None:
    jobs, api, uids = operator(tmp_path)
    api.pods = [{"metadata": {"name": "stray", "labels": {}}}]
    assert await jobs._list_children(await observe(jobs, uids[0])) == ([], [])


# -- one status write -----------------------------------------------------------------------


def write_of(
    phase: models.Phase, *, event: bool = True, conditional: bool = False
) -> plan.WriteStatus:
    outcome = status.Outcome(status=models.CompositionJobStatus(phase=phase), transitions=())
    news = status.Event("Normal", str(phase), "news") if event else None
    return plan.WriteStatus(outcome, news, conditional=conditional)


async def write(
    jobs: reconciler.Reconciler,
    uid: str,
    action: plan.WriteStatus,
    previous: models.Phase | None = None,
) -> bool:
    body = jobs.inventory.body(uid) or {}
    was = models.CompositionJobStatus(phase=previous)
    done = await jobs._write(uid, body, was, action)
    await jobs.flush_events(1)
    return done


async def test_a_write_posts_its_event_and_records_the_new_version(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, uids = operator(tmp_path)
    assert await write(jobs, uids[0], write_of(models.Phase.STARTING))
    assert [patch["phase"] for patch, _ in api.patches] == ["Starting"]
    assert api.events == ["Starting"]
    assert jobs.inventory.resource_version(uids[0]) == "42"
    assert await write(jobs, uids[0], write_of(models.Phase.RUNNING, event=False))
    assert api.events == ["Starting"]  # no Event asked for, none posted


async def test_a_write_counts_each_transition_it_makes(tmp_path: pathlib.Path) -> None:
    jobs, _, uids = operator(tmp_path)
    started = status.Transition("Started", "True", "Running", "")
    running = models.CompositionJobStatus(phase=models.Phase.RUNNING)
    action = plan.WriteStatus(status.Outcome(status=running, transitions=(started,)), None)
    counter = jobs.metrics.transitions.labels("Started", "True", "Running")
    await write(jobs, uids[0], action)
    assert counter._value.get() == 1


async def test_only_a_conditional_write_names_the_version_it_read(tmp_path: pathlib.Path) -> None:
    jobs, api, uids = operator(tmp_path)
    await write(jobs, uids[0], write_of(models.Phase.STARTING))
    await write(jobs, uids[0], write_of(models.Phase.RUNNING, conditional=True))
    assert [version for _, version in api.patches] == [None, "42"]


async def test_an_unchanged_status_is_not_written(tmp_path: pathlib.Path) -> None:
    jobs, api, uids = operator(tmp_path)
    action = write_of(models.Phase.RUNNING)
    assert not await write(jobs, uids[0], action, previous=models.Phase.RUNNING)
    assert api.patches == [] and api.events == []


async def test_only_the_end_of_a_job_admits_the_next(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, _, uids = operator(tmp_path, cap="1")
    kicked: list[str] = []
    monkeypatch.setattr(jobs, "_kick_queue", kicked.append)
    await write(jobs, uids[0], write_of(models.Phase.RUNNING), models.Phase.STARTING)
    assert kicked == []
    await write(jobs, uids[0], write_of(models.Phase.SUCCEEDED), models.Phase.RUNNING)
    assert kicked == [NAMESPACE]
    # A terminal status written again (a rewrite of a finished job) frees nothing more.
    await write(jobs, uids[0], write_of(models.Phase.FAILED), models.Phase.SUCCEEDED)
    assert kicked == [NAMESPACE]


async def test_a_failed_event_is_counted_and_loses_nothing(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs, api, uids = operator(tmp_path)
    api.event_error = kube.KubeError(500, "InternalError", "etcd timeout")
    assert await write(jobs, uids[0], write_of(models.Phase.STARTING))
    assert [patch["phase"] for patch, _ in api.patches] == ["Starting"]
    assert jobs.metrics.reconcile_errors.labels("EventKubeError")._value.get() == 1
    assert any("posting the Starting Event" in r.getMessage() for r in caplog.records)


async def test_flushing_with_no_event_waiting_returns_at_once(tmp_path: pathlib.Path) -> None:
    jobs, _, _ = operator(tmp_path)
    await asyncio.wait_for(jobs.flush_events(5), 0.5)


async def test_a_refusal_that_cannot_be_written_is_still_raised_as_news(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs, api, uids = operator(tmp_path)
    caplog.set_level(logging.WARNING)
    api.patch_error = kube.KubeError(500, "InternalError", "etcd timeout")
    body = jobs.inventory.body(uids[0]) or {}
    seen = await observe(jobs, uids[0])
    manifest = {"metadata": {"name": "job-u-0-0"}}
    refused = kube.Forbidden(403, "Forbidden", "exceeded quota")
    news = await jobs._record_refusal(uids[0], body, seen, plan.CreateJob(manifest), refused)
    assert news  # not known to be in status: logged as a warning
    assert any("recording the refused create" in r.getMessage() for r in caplog.records)
