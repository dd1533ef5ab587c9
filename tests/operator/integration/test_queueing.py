"""Queueing: the operator's per-namespace cap (priority, then creation order) and Kueue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from compose_api import contract
from tests.operator.conftest import cj_body
from tests.operator.integration.conftest import OperatorProcess, condition, wait_job, wait_status
from tests.operator.integration.test_lifecycle import report
from tests.support import cluster_client
from tests.support import kube_cluster as cluster
from tests.support.resources import COMPOSITION_JOBS, JOBS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def operator_settings() -> dict[str, str]:
    # Positions that moved are rewritten at most once a second here (a minute by default).
    return {"COMPOSE_MAX_RUNNING_PER_NAMESPACE": "2", "COMPOSE_QUEUE_POSITION_REFRESH_SECONDS": "1"}


async def _finish(client: cluster_client.ClusterClient, cj_name: str) -> None:
    jobs = await client.list(JOBS, label_selector=f"compose.nextunicorn.dev/job={cj_name}")
    job = jobs[0]
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await cluster.mark_terminated(
        client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    await cluster.sync_job(client, job)
    await wait_status(client, cj_name, phase="Succeeded")


def _at_position(position: int) -> Callable[[dict[str, Any] | None], bool]:
    def check(obj: dict[str, Any] | None) -> bool:
        return bool(obj and obj["status"].get("queuePosition") == position)

    return check


async def _job_owners(client: cluster_client.ClusterClient) -> set[str]:
    return {j["metadata"]["labels"]["compose.nextunicorn.dev/job"] for j in await client.list(JOBS)}


async def _owners_become(client: cluster_client.ClusterClient, expected: set[str]) -> None:
    """Status says Starting once the creation is recorded, just before the Job is created."""

    def owners(items: list[dict[str, Any]]) -> set[str]:
        return {j["metadata"]["labels"]["compose.nextunicorn.dev/job"] for j in items}

    await client.wait_for_list(JOBS, lambda items: owners(items) == expected)
    assert await _job_owners(client) == expected


async def test_jobs_beyond_the_cap_wait_in_priority_then_creation_order(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    for name in ("first", "second"):
        await client.create(COMPOSITION_JOBS, cj_body(name))
    await wait_job(client, count=2)
    await client.create(COMPOSITION_JOBS, cj_body("wait-a"))
    await client.create(COMPOSITION_JOBS, cj_body("wait-urgent", execution={"priority": 10}))
    await client.create(COMPOSITION_JOBS, cj_body("wait-b"))
    third = await wait_status(client, "wait-a", phase="Queued")
    assert condition(third, "Queued")["reason"] == "WaitingForCapacity"  # type: ignore[index]
    urgent = await wait_status(client, "wait-urgent", phase="Queued")
    fourth = await wait_status(client, "wait-b", phase="Queued")
    # Positions that moved are refreshed by the sweep. Creation times have one-second
    # resolution, so equal times fall back to the name: the names sort in creation order.
    for name, position in (("wait-urgent", 1), ("wait-a", 2), ("wait-b", 3)):
        await client.wait_for(COMPOSITION_JOBS, name, _at_position(position))
    assert urgent["status"]["phase"] == fourth["status"]["phase"] == "Queued"
    assert await _job_owners(client) == {"first", "second"}

    await _finish(client, "first")
    await wait_status(client, "wait-urgent", phase="Starting")
    await _owners_become(client, {"first", "second", "wait-urgent"})
    await _finish(client, "second")
    await wait_status(client, "wait-a", phase="Starting")
    fourth = await wait_status(client, "wait-b", phase="Queued")
    await _owners_become(client, {"first", "second", "wait-urgent", "wait-a"})


async def test_kueue_queue_name_creates_the_job_suspended_until_admitted(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("kueued", execution={"queueName": "gpu-queue"}))
    job = (await wait_job(client))[0]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    cj = await wait_status(client, "kueued", phase="Queued")
    assert condition(cj, "Queued")["reason"] == "WaitingForAdmission"  # type: ignore[index]
    # Kueue admits the workload: it unsuspends the Job.
    await client.patch(JOBS, job["metadata"]["name"], {"spec": {"suspend": False}})
    cj = await wait_status(client, "kueued", phase="Starting")
    assert condition(cj, "Queued")["reason"] == "Admitted"  # type: ignore[index]


async def test_resuming_a_job_kueue_has_not_admitted_leaves_it_to_kueue(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("held", execution={"queueName": "gpu-queue"}))
    job = (await wait_job(client))[0]
    name = job["metadata"]["name"]
    await wait_status(client, "held", reason=("Queued", "WaitingForAdmission"))
    await client.patch(COMPOSITION_JOBS, "held", {"spec": {"suspend": True}})
    await wait_status(client, "held", phase="Suspended")
    await client.patch(COMPOSITION_JOBS, "held", {"spec": {"suspend": False}})
    cj = await wait_status(client, "held", reason=("Suspended", "Resumed"))
    assert cj["status"]["phase"] == "Queued"
    assert condition(cj, "Queued")["reason"] == "WaitingForAdmission"  # type: ignore[index]
    assert (await client.get(JOBS, name))["spec"]["suspend"] is True  # not admitted by us
    # Kueue admits the workload: it unsuspends the Job.
    await client.patch(JOBS, name, {"spec": {"suspend": False}})
    await wait_status(client, "held", phase="Starting")
