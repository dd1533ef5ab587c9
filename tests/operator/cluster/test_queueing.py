"""Queueing on the real control plane: the operator's per-namespace cap (priority, then creation
order), and Kueue's part (a Job created suspended, admitted when Kueue unsuspends it), which the
test plays."""

from __future__ import annotations

from typing import Any

import pytest

from compose_api import contract
from tests.operator.cluster.conftest import (
    child_jobs,
    cj_with,
    condition,
    create,
    end,
    running_pod,
    wait_jobs,
    wait_until,
)
from tests.operator.operator_process import OperatorProcess
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, JOBS

pytestmark = pytest.mark.timeout(150)

OWNER = "compose.nextunicorn.dev/job"


@pytest.fixture
def operator_settings() -> dict[str, str]:
    # Positions that moved are rewritten at most once a second here (a minute by default).
    return {"COMPOSE_MAX_RUNNING_PER_NAMESPACE": "2", "COMPOSE_QUEUE_POSITION_REFRESH_SECONDS": "1"}


async def _finish(kube: ClusterClient, name: str) -> None:
    await end(kube, await running_pod(kube, name), contract.ExitCode.OK)
    await cj_with(kube, name, phase="Succeeded")


async def _owners(kube: ClusterClient) -> set[str]:
    return {j["metadata"]["labels"][OWNER] for j in await child_jobs(kube)}


async def _owners_become(kube: ClusterClient, expected: set[str]) -> None:
    async def check(client: ClusterClient) -> bool:
        return await _owners(client) == expected

    await wait_until(kube, check, what=f"Jobs of {sorted(expected)}")


async def test_jobs_beyond_the_cap_wait_in_priority_then_creation_order(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    for name in ("first", "second"):
        await create(kube, namespace, name)
    await wait_jobs(kube, count=2)
    await create(kube, namespace, "wait-a")
    await create(kube, namespace, "wait-urgent", execution={"priority": 10})
    await create(kube, namespace, "wait-b")
    third = await cj_with(kube, "wait-a", phase="Queued")
    assert condition(third, "Queued")["reason"] == "WaitingForCapacity"  # type: ignore[index]
    await cj_with(kube, "wait-urgent", phase="Queued")
    await cj_with(kube, "wait-b", phase="Queued")
    # Positions that moved are refreshed by the sweep. Creation times have one-second
    # resolution, so equal times fall back to the name: the names sort in creation order.
    for name, position in (("wait-urgent", 1), ("wait-a", 2), ("wait-b", 3)):
        found = await kube.wait_for(
            COMPOSITION_JOBS,
            name,
            lambda obj, at=position: bool(obj and obj["status"].get("queuePosition") == at),
            timeout=20,
        )
        assert found is not None
    assert await _owners(kube) == {"first", "second"}

    await _finish(kube, "first")
    await cj_with(kube, "wait-urgent", phase=("Starting", "Running"))
    await _owners_become(kube, {"first", "second", "wait-urgent"})
    await _finish(kube, "second")
    await cj_with(kube, "wait-a", phase=("Starting", "Running"))
    await cj_with(kube, "wait-b", phase="Queued")
    await _owners_become(kube, {"first", "second", "wait-urgent", "wait-a"})


async def test_kueue_queue_name_creates_the_job_suspended_until_admitted(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "kueued", execution={"queueName": "gpu-queue"})
    job = (await wait_jobs(kube))[0]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    cj = await cj_with(kube, "kueued", phase="Queued")
    assert condition(cj, "Queued")["reason"] == "WaitingForAdmission"  # type: ignore[index]
    # Kueue admits the workload: it unsuspends the Job, and the Job controller makes the pod.
    await kube.patch(JOBS, job["metadata"]["name"], {"spec": {"suspend": False}})
    cj = await cj_with(kube, "kueued", reason=("Queued", "Admitted"))
    assert cj["status"]["phase"] in ("Starting", "Running")
    await running_pod(kube, "kueued")


async def test_resuming_a_job_kueue_has_not_admitted_leaves_it_to_kueue(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "held", execution={"queueName": "gpu-queue"})
    job = (await wait_jobs(kube))[0]
    name = job["metadata"]["name"]
    await cj_with(kube, "held", reason=("Queued", "WaitingForAdmission"))
    await kube.patch(COMPOSITION_JOBS, "held", {"spec": {"suspend": True}})
    await cj_with(kube, "held", phase="Suspended")
    await kube.patch(COMPOSITION_JOBS, "held", {"spec": {"suspend": False}})
    cj: dict[str, Any] = await cj_with(kube, "held", reason=("Suspended", "Resumed"))
    assert cj["status"]["phase"] == "Queued"
    assert condition(cj, "Queued")["reason"] == "WaitingForAdmission"  # type: ignore[index]
    assert (await kube.get(JOBS, name))["spec"]["suspend"] is True  # not admitted by us
    # Kueue admits the workload: it unsuspends the Job.
    await kube.patch(JOBS, name, {"spec": {"suspend": False}})
    await cj_with(kube, "held", phase=("Starting", "Running"))
