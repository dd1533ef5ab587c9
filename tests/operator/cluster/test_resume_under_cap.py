"""A job resumed under the per-namespace cap waits for a slot like any queued job: its Job stays
suspended (and the job shows Queued) until a running job finishes; then the real Job controller
makes its pod again."""

from __future__ import annotations

import pytest

from compose_api import contract
from tests.operator.cluster.conftest import (
    child_jobs,
    cj_with,
    condition,
    create,
    end,
    pods_of,
    running_pod,
    wait_jobs,
    wait_until,
)
from tests.operator.operator_process import OperatorProcess
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, JOBS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {"COMPOSE_MAX_RUNNING_PER_NAMESPACE": "1"}


async def _running_jobs(kube: ClusterClient) -> set[str]:
    return {
        j["metadata"]["labels"]["compose.nextunicorn.dev/job"]
        for j in await child_jobs(kube)
        if not j["spec"].get("suspend")
    }


async def test_a_resumed_job_waits_for_a_free_slot(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "paused")
    await running_pod(kube, "paused")
    await cj_with(kube, "paused", phase="Running")
    name = (await child_jobs(kube))[0]["metadata"]["name"]
    await kube.patch(COMPOSITION_JOBS, "paused", {"spec": {"suspend": True}})
    await kube.wait_for(JOBS, name, lambda obj: bool(obj and obj["spec"].get("suspend")))
    await cj_with(kube, "paused", phase="Suspended")

    async def no_pods(client: ClusterClient) -> bool:
        return not await pods_of(client, "paused")

    await wait_until(kube, no_pods, what="the Job controller to remove the suspended pod")

    # The suspended job frees its slot: the next one starts.
    await create(kube, namespace, "next")
    await wait_jobs(kube, count=2)
    next_pod = await running_pod(kube, "next")

    await kube.patch(COMPOSITION_JOBS, "paused", {"spec": {"suspend": False}})
    cj = await cj_with(kube, "paused", phase="Queued")
    assert condition(cj, "Queued")["reason"] == "WaitingForCapacity"  # type: ignore[index]
    assert condition(cj, "Suspended")["reason"] == "Resumed"  # type: ignore[index]
    assert cj["status"]["queuePosition"] == 1
    assert await _running_jobs(kube) == {"next"}  # the cap holds
    assert await pods_of(kube, "paused") == []

    await end(kube, next_pod, contract.ExitCode.OK)
    await cj_with(kube, "next", phase="Succeeded")
    # The slot is free: the resumed job's Job is unsuspended and it runs to the end.
    await kube.wait_for(JOBS, name, lambda obj: bool(obj and not obj["spec"].get("suspend")))
    cj = await cj_with(kube, "paused", reason=("Queued", "Admitted"))
    assert "queuePosition" not in cj["status"]
    pod = await running_pod(kube, "paused")
    await end(kube, pod, contract.ExitCode.OK)
    await cj_with(kube, "paused", phase="Succeeded")
    assert len(await kube.list(JOBS)) == 2
