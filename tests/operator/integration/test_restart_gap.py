"""A restart never re-runs a job that finished, and was deleted by its TTL, while the operator
was down: the intent to create the Job is in status before the Job exists, so a restarted
operator that finds no Job knows one was created, and how long ago at most."""

from __future__ import annotations

import datetime

import pytest

from compose_api import contract
from tests.operator.conftest import cj_body
from tests.operator.integration.conftest import (
    OperatorProcess,
    condition,
    rewind_to_intent,
    status_patched_before_job_created,
    wait_job,
    wait_status,
)
from tests.operator.integration.test_lifecycle import report
from tests.support import cluster_client
from tests.support import kube_cluster as cluster
from tests.support.resources import COMPOSITION_JOBS, JOBS, PODS

pytestmark = pytest.mark.timeout(90)

TTL_SECONDS = 2


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {"COMPOSE_JOB_TTL_SECONDS": str(TTL_SECONDS)}


async def test_a_job_finished_and_deleted_while_the_operator_was_down_is_not_run_again(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("away"))
    job = (await wait_job(client))[0]
    assert await status_patched_before_job_created(client, "away")
    operator.kill()
    # The operator died right after recording its intent; the Job runs, finishes and its TTL
    # deletes it (and its pods) before the operator is back.
    cj = await rewind_to_intent(client, "away")
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await cluster.mark_terminated(
        client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    await cluster.sync_job(client, job)
    await client.delete(JOBS, job["metadata"]["name"], propagation="Background")
    await client.wait_for_list(PODS, lambda items: items == [])
    intent = condition(cj, "Started")
    assert intent is not None
    since = datetime.datetime.fromisoformat(intent["lastTransitionTime"].replace("Z", "+00:00"))
    ttl_over = since + datetime.timedelta(seconds=TTL_SECONDS + 1)

    async def ttl_passed() -> bool:  # the TTL is a span of time: wait it out
        return datetime.datetime.now(datetime.UTC) > ttl_over

    await cluster_client.poll(ttl_passed, timeout=10)

    operator.start()
    cj = await wait_status(client, "away", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "JobLost"  # type: ignore[index]
    assert await client.list(JOBS) == []  # the finished job was not run a second time
