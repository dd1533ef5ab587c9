"""Status writes per job: progress within one phase is coalesced, phase changes are not.

Before the Job is created its intent is written (one patch); the Job's creation, its pod's
creation and the pod's placement on a node by the scheduler, all while the image is pulled (kwok
holds the pod), cost one status patch, written at the end of
``COMPOSE_STARTING_PROGRESS_SECONDS`` (a starting Job's normal progress; never sooner than that
after the intent) so the latest state still shows; a phase change (Running) and the terminal
state are written at once. The patches are counted in the API server's audit log, by the
operator's account.
"""

from __future__ import annotations

import asyncio

import pytest

from compose_api import contract
from tests.operator.cluster.conftest import (
    bound_pod,
    cj_with,
    condition,
    create,
    end,
    status_patches,
    wait_jobs,
)
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import NODES

pytestmark = pytest.mark.timeout(90)

WINDOW_SECONDS = 5  # progress in general, and a warning while starting
STARTING_SECONDS = 15  # wide enough that the pod's pending states land inside it on a busy machine


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {
        "COMPOSE_STATUS_COALESCE_SECONDS": str(WINDOW_SECONDS),
        "COMPOSE_STARTING_PROGRESS_SECONDS": str(STARTING_SECONDS),
        "COMPOSE_INFERENCE_IMAGE": cp.HELD_IMAGE,
    }


async def test_pending_progress_is_one_patch_and_phase_changes_are_immediate(
    operator: OperatorProcess, kube: ClusterClient, namespace: str, control_plane: cp.ControlPlane
) -> None:
    await create(kube, namespace, "steady")
    await wait_jobs(kube)
    created = await cj_with(kube, "steady", reason=("Started", "JobCreated"))
    # The first patch records the intent to create the Job (Started=Unknown), before the create,
    # so that a restart can tell a Job never created from one that finished and was deleted.
    # That is one more write per job than the create alone needed; the Job's creation itself
    # (Started=True) is progress within the same phase, so it shares the next coalesced write.
    assert condition(created, "Started")["status"] == "Unknown"  # type: ignore[index]
    assert await status_patches(control_plane, operator, "steady") == 1

    # The pending states inside the window: the Job created, the pod created (Scheduling), the
    # pod bound to a node (ImagePulling).
    pod = await bound_pod(kube, "steady")
    # Not within the short window: a starting Job's normal progress waits the longer one.
    await asyncio.sleep(WINDOW_SECONDS + 1)
    assert await status_patches(control_plane, operator, "steady") == 1
    found = await cj_with(
        kube, "steady", reason=("Started", "ImagePulling"), timeout=STARTING_SECONDS + 15
    )
    node = await kube.get(NODES, pod["spec"]["nodeName"])
    attempt = found["status"]["attempts"][-1]
    assert (attempt["nodeName"], attempt["instanceType"]) == (
        pod["spec"]["nodeName"],
        node["metadata"]["labels"][cp.INSTANCE_TYPE_LABEL],
    )
    assert await status_patches(control_plane, operator, "steady") == 2  # not one per state

    # A phase change is written at once, inside the window of the previous write.
    await cp.start_pod(kube, pod)
    running = await cj_with(kube, "steady", phase="Running", timeout=WINDOW_SECONDS - 1)
    assert condition(running, "Started") is not None
    await end(kube, pod, contract.ExitCode.OK)
    await cj_with(kube, "steady", phase="Succeeded", timeout=WINDOW_SECONDS - 1)
    assert await status_patches(control_plane, operator, "steady") == 4
