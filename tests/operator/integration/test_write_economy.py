"""Status writes per job: progress within one phase is coalesced, phase changes are not.

Before the Job is created its intent is written (one patch); a pod that goes through several
pending states in quick succession, together with the Job's creation, costs one status patch
(written at the end of ``COMPOSE_STATUS_COALESCE_SECONDS``, so the latest state still shows),
while a phase change (Running) and the terminal state are written at once.
"""

from __future__ import annotations

import pytest

from compose_api import contract
from tests.operator.conftest import cj_body
from tests.operator.integration.conftest import OperatorProcess, condition, wait_job, wait_status
from tests.operator.integration.test_lifecycle import report
from tests.support import cluster_client
from tests.support import kube_cluster as cluster
from tests.support.resources import COMPOSITION_JOBS

pytestmark = pytest.mark.timeout(90)

WINDOW_SECONDS = 5  # wide enough that the pod's pending states land inside it on a busy machine


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {"COMPOSE_STATUS_COALESCE_SECONDS": str(WINDOW_SECONDS)}


async def _status_patches(client: cluster_client.ClusterClient, name: str) -> int:
    log = await client.request_log()
    return sum(
        1
        for r in log
        if r.user_agent != "compose-test-client"
        and r.resource == "compositionjobs"
        and r.subresource == "status"
        and r.verb == "patch"
        and r.name == name
    )


async def test_pending_progress_is_one_patch_and_phase_changes_are_immediate(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("steady"))
    job = (await wait_job(client))[0]
    created = await wait_status(client, "steady", reason=("Started", "JobCreated"))
    # The first patch records the intent to create the Job (Started=Unknown), before the create,
    # so that a restart can tell a Job never created from one that finished and was deleted.
    # That is one more write per job than the create alone needed; the Job's creation itself
    # (Started=True) is progress within the same phase, so it shares the next coalesced write.
    assert condition(created, "Started")["status"] == "Unknown"  # type: ignore[index]
    assert await _status_patches(client, "steady") == 1

    # Three pending states inside the window: Scheduling, scheduled on a node, ImagePulling.
    pod = await cluster.create_pod_for_job(client, job)
    pod = await cluster.mark_scheduled(client, pod, node="gpu-7", instance_type="g5.2xlarge")
    pod = await cluster.mark_image_pulling(client, pod)
    found = await wait_status(
        client, "steady", reason=("Started", "ImagePulling"), timeout=WINDOW_SECONDS + 15
    )
    attempt = found["status"]["attempts"][-1]
    assert (attempt["nodeName"], attempt["instanceType"]) == ("gpu-7", "g5.2xlarge")
    assert await _status_patches(client, "steady") == 2  # not one per pod state

    # A phase change is written at once, inside the window of the previous write.
    pod = await cluster.mark_running(client, pod)
    running = await wait_status(client, "steady", phase="Running", timeout=WINDOW_SECONDS - 1)
    assert condition(running, "Started") is not None
    await cluster.mark_terminated(
        client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    await cluster.sync_job(client, job)
    await wait_status(client, "steady", phase="Succeeded", timeout=WINDOW_SECONDS - 1)
    assert await _status_patches(client, "steady") == 4
