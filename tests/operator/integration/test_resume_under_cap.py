"""A job resumed under the per-namespace cap waits for a slot like any queued job: its Job stays
suspended (and the job shows Queued) until a running job finishes."""

from __future__ import annotations

import pytest

from compose_api import contract
from tests.operator.conftest import cj_body
from tests.operator.integration.conftest import OperatorProcess, condition, wait_job, wait_status
from tests.operator.integration.test_lifecycle import report
from tests.support import cluster_client
from tests.support import kube_cluster as cluster
from tests.support.resources import COMPOSITION_JOBS, JOBS

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {"COMPOSE_MAX_RUNNING_PER_NAMESPACE": "1"}


async def _running_jobs(client: cluster_client.ClusterClient) -> set[str]:
    return {
        j["metadata"]["labels"]["compose.nextunicorn.dev/job"]
        for j in await client.list(JOBS)
        if not j["spec"].get("suspend")
    }


async def test_a_resumed_job_waits_for_a_free_slot(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("paused"))
    first = (await wait_job(client))[0]
    pod = await cluster.create_pod_for_job(client, first, node="gpu-1")
    await cluster.mark_running(client, pod)
    await wait_status(client, "paused", phase="Running")
    await client.patch(COMPOSITION_JOBS, "paused", {"spec": {"suspend": True}})
    name = first["metadata"]["name"]
    await client.wait_for(JOBS, name, lambda obj: bool(obj and obj["spec"].get("suspend")))
    await cluster.set_job_suspended(client, first, True)
    await wait_status(client, "paused", phase="Suspended")

    # The suspended job frees its slot: the next one starts.
    await client.create(COMPOSITION_JOBS, cj_body("next"))
    await wait_job(client, count=2)
    await wait_status(client, "next", phase="Starting")

    await client.patch(COMPOSITION_JOBS, "paused", {"spec": {"suspend": False}})
    cj = await wait_status(client, "paused", phase="Queued")
    assert condition(cj, "Queued")["reason"] == "WaitingForCapacity"  # type: ignore[index]
    assert condition(cj, "Suspended")["reason"] == "Resumed"  # type: ignore[index]
    assert cj["status"]["queuePosition"] == 1
    assert await _running_jobs(client) == {"next"}  # the cap holds

    second = (await client.list(JOBS, label_selector="compose.nextunicorn.dev/job=next"))[0]
    pod = await cluster.create_pod_for_job(client, second, node="gpu-2")
    await cluster.mark_running(client, pod)
    await cluster.mark_terminated(
        client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    await cluster.sync_job(client, second)
    await wait_status(client, "next", phase="Succeeded")
    # The slot is free: the resumed job's Job is unsuspended and it runs to the end.
    await client.wait_for(JOBS, name, lambda obj: bool(obj and not obj["spec"].get("suspend")))
    await cluster.set_job_suspended(client, first, False)
    cj = await wait_status(client, "paused", phase="Starting")
    assert condition(cj, "Queued")["reason"] == "Admitted"  # type: ignore[index]
    assert "queuePosition" not in cj["status"]
    pod = await cluster.create_pod_for_job(client, first, node="gpu-1")
    await cluster.mark_running(client, pod)
    await cluster.mark_terminated(
        client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    await cluster.sync_job(client, first)
    await wait_status(client, "paused", phase="Succeeded")
    assert len(await client.list(JOBS)) == 2
