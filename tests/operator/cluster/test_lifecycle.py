"""A CompositionJob from creation to its end on the real control plane: the real Job controller
applies backoffLimit, podFailurePolicy and the Job's deadline, the scheduler places the GPU pod
(test_timers_and_cap.py: where it cannot), the garbage collector and the TTL controller delete
what the operator owns. The tests play only the inference container's end."""

from __future__ import annotations

from typing import Any

import pytest

from compose_api import contract, models
from tests.operator.cluster.conftest import (
    child_jobs,
    cj_with,
    condition,
    create,
    end,
    pods_of,
    running_pod,
    wait_until,
)
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, JOBS, NODES

pytestmark = pytest.mark.timeout(180)


async def test_success_puts_the_result_and_the_node_in_status(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "portrait")
    pod = await running_pod(kube, "portrait")
    node = await kube.get(NODES, pod["spec"]["nodeName"])
    assert node["metadata"]["name"].startswith("gpu-")
    job = (await child_jobs(kube))[0]
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][cp.GPU] == "1"
    await cj_with(kube, "portrait", phase="Running")
    await end(kube, pod, contract.ExitCode.OK)
    cj = await cj_with(kube, "portrait", phase="Succeeded")
    status = cj["status"]
    assert status["result"]["s3Uri"] == "s3://results-bucket/x/result.png"
    assert (
        status["result"]["url"] == "https://results-bucket.s3.us-east-1.amazonaws.com/x/result.png"
    )
    assert status["result"]["sha256"] == "ab" * 32
    assert status["seed"] == 42
    assert status["timings"]["inference"] == 8.25
    attempt = status["attempts"][0]
    assert attempt["outcome"] == "Succeeded"
    labels = node["metadata"]["labels"]
    assert (attempt["nodeName"], attempt["instanceType"], attempt["capacityType"]) == (
        node["metadata"]["name"],
        labels[cp.INSTANCE_TYPE_LABEL],
        labels[cp.CAPACITY_TYPE_LABEL],
    )
    assert condition(cj, "Succeeded")["status"] == "True"  # type: ignore[index]
    assert status["observedGeneration"] == cj["metadata"]["generation"]

    async def complete(client: ClusterClient) -> bool:
        jobs = await child_jobs(client)
        return bool(jobs) and condition(jobs[0], "Complete") is not None

    await wait_until(kube, complete, what="the Job controller to complete the Job")


async def test_a_reused_result_is_stored_in_status_as_the_pod_reported_it(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    """The pod copied an earlier job's result (``compose_inference.reuse``): the status keeps
    ``result.reusedFrom`` (the CRD's schema holds it, so the API server does not prune it) and
    the timings of a run that loaded and generated nothing."""
    await create(kube, namespace, "again")
    pod = await running_pod(kube, "again")
    earlier = models.JobReference(namespace=namespace, name="portrait", uid="uid-portrait")
    message = contract.TerminationMessage(
        exit_code=0,
        reason="Completed",
        message=f"reused the 1024x1024 png result of {namespace}/portrait (uid uid-portrait)",
        result=models.Result(
            s3_uri="s3://results-bucket/x/result.png", sha256="ab" * 32, width=1024,
            height=1024, format=models.ImageFormat.PNG, bytes=1000, seed=42, reused_from=earlier,
        ),
        timings=models.Timings(fetch=0.05, reuse=0.02, total=0.08),
    ).to_json()  # fmt: skip
    await cp.finish_pod(kube, pod, exit_code=0, message=message)
    cj = await cj_with(kube, "again", phase="Succeeded")
    status = cj["status"]
    assert status["result"]["reusedFrom"] == {
        "namespace": namespace, "name": "portrait", "uid": "uid-portrait",
    }  # fmt: skip
    assert status["timings"]["reuse"] == 0.02
    assert "modelLoad" not in status["timings"] and "inference" not in status["timings"]


async def test_retryable_failure_is_retried_by_the_job_controller_then_fails(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "weights", execution={"backoffLimit": 1})
    first = await running_pod(kube, "weights", index=0)
    await end(kube, first, contract.ExitCode.MODEL_LOAD_FAILED)
    # Between the attempts (the Job controller's back-off) the job says it is retrying.
    await cj_with(kube, "weights", reason=("Started", "Retrying"))
    # backoffLimit 1: the real controller starts a second pod after the first failure.
    second = await running_pod(kube, "weights", index=1)
    await end(kube, second, contract.ExitCode.MODEL_LOAD_FAILED)
    cj = await cj_with(kube, "weights", phase="Failed")
    failed = condition(cj, "Failed")
    assert failed is not None and failed["reason"] == "ModelLoadFailed"
    assert [a["outcome"] for a in cj["status"]["attempts"]] == ["Failed", "Failed"]
    assert len(await pods_of(kube, "weights")) == 2


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (contract.ExitCode.NO_FACE, "NoFaceFound"),
        (contract.ExitCode.INPUT_REJECTED, "InputRejected"),
        (contract.ExitCode.CONTENT_REJECTED, "ContentRejected"),
    ],
)
async def test_bad_input_fails_at_once_through_pod_failure_policy(
    operator: OperatorProcess,
    kube: ClusterClient,
    namespace: str,
    code: contract.ExitCode,
    reason: str,
) -> None:
    await create(kube, namespace, "faceless", execution={"backoffLimit": 3})
    pod = await running_pod(kube, "faceless")
    await end(kube, pod, code)
    cj = await cj_with(kube, "faceless", phase="Failed")
    failed = condition(cj, "Failed")
    assert failed is not None and failed["reason"] == reason
    assert "said" in failed["message"]
    assert cj["status"]["attempts"][0]["exitCode"] == int(code)

    async def job_failed(client: ClusterClient) -> Any:
        jobs = await child_jobs(client)
        return jobs and condition(jobs[0], "Failed")

    failed_job = await wait_until(kube, job_failed, what="the Job to fail")
    assert failed_job["reason"] == "PodFailurePolicy"
    assert len(await pods_of(kube, "faceless")) == 1  # FailJob: no retry despite backoffLimit 3


