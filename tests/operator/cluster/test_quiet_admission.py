"""A job that waited behind the cap is admitted with its Job create alone: its ``Queued``
record stands for the intent, and the write its pod's start brings shows the admission too.
So a job that waits costs the same status writes as one that never waits (three), and the same
Events (three). A restart in between adopts the Job it finds and creates no second one. The
kubelet's part is played: kwok holds the pods Pending until the test starts them."""

from __future__ import annotations

import asyncio

import pytest

from compose_api import contract
from tests.operator.cluster.conftest import (
    bound_pod,
    child_jobs,
    cj_with,
    condition,
    create,
    end,
    status_patches,
    wait_jobs,
    wait_until,
)
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, EVENTS

pytestmark = pytest.mark.timeout(120)

STARTING_SECONDS = 40  # the admission waits this long for the pod's start before it is written


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {
        "COMPOSE_MAX_RUNNING_PER_NAMESPACE": "1",
        "COMPOSE_STARTING_PROGRESS_SECONDS": str(STARTING_SECONDS),
        "COMPOSE_INFERENCE_IMAGE": cp.HELD_IMAGE,
    }


async def _events(kube: ClusterClient, name: str) -> list[str]:
    items = await kube.list(EVENTS)
    return [e["reason"] for e in items if e["involvedObject"]["name"] == name]


async def test_a_job_that_waited_is_admitted_without_a_write_of_its_own(
    operator: OperatorProcess, kube: ClusterClient, namespace: str, control_plane: cp.ControlPlane
) -> None:
    await create(kube, namespace, "busy")
    busy = await bound_pod(kube, "busy")
    await cp.start_pod(kube, busy)
    await cj_with(kube, "busy", phase="Running")
    await create(kube, namespace, "patient")
    queued = await cj_with(kube, "patient", phase="Queued")
    assert condition(queued, "Queued")["reason"] == "WaitingForCapacity"  # type: ignore[index]

    await end(kube, busy, contract.ExitCode.OK)
    await cj_with(kube, "busy", phase="Succeeded")
    await wait_jobs(kube, cj="patient")
    pod = await bound_pod(kube, "patient")
    # Admitted and its Job created, with no write since its Queued record.
    assert await status_patches(control_plane, operator, "patient") == 1
    assert (await kube.get(COMPOSITION_JOBS, "patient"))["status"]["phase"] == "Queued"

    # A restart now finds the Job and adopts it: no second Job, nothing written yet.
    operator.kill()
    operator.start()
    await asyncio.sleep(3)
    assert len(await child_jobs(kube, cj="patient")) == 1
    assert await status_patches(control_plane, operator, "patient") == 1

    await cp.start_pod(kube, pod)
    running = await cj_with(kube, "patient", phase="Running")
    assert condition(running, "Queued")["reason"] == "Admitted"  # type: ignore[index]
    assert running["status"]["timings"]["queued"] >= 0
    await end(kube, pod, contract.ExitCode.OK)
    await cj_with(kube, "patient", phase="Succeeded")
    # Queued, Running, Succeeded: as many as the intent, Running and Succeeded of "busy".
    assert await status_patches(control_plane, operator, "patient") == 3
    assert await status_patches(control_plane, operator, "busy") == 3
    assert len(await child_jobs(kube, cj="patient")) == 1

    async def three(client: ClusterClient) -> bool:
        return len(await _events(client, "patient")) >= 3

    await wait_until(kube, three, what="the Events of patient")
    await asyncio.sleep(1)  # and no fourth
    assert sorted(await _events(kube, "patient")) == ["Completed", "Running", "WaitingForCapacity"]
