"""A new job's intent is sent with its Job's create when the Job TTL is long (the create does
not wait for the write's round trip), and in order when it is short. Whatever becomes of the
write, a Job that was made is recorded and keeps its slot; a refused create is written after the
intent, so the intent never overwrites the refusal."""

from __future__ import annotations

import asyncio
import gc
import pathlib
from collections.abc import Mapping
from typing import Any, cast

import pytest

from compose_api import kube, models
from compose_operator import kubeapi, plan, reconciler, status
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_plan import seen
from tests.operator.unit.test_status import at


class Client:
    """The API calls a job's start makes, in the order they begin and end. ``hold``: the intent's
    patch ends only once the create has begun (with the intent sent first, never)."""

    def __init__(self, *, hold: bool, write_error: Exception | None = None,
                 create_error: Exception | None = None) -> None:  # fmt: skip
        self.calls: list[str] = []
        self.hold = hold
        self.write_error = write_error
        self.create_error = create_error
        self.create_begun = asyncio.Event()

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, resource_version: Any
    ) -> dict[str, Any]:
        reason = _reason(patch)
        self.calls.append(f"write {reason}")
        if self.hold and reason == models.Reason.JOB_CREATED:
            await self.create_begun.wait()
        await asyncio.sleep(0.05)  # a round trip
        if self.write_error is not None and reason == models.Reason.JOB_CREATED:
            self.calls.append(f"write {reason} failed")
            raise self.write_error
        self.calls.append(f"written {reason}")
        return {"metadata": {"resourceVersion": "8"}}

    async def create_job(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        self.create_begun.set()
        await asyncio.sleep(0.01)
        if self.create_error is not None:
            raise self.create_error
        self.calls.append("created")
        return dict(manifest)

    async def post_event(self, body: Any, **_: Any) -> None:
        return None


def _reason(patch: Mapping[str, Any]) -> str:
    conditions = patch.get("conditions") or []  # the status itself, as the client wraps it
    started = [c for c in conditions if c.get("type") == models.ConditionType.STARTED]
    return str(started[0]["reason"]) if started else "?"


def start(
    tmp_path: pathlib.Path, client: Client, *, ttl: str = "3600", capped: bool = False
) -> tuple[reconciler.Reconciler, asyncio.Task[None], str]:
    """The reconciler executing a new job's plan (intent, then create), in a task."""
    config = make_settings(
        tmp_path, COMPOSE_JOB_TTL_SECONDS=ttl, COMPOSE_MAX_RUNNING_PER_NAMESPACE="4"
    )
    jobs = reconciler.Reconciler(config, cast(kubeapi.KubeClient, client))
    cj = make_cj()
    uid = jobs.inventory.put(cj.model_dump(mode="json", by_alias=True, exclude_none=True))
    observed = seen(cj, capped=capped)
    decided = plan.plan(observed, at(1), config)
    assert [type(a) for a in decided.actions] == [plan.WriteStatus, plan.CreateJob]
    body = jobs.inventory.body(uid) or {}
    run = asyncio.create_task(jobs._execute(uid, body, observed, decided))
    return jobs, run, uid


async def test_the_create_is_sent_while_the_intent_is_in_flight(tmp_path: pathlib.Path) -> None:
    client = Client(hold=True)
    jobs, run, uid = start(tmp_path, client)
    await asyncio.wait_for(run, 2)  # in order, the held write would never end
    assert set(client.calls[:2]) == {"write JobCreated", "create"}  # both under way at once
    assert set(client.calls[2:]) == {"created", "written JobCreated"}
    assert [job.name for job in jobs.inventory.jobs_of(uid)] != []
    assert status.intent(jobs.inventory.status_of(uid).conditions) is not None


async def test_with_a_short_ttl_the_create_waits_for_the_intent(tmp_path: pathlib.Path) -> None:
    client = Client(hold=False)
    _, run, _ = start(tmp_path, client, ttl="599")
    await asyncio.wait_for(run, 2)
    assert client.calls == ["write JobCreated", "written JobCreated", "create", "created"]


async def test_a_failed_intent_keeps_the_job_made_and_its_slot(tmp_path: pathlib.Path) -> None:
    client = Client(hold=True, write_error=kube.KubeError(500, "InternalError", "etcd timeout"))
    jobs, run, uid = start(tmp_path, client, capped=True)
    with pytest.raises(kube.KubeError, match="etcd timeout"):
        await asyncio.wait_for(run, 2)
    assert "created" in client.calls
    assert len(jobs.inventory.jobs_of(uid)) == 1  # recorded: the next reconcile follows it
    assert jobs.inventory.tracked[uid].admitted  # its slot stays taken


async def test_a_refused_create_is_written_after_the_intent(tmp_path: pathlib.Path) -> None:
    refusal = kube.Forbidden(403, "Forbidden", "no new Jobs on Fridays")
    client = Client(hold=True, create_error=refusal)
    jobs, run, uid = start(tmp_path, client, capped=True)
    with pytest.raises(reconciler.JobRefused, match="no new Jobs on Fridays"):
        await asyncio.wait_for(run, 2)
    assert set(client.calls[:2]) == {"write JobCreated", "create"}
    assert client.calls[2:] == [
        "written JobCreated",
        "write JobCreateFailed",
        "written JobCreateFailed",
    ]
    shown = status.intent(jobs.inventory.status_of(uid).conditions)
    assert shown is not None and shown.reason == models.Reason.JOB_CREATE_FAILED
    assert not jobs.inventory.tracked[uid].admitted  # no Job: the slot is free again


async def test_a_long_refusal_is_shown_up_to_its_first_1024_characters(
    tmp_path: pathlib.Path,
) -> None:
    denial = "admission webhook denied the request: " + "policy violation; " * 100
    refusal = kube.Forbidden(403, "Forbidden", denial)
    client = Client(hold=True, create_error=refusal)
    jobs, run, uid = start(tmp_path, client)
    with pytest.raises(reconciler.JobRefused):
        await asyncio.wait_for(run, 2)
    shown = status.intent(jobs.inventory.status_of(uid).conditions)
    assert shown is not None
    answer = f"403 Forbidden: {denial}"
    assert shown.message.endswith(f"trying again: {answer[:1024]}")


async def test_a_refusal_with_a_failed_intent_raises_the_refusal(tmp_path: pathlib.Path) -> None:
    client = Client(
        hold=True,
        write_error=kube.KubeError(500, "InternalError", "etcd timeout"),
        create_error=kube.Forbidden(403, "Forbidden", "exceeded quota"),
    )
    _, run, _ = start(tmp_path, client)
    with pytest.raises(reconciler.JobRefused, match="exceeded quota"):
        await asyncio.wait_for(run, 2)
    assert client.calls.index("write JobCreated failed") < client.calls.index(
        "write JobCreateFailed"
    )


async def test_a_failed_create_ends_with_the_intent_written_and_frees_the_slot(
    tmp_path: pathlib.Path,
) -> None:
    """Not a refusal (the API server could not answer): the create's error is raised once the
    intent's write has ended, and with no Job the slot is free for the next try."""
    client = Client(hold=True, create_error=kube.KubeError(503, "ServiceUnavailable", "busy"))
    jobs, run, uid = start(tmp_path, client, capped=True)
    with pytest.raises(kube.KubeError, match="busy"):
        await asyncio.wait_for(run, 2)
    assert client.calls[-1] == "written JobCreated"  # ended before the error was raised
    assert status.intent(jobs.inventory.status_of(uid).conditions) is not None
    assert jobs.inventory.jobs_of(uid) == []
    assert not jobs.inventory.tracked[uid].admitted


async def test_when_both_fail_the_creates_error_is_raised_and_the_writes_is_not_lost(
    tmp_path: pathlib.Path,
) -> None:
    """The intent's write fails as well: the create's error is the one raised, and the write's
    is read, not left to the event loop to report as never retrieved."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(str(context.get("message"))))
    try:
        client = Client(
            hold=True,
            write_error=kube.KubeError(500, "InternalError", "etcd timeout"),
            create_error=kube.KubeError(503, "ServiceUnavailable", "busy"),
        )
        _, run, _ = start(tmp_path, client)
        raised = ""
        try:
            await asyncio.wait_for(run, 2)
        except kube.KubeError as error:
            raised = str(error)
        assert raised == "503 ServiceUnavailable: busy"
        assert client.calls[-1] == "write JobCreated failed"  # ended before the error was raised
        # The task that ran it, and the client (whose errors keep their tracebacks), are the
        # last holders of the failed frames, and so of the write's task.
        del run, client
        gc.collect()
        assert reported == []
    finally:
        loop.set_exception_handler(None)
