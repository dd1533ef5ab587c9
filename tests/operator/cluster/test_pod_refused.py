"""The Job controller cannot create a Job's pod: here a LimitRange caps a container at one CPU
and the inference pod asks for three, as a namespace's limits, its ResourceQuota, an admission
policy or Pod Security would refuse it. The Job exists, but no pod comes. The job shows the
Job controller's answer (its FailedCreate Event) as a warning, and starts once the pod can be
created. A pool whose workers' pods are refused says so too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from compose_api import contract, models, pools
from tests.operator.cluster.conftest import (
    child_jobs,
    cj_with,
    condition,
    create,
    end,
    running_pod,
    status_patches,
    wait_until,
)
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_POOLS, EVENTS, ResourceSpec

pytestmark = pytest.mark.timeout(150)

LIMIT_RANGES = ResourceSpec("", "v1", "limitranges", "LimitRange")
REFUSAL = "cpu limit of 1"  # the API server's words for the LimitRange's cap


async def refusals(kube: ClusterClient, job: str) -> list[dict[str, Any]]:
    """The Job controller's FailedCreate Events of ``job`` (one per try: each names a pod)."""
    return [
        e
        for e in await kube.list(EVENTS, field_selector="reason=FailedCreate")
        if e["involvedObject"]["name"] == job
    ]


async def test_a_pod_the_job_controller_cannot_create_is_shown_with_its_reason(
    operator: OperatorProcess, kube: ClusterClient, namespace: str, control_plane: cp.ControlPlane
) -> None:
    limit = {"type": "Container", "max": {"cpu": "1"}}
    small = {"metadata": {"name": "small"}, "spec": {"limits": [limit]}}
    await kube.create(LIMIT_RANGES, small)
    await create(kube, namespace, "big")
    refused = await cj_with(kube, "big", reason=("Started", "PodCreateFailed"))
    assert refused["status"]["phase"] == "Starting"
    job = (await child_jobs(kube, cj="big"))[0]["metadata"]["name"]
    message = condition(refused, "Started")["message"]  # type: ignore[index]
    # The Job controller's answer, as the API server gave it, naming the pod it tried.
    assert message.startswith(f'job {job} cannot create its pod: Pod "{job}-')
    assert REFUSAL in message
    assert not refused["status"].get("attempts")  # no pod, no attempt

    async def warned(client: ClusterClient) -> bool:
        return any(
            e["involvedObject"]["name"] == "big"
            and (e["reason"], e["type"]) == ("PodCreateFailed", "Warning")
            and REFUSAL in e["message"]
            for e in await client.list(EVENTS)
        )

    await wait_until(kube, warned, what="the Warning Event of the refused pod")
    # The Job controller tries again (backing off), each try naming a new pod: the same answer
    # is not written again. Two more tries, then longer than the operator's coalescing.
    written = await status_patches(control_plane, operator, "big")
    tries = len(await refusals(kube, job))

    async def tried_twice_more(client: ClusterClient) -> bool:
        return len(await refusals(client, job)) >= tries + 2

    await wait_until(kube, tried_twice_more, what="two more tries of the Job controller")
    await asyncio.sleep(6)
    assert await status_patches(control_plane, operator, "big") == written

    # The limit goes: the Job controller's next try creates the pod (it backs off between
    # tries, so this may take a while), and the job runs as any other.
    await kube.delete(LIMIT_RANGES, "small")
    pod = await running_pod(kube, "big", timeout=90)
    running = await cj_with(kube, "big", phase="Running")
    assert condition(running, "Started")["reason"] == models.Reason.RUNNING  # type: ignore[index]
    await end(kube, pod, contract.ExitCode.OK)
    done = await cj_with(kube, "big", phase="Succeeded")
    assert [a["outcome"] for a in done["status"]["attempts"]] == ["Succeeded"]


async def test_a_pool_whose_workers_cannot_be_created_says_why(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    """The same limit for a pool's workers: their Deployment's ReplicaSet cannot create them.
    The Deployment controller copies the ReplicaSet's ReplicaFailure up, and the pool reads it
    from its Deployment's watch."""
    limit = {"type": "Container", "max": {"cpu": "500m"}}  # the smoke profile asks for 1
    await kube.create(LIMIT_RANGES, {"metadata": {"name": "tiny"}, "spec": {"limits": [limit]}})
    pool = {
        "apiVersion": models.API_VERSION,
        "kind": pools.KIND,
        "metadata": {"name": "limited", "namespace": namespace},
        "spec": {"profile": "smoke", "minReplicas": 1, "maxReplicas": 1},
    }
    await kube.create(COMPOSITION_POOLS, pool)

    def refused(obj: dict[str, Any] | None) -> bool:
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        return any(
            (c["type"], c["status"], c["reason"]) == ("Available", "False", "PodCreateFailed")
            for c in conditions
        )

    found = await kube.wait_for(COMPOSITION_POOLS, "limited", refused, timeout=60)
    assert "the workers' pods cannot be created" in found["status"]["message"]
    assert "cpu" in found["status"]["message"]
