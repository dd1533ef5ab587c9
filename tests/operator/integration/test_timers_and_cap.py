"""Transitions found without a watch event (the start deadline) post their Event and free
their slot at once; the cap counts Jobs the Job controller has not finished, exactly; exit 0
without a readable result fails. The sweep runs once a minute here, so nothing below can lean
on it: what happens, happens because of a timer or an event."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from compose_api import contract
from tests.operator.conftest import cj_body
from tests.operator.integration.conftest import OperatorProcess, condition, wait_job, wait_status
from tests.operator.integration.test_lifecycle import report
from tests.support import cluster_client
from tests.support import kube_cluster as cluster
from tests.support.resources import COMPOSITION_JOBS, EVENTS, JOBS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {"COMPOSE_MAX_RUNNING_PER_NAMESPACE": "1", "COMPOSE_RECONCILE_INTERVAL_SECONDS": "60"}


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _jobs_of(client: cluster_client.ClusterClient, name: str) -> list[dict[str, Any]]:
    return await client.list(JOBS, label_selector=f"compose.nextunicorn.dev/job={name}")


async def _job_appears(
    client: cluster_client.ClusterClient,
    name: str,
    timeout: float,  # noqa: ASYNC109 (a polling deadline)
) -> None:
    selector = f"compose.nextunicorn.dev/job={name}"
    await client.wait_for_list(JOBS, bool, label_selector=selector, timeout=timeout)


async def test_a_start_deadline_found_by_the_timer_posts_its_event_and_starts_the_next_job(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("stuck", execution={"startDeadlineSeconds": 30}))
    job = (await wait_job(client))[0]
    await client.create(COMPOSITION_JOBS, cj_body("next"))
    await wait_status(client, "next", phase="Queued")
    # The Job started 28 s ago and no pod ever runs: the deadline falls due in about 3 s, and
    # no watch event will come to tell the operator.
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=28)
    await client.patch_status(JOBS, job["metadata"]["name"], {"startTime": _rfc3339(past)})
    cj = await wait_status(client, "stuck", phase="Failed", timeout=15)
    assert condition(cj, "Failed")["reason"] == "StartDeadlineExceeded"  # type: ignore[index]
    # The next job is admitted at once, not at the next sweep a minute later.
    await _job_appears(client, "next", timeout=3)
    events = await client.wait_for_list(
        EVENTS,
        lambda items: any(e.get("reason") == "StartDeadlineExceeded" for e in items),
        timeout=5,
    )
    failed = [e for e in events if e.get("reason") == "StartDeadlineExceeded"]
    assert [e["involvedObject"]["name"] for e in failed] == ["stuck"]
    assert failed[0]["type"] == "Warning"
    assert "Failed=True StartDeadlineExceeded" in failed[0]["message"]
    log = operator.log()
    assert "LookupError" not in log
    assert "Traceback" not in log


async def test_the_cap_holds_until_the_job_controller_marks_the_job_complete(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("first"))
    job = (await wait_job(client))[0]
    await client.create(COMPOSITION_JOBS, cj_body("second"))
    await wait_status(client, "second", phase="Queued")
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await cluster.mark_terminated(
        client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    # The pod succeeded and the composition with it, but the Job is not Complete yet: it is
    # still a Job that is neither complete nor failed, so it keeps the one slot.
    await wait_status(client, "first", phase="Succeeded")
    await asyncio.sleep(1.5)
    assert await _jobs_of(client, "second") == []
    assert (await client.get(COMPOSITION_JOBS, "second"))["status"]["phase"] == "Queued"
    await cluster.sync_job(client, job)  # the Job controller: Complete
    await _job_appears(client, "second", timeout=3)


async def test_exit_zero_without_a_readable_result_fails_with_its_own_reason(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("garbled"))
    job = (await wait_job(client))[0]
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    # What the kubelet keeps of a message over its limit: the first 4,096 bytes.
    garbled = ('{"exitCode": 0, "reason": "Completed", "message": "' + "y" * 5000)[:4096]
    await cluster.mark_terminated(client, pod, exit_code=0, message=garbled)
    await cluster.sync_job(client, job)
    cj = await wait_status(client, "garbled", phase="Failed")
    failed = condition(cj, "Failed")
    assert failed is not None
    assert failed["reason"] == "ResultUnreadable"
    assert "4096-byte limit" in failed["message"]
    assert "result" not in cj["status"]
    events = await client.wait_for_list(
        EVENTS, lambda items: any(e.get("reason") == "ResultUnreadable" for e in items)
    )
    assert any(e["type"] == "Warning" for e in events if e.get("reason") == "ResultUnreadable")


async def test_a_burst_never_admits_more_than_the_cap(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    # Admission is decided and taken before any await: concurrent events cannot both take the
    # one free slot, although nothing is locked per namespace.
    names = [f"burst-{index}" for index in range(6)]
    await asyncio.gather(*(client.create(COMPOSITION_JOBS, cj_body(name)) for name in names))
    await wait_job(client)
    for name in names:
        await client.wait_for(
            COMPOSITION_JOBS,
            name,
            lambda obj: (obj or {}).get("status", {}).get("phase") in ("Queued", "Starting"),
        )
    await asyncio.sleep(1.0)
    assert len(await client.list(JOBS)) == 1
    phases = [(await client.get(COMPOSITION_JOBS, n))["status"]["phase"] for n in names]
    assert sorted(phases) == ["Queued"] * 5 + ["Starting"]
