"""A restart never re-runs a job that finished, and was deleted by its TTL, while the operator
was down: the intent to create the Job is in status before the Job exists, so a restarted
operator that finds no Job knows one was created, and how long ago at most. The real TTL
controller deletes the finished Job, the garbage collector its pod."""

from __future__ import annotations

import datetime

import pytest

from compose_api import contract, models
from tests.operator.cluster.conftest import (
    child_jobs,
    cj_with,
    condition,
    create,
    end,
    operator_requests,
    pods_of,
    rewind_to_intent,
    running_pod,
    wait_jobs,
    wait_until,
)
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import JOBS

pytestmark = pytest.mark.timeout(120)

TTL_SECONDS = 2


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {"COMPOSE_JOB_TTL_SECONDS": str(TTL_SECONDS)}


async def test_a_job_finished_and_deleted_while_the_operator_was_down_is_not_run_again(
    operator: OperatorProcess, kube: ClusterClient, namespace: str, control_plane: cp.ControlPlane
) -> None:
    await create(kube, namespace, "away")
    await wait_jobs(kube)
    pod = await running_pod(kube, "away")
    operator.kill()
    # Its first status patch (the intent) ended before its Job create began.
    mine = operator_requests(control_plane, operator)
    first_patch = next(
        i
        for i, r in enumerate(mine)
        if r.resource == models.PLURAL and r.subresource == "status" and r.name == "away"
    )
    create_job = next(i for i, r in enumerate(mine) if r.resource == "jobs" and r.verb == "create")
    assert first_patch < create_job

    # The operator died right after recording its intent; the Job runs, finishes and the TTL
    # controller deletes it (and the garbage collector its pod) before the operator is back.
    cj = await rewind_to_intent(kube, "away")
    await end(kube, pod, contract.ExitCode.OK)

    async def all_gone(client: ClusterClient) -> bool:
        return not await child_jobs(client) and not await pods_of(client, "away")

    await wait_until(kube, all_gone, what="the TTL controller to delete the finished Job")
    intent = condition(cj, "Started")
    assert intent is not None
    since = datetime.datetime.fromisoformat(intent["lastTransitionTime"].replace("Z", "+00:00"))
    ttl_over = since + datetime.timedelta(seconds=TTL_SECONDS + 1)

    async def ttl_passed(_: ClusterClient) -> bool:  # the TTL is a span of time: wait it out
        return datetime.datetime.now(datetime.UTC) > ttl_over

    await wait_until(kube, ttl_passed, timeout=10, what="the TTL to pass")

    operator.start()
    cj = await cj_with(kube, "away", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "JobLost"  # type: ignore[index]
    assert await kube.list(JOBS) == []  # the finished job was not run a second time
