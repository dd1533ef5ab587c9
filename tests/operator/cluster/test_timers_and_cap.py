"""Transitions found without a watch event (the start deadline) post their Event and free
their slot at once; the cap counts Jobs the Job controller has not finished, exactly; exit 0
without a readable result fails. The sweep runs once a minute here, so nothing below can lean
on it: what happens, happens because of a timer or an event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from compose_api import contract
from tests.operator.cluster.conftest import (
    child_jobs,
    cj_with,
    condition,
    create,
    end,
    most_counted,
    running_pod,
    wait_jobs,
    wait_until,
)
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, EVENTS

pytestmark = pytest.mark.timeout(150)

SETTINGS = {
    "COMPOSE_MAX_RUNNING_PER_NAMESPACE": "1",
    "COMPOSE_RECONCILE_INTERVAL_SECONDS": "60",
    # A pod still pulling its image shows ImagePulling well before its 30 s start deadline.
    "COMPOSE_STARTING_PROGRESS_SECONDS": "5",
}


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return dict(SETTINGS)


async def _job_appears(kube: ClusterClient, name: str, timeout: float) -> None:  # noqa: ASYNC109
    async def check(client: ClusterClient) -> bool:
        return bool(await child_jobs(client, cj=name))

    await wait_until(kube, check, timeout=timeout, what=f"a Job for {name}")


@pytest.mark.parametrize(
    "operator_settings", [{**SETTINGS, "COMPOSE_MAX_RUNNING_PER_NAMESPACE": "3"}]
)
async def test_start_deadlines_found_by_the_timer_fail_with_their_reasons_and_free_the_slots(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    """Three attempts whose pod never runs, side by side: no node fits (the real scheduler),
    the image cannot be pulled, the image is still being pulled (kwok holds it). At the start
    deadline no watch event comes to tell the operator: its timer fails each with its reason,
    posts the Event and admits the queued job at once."""
    deadlines = {"startDeadlineSeconds": 30, "activeDeadlineSeconds": 600}
    await create(kube, namespace, "huge", profile="oversized", execution=deadlines)
    await create(kube, namespace, "no-image", profile="missing-image", execution=deadlines)
    await create(kube, namespace, "stuck", profile="held-image", execution=deadlines)
    await wait_jobs(kube, count=3)
    await create(kube, namespace, "next")
    await cj_with(kube, "next", phase="Queued")
    cj = await cj_with(kube, "huge", reason=("Started", "Unschedulable"))
    assert "no GPU capacity" in condition(cj, "Started")["message"]  # type: ignore[index]
    cj = await cj_with(kube, "no-image", reason=("Started", "ImagePullBackOff"))
    assert cj["status"]["phase"] == "Starting"
    await cj_with(kube, "stuck", reason=("Started", "ImagePulling"))

    reasons = {"huge": "Unschedulable", "no-image": "ImagePullBackOff",
               "stuck": "StartDeadlineExceeded"}  # fmt: skip
    for name, reason in reasons.items():
        cj = await cj_with(kube, name, phase="Failed", timeout=60)
        assert condition(cj, "Failed")["reason"] == reason, name  # type: ignore[index]
    # The queued job is admitted at once, not at the next sweep a minute later.
    await _job_appears(kube, "next", timeout=3)

    def warned(items: list[dict[str, Any]]) -> bool:
        return all(
            any(
                e["involvedObject"]["name"] == name
                and e.get("type") == "Warning"
                and e.get("reason") == reason
                and f"Failed=True {reason}" in e["message"]
                for e in items
            )
            for name, reason in reasons.items()
        )

    await kube.wait_for_list(EVENTS, warned, timeout=5)
    log = operator.log()
    assert "LookupError" not in log
    assert "Traceback" not in log


async def test_the_cap_holds_until_the_job_controller_marks_the_job_complete(
    operator: OperatorProcess, kube: ClusterClient, namespace: str, control_plane: cp.ControlPlane
) -> None:
    await create(kube, namespace, "first")
    pod = await running_pod(kube, "first")
    await create(kube, namespace, "second")
    await cj_with(kube, "second", phase="Queued")
    # A Job controller that lags: the pod succeeds, and the composition with it, but the Job
    # is not Complete yet: it is still a Job that is neither complete nor failed, so it keeps
    # the one slot.
    with control_plane.paused("kube-controller-manager"):
        await end(kube, pod, contract.ExitCode.OK)
        await cj_with(kube, "first", phase="Succeeded")
        await asyncio.sleep(1.5)
        assert await child_jobs(kube, cj="second") == []
        assert (await kube.get(COMPOSITION_JOBS, "second"))["status"]["phase"] == "Queued"
        (first,) = await child_jobs(kube, cj="first")
        assert condition(first, "Complete") is None
    # The Job controller catches up: Complete, and the slot goes to the next job.
    await _job_appears(kube, "second", timeout=10)


async def test_exit_zero_without_a_readable_result_fails_with_its_own_reason(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "garbled")
    pod = await running_pod(kube, "garbled")
    # What the kubelet keeps of a message over its limit: the first 4,096 bytes.
    garbled = ('{"exitCode": 0, "reason": "Completed", "message": "' + "y" * 5000)[:4096]
    await cp.finish_pod(kube, pod, exit_code=0, message=garbled)
    cj = await cj_with(kube, "garbled", phase="Failed")
    failed = condition(cj, "Failed")
    assert failed is not None
    assert failed["reason"] == "ResultUnreadable"
    assert "4096-byte limit" in failed["message"]
    assert "result" not in cj["status"]
    events = await kube.wait_for_list(
        EVENTS, lambda items: any(e.get("reason") == "ResultUnreadable" for e in items)
    )
    assert any(e["type"] == "Warning" for e in events if e.get("reason") == "ResultUnreadable")


async def test_a_burst_never_admits_more_than_the_cap(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    # Admission is decided and taken before any await: concurrent events cannot both take the
    # one free slot, although nothing is locked per namespace.
    names = [f"burst-{index}" for index in range(6)]

    def settled(obj: dict[str, Any] | None) -> bool:
        return (obj or {}).get("status", {}).get("phase") in ("Queued", "Starting", "Running")

    async with most_counted(kube) as most:  # from the first Job event to the last
        await asyncio.gather(*(create(kube, namespace, name) for name in names))
        await wait_jobs(kube)
        for name in names:
            await kube.wait_for(COMPOSITION_JOBS, name, settled, timeout=30)
        await asyncio.sleep(1.0)
    assert most == [1]
    assert len(await child_jobs(kube)) == 1
    phases = [(await kube.get(COMPOSITION_JOBS, n))["status"]["phase"] for n in names]
    assert sorted(phases)[:5] == ["Queued"] * 5
    assert sorted(phases)[5] in ("Running", "Starting")