async def test_spot_interruption_is_not_counted_and_the_job_runs_again(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "spot", execution={"backoffLimit": 0})
    first = await running_pod(kube, "spot", index=0)
    # A node shutdown: the pod fails with the DisruptionTarget condition (podFailurePolicy
    # Ignore), so even with backoffLimit 0 the real controller starts another pod.
    await cp.finish_pod(
        kube, first, exit_code=137, reason="Error", disruption="TerminationByKubelet"
    )
    second = await running_pod(kube, "spot", index=1)
    await end(kube, second, contract.ExitCode.OK)
    cj = await cj_with(kube, "spot", phase="Succeeded")
    attempts = cj["status"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["Interrupted", "Succeeded"]
    assert attempts[0]["reason"] == "SpotInterrupted"
    job = (await child_jobs(kube))[0]
    assert job["status"].get("failed", 0) == 0


async def test_the_jobs_deadline_ends_a_running_attempt(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "slow")
    await running_pod(kube, "slow")
    await cj_with(kube, "slow", phase="Running")
    # The attempt has run as long as its Job allows: the deadline is cut to 1 s here instead of
    # waiting out the minimum of spec.execution.activeDeadlineSeconds (60 s).
    job = (await child_jobs(kube))[0]
    await kube.patch(JOBS, job["metadata"]["name"], {"spec": {"activeDeadlineSeconds": 1}})
    cj = await cj_with(kube, "slow", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]


async def test_deleting_the_job_lets_the_garbage_collector_remove_its_children(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "gone")
    await running_pod(kube, "gone")
    cj = await cj_with(kube, "gone", phase="Running")
    assert not cj["metadata"].get("finalizers")  # deletion never waits for the operator
    await kube.delete(COMPOSITION_JOBS, "gone", propagation="Background")

    async def collected(client: ClusterClient) -> bool:
        return not await child_jobs(client) and not await pods_of(client, "gone")

    await wait_until(kube, collected, what="the garbage collector to delete the Job and pod")


@pytest.mark.parametrize("operator_settings", [{"COMPOSE_JOB_TTL_SECONDS": "1"}])
async def test_ttl_controller_deletes_the_finished_job_and_the_status_stays(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "brief")
    pod = await running_pod(kube, "brief")
    await end(kube, pod, contract.ExitCode.OK)
    await cj_with(kube, "brief", phase="Succeeded")

    async def deleted(client: ClusterClient) -> bool:
        return not await child_jobs(client)

    await wait_until(kube, deleted, what="the TTL controller to delete the Job")
    cj = await kube.get(COMPOSITION_JOBS, "brief")
    assert cj["status"]["phase"] == "Succeeded"
    assert cj["status"]["result"]["sha256"] == "ab" * 32


@pytest.mark.parametrize("operator_settings", [{"COMPOSE_MAX_RUNNING_PER_NAMESPACE": "1"}])
async def test_namespace_cap_holds_the_second_job_until_the_first_is_done(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "first")
    first = await running_pod(kube, "first")
    await create(kube, namespace, "second")
    await cj_with(kube, "second", phase="Queued")
    assert [j["metadata"]["name"].startswith("first-") for j in await child_jobs(kube)] == [True]
    await end(kube, first, contract.ExitCode.OK)
    second = await running_pod(kube, "second")
    await end(kube, second, contract.ExitCode.OK)
    await cj_with(kube, "second", phase="Succeeded")
    stored = await kube.list(JOBS)
    assert len(stored) == 2


@pytest.mark.parametrize(
    "operator_settings", [{"COMPOSE_RETENTION_TTL_SECONDS_AFTER_FINISHED": "none"}]
)
async def test_retention_deletes_a_finished_job_after_its_own_ttl(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    """spec.ttlSecondsAfterFinished wins over the operator's default (here: keep forever); the
    chart's Role allows the delete, and the garbage collector removes the child Job."""
    await create(kube, namespace, "kept")
    await create(kube, namespace, "short", ttlSecondsAfterFinished=2)
    for name in ("kept", "short"):
        await end(kube, await running_pod(kube, name), contract.ExitCode.OK)
        await cj_with(kube, name, phase="Succeeded")

    async def short_gone(client: ClusterClient) -> bool:
        return await client.get_or_none(COMPOSITION_JOBS, "short") is None

    await wait_until(kube, short_gone, timeout=30, what="retention to delete the job")
    assert (await kube.get(COMPOSITION_JOBS, "kept"))["status"]["phase"] == "Succeeded"

    async def children_gone(client: ClusterClient) -> bool:
        jobs = await child_jobs(client)
        return [j["metadata"]["name"].split("-")[0] for j in jobs] == ["kept"]

    await wait_until(kube, children_gone, what="the garbage collector to delete the child Job")
