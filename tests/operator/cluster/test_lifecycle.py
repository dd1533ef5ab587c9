"""A CompositionJob from creation to its end on the real control plane: the real Job controller
applies backoffLimit and podFailurePolicy, the scheduler places (or cannot place) the GPU pod,
the garbage collector and the TTL controller delete what the operator owns. The tests play only
the inference container's end."""

from __future__ import annotations

from typing import Any

import pytest

from compose_api import contract, models
from tests.operator.cluster.conftest import (
    child_jobs,
    cj_with,
    condition,
    pods_of,
    running_pod,
    wait_until,
)
from tests.operator.conftest import cj_body
from tests.operator.integration.conftest import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, JOBS

pytestmark = pytest.mark.timeout(180)


def report(code: contract.ExitCode, message: str = "") -> str:
    """The termination message the inference image writes for ``code``."""
    result = None
    if code == contract.ExitCode.OK:
        result = models.Result(
            s3_uri="s3://results-bucket/x/result.png", sha256="ab" * 32, width=1024,
            height=1024, format=models.ImageFormat.PNG, bytes=1000, seed=42,
        )  # fmt: skip
    return contract.TerminationMessage(
        exit_code=int(code), reason=str(code.reason), message=message, result=result,
        timings=models.Timings(model_load=12.5, inference=8.25, upload=0.5),
    ).to_json()  # fmt: skip


async def create(kube: ClusterClient, namespace: str, name: str, **spec: Any) -> None:
    await kube.create(COMPOSITION_JOBS, cj_body(name, namespace, **spec))


async def end(kube: ClusterClient, pod: dict[str, Any], code: contract.ExitCode, **kw: Any) -> None:
    await cp.finish_pod(kube, pod, exit_code=int(code), message=report(code, "said"), **kw)


async def test_success_through_the_real_job_controller(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "portrait")
    pod = await running_pod(kube, "portrait")
    assert pod["spec"]["nodeName"].startswith("gpu-")
    await cj_with(kube, "portrait", phase="Running")
    await end(kube, pod, contract.ExitCode.OK)
    cj = await cj_with(kube, "portrait", phase="Succeeded")
    assert cj["status"]["result"]["s3Uri"] == "s3://results-bucket/x/result.png"
    assert cj["status"]["attempts"][0]["outcome"] == "Succeeded"
    assert cj["status"]["attempts"][0]["nodeName"] == pod["spec"]["nodeName"]

    async def complete(client: ClusterClient) -> bool:
        jobs = await child_jobs(client)
        return bool(jobs) and condition(jobs[0], "Complete") is not None

    await wait_until(kube, complete, what="the Job controller to complete the Job")


async def test_retryable_failure_is_retried_by_the_job_controller_then_fails(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "weights", execution={"backoffLimit": 1})
    first = await running_pod(kube, "weights", index=0)
    await end(kube, first, contract.ExitCode.MODEL_LOAD_FAILED)
    # backoffLimit 1: the real controller starts a second pod after the first failure.
    second = await running_pod(kube, "weights", index=1)
    await end(kube, second, contract.ExitCode.MODEL_LOAD_FAILED)
    cj = await cj_with(kube, "weights", phase="Failed")
    failed = condition(cj, "Failed")
    assert failed is not None and failed["reason"] == "ModelLoadFailed"
    assert [a["outcome"] for a in cj["status"]["attempts"]] == ["Failed", "Failed"]
    assert len(await pods_of(kube, "weights")) == 2


async def test_bad_input_fails_at_once_through_pod_failure_policy(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "faceless", execution={"backoffLimit": 3})
    pod = await running_pod(kube, "faceless")
    await end(kube, pod, contract.ExitCode.NO_FACE)
    cj = await cj_with(kube, "faceless", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "NoFaceFound"  # type: ignore[index]

    async def job_failed(client: ClusterClient) -> Any:
        jobs = await child_jobs(client)
        return jobs and condition(jobs[0], "Failed")

    failed = await wait_until(kube, job_failed, what="the Job to fail")
    assert failed["reason"] == "PodFailurePolicy"
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
    outcomes = [a["outcome"] for a in cj["status"]["attempts"]]
    assert outcomes == ["Interrupted", "Succeeded"]
    job = (await child_jobs(kube))[0]
    assert job["status"].get("failed", 0) == 0


async def test_no_node_fits_reports_unschedulable_from_the_real_scheduler(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(
        kube, namespace, "huge", profile="oversized",
        execution={"startDeadlineSeconds": 30, "activeDeadlineSeconds": 600},
    )  # fmt: skip
    cj = await cj_with(kube, "huge", reason=("Started", "Unschedulable"))
    assert "no GPU capacity" in condition(cj, "Started")["message"]  # type: ignore[index]
    cj = await cj_with(kube, "huge", phase="Failed", timeout=90)
    assert condition(cj, "Failed")["reason"] == "Unschedulable"  # type: ignore[index]


@pytest.mark.parametrize("operator_settings", [{"COMPOSE_INFERENCE_IMAGE": cp.MISSING_IMAGE}])
async def test_missing_image_reports_image_pull_back_off(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(
        kube, namespace, "no-image",
        execution={"startDeadlineSeconds": 30, "activeDeadlineSeconds": 600},
    )  # fmt: skip
    cj = await cj_with(kube, "no-image", reason=("Started", "ImagePullBackOff"))
    assert cj["status"]["phase"] == "Starting"
    cj = await cj_with(kube, "no-image", phase="Failed", timeout=90)
    assert condition(cj, "Failed")["reason"] == "ImagePullBackOff"  # type: ignore[index]


async def test_deleting_the_job_lets_the_garbage_collector_remove_its_children(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "gone")
    await running_pod(kube, "gone")
    await kube.request(
        "DELETE",
        f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{namespace}/{models.PLURAL}/gone",
        json={"propagationPolicy": "Background"},
    )

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
