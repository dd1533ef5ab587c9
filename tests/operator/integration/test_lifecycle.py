"""A CompositionJob from creation to its end, with the tests playing the Job controller and the
kubelet: success, each failure reason, spot interruption then retry, deadlines."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from compose_api import contract, models
from tests.operator.conftest import cj_body
from tests.operator.integration.conftest import OperatorProcess, condition, wait_job, wait_status
from tests.support import cluster_client
from tests.support import kube_cluster as cluster
from tests.support.resources import COMPOSITION_JOBS, JOBS

pytestmark = pytest.mark.timeout(90)

SHA = "ab" * 32


def report(code: contract.ExitCode, message: str = "", *, result: bool = False) -> str:
    """The termination message the inference image writes for ``code``."""
    return contract.TerminationMessage(
        exit_code=int(code),
        reason=str(code.reason),
        message=message,
        result=models.Result(
            s3_uri="s3://results-bucket/default/portrait/x/result.png",
            sha256=SHA,
            width=1024,
            height=1024,
            format=models.ImageFormat.PNG,
            bytes=123456,
            seed=42,
        )
        if result
        else None,
        timings=models.Timings(model_load=12.5, inference=8.25, upload=0.5),
    ).to_json()


async def start(kube: cluster_client.ClusterClient, name: str, **spec: Any) -> dict[str, Any]:
    """Create the CompositionJob and return the child Job the operator creates for it."""
    await kube.create(COMPOSITION_JOBS, cj_body(name, **spec))
    jobs = await wait_job(kube)
    return jobs[0]


async def test_success_puts_the_result_in_status(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    job = await start(client, "portrait")
    assert (
        job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        == 1
    )
    await wait_status(client, "portrait", phase="Starting")
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1", instance_type="g5.2xlarge")
    await wait_status(client, "portrait", reason=("Started", "ImagePulling"))
    await cluster.mark_running(client, pod)
    await wait_status(client, "portrait", phase="Running")
    await cluster.mark_terminated(
        client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    await cluster.sync_job(client, job)
    cj = await wait_status(client, "portrait", phase="Succeeded")
    status = cj["status"]
    assert status["result"]["s3Uri"] == "s3://results-bucket/default/portrait/x/result.png"
    assert status["result"]["url"] == (
        "https://results-bucket.s3.us-east-1.amazonaws.com/default/portrait/x/result.png"
    )
    assert status["result"]["sha256"] == SHA
    assert status["seed"] == 42
    assert status["timings"]["inference"] == 8.25
    assert status["attempts"][0]["instanceType"] == "g5.2xlarge"
    assert status["attempts"][0]["capacityType"] == "spot"
    assert status["attempts"][0]["outcome"] == "Succeeded"
    assert condition(cj, "Succeeded")["status"] == "True"  # type: ignore[index]
    assert status["observedGeneration"] == cj["metadata"]["generation"]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (contract.ExitCode.NO_FACE, "NoFaceFound"),
        (contract.ExitCode.INPUT_REJECTED, "InputRejected"),
        (contract.ExitCode.CONTENT_REJECTED, "ContentRejected"),
    ],
)
async def test_bad_input_fails_at_once(
    operator: OperatorProcess,
    client: cluster_client.ClusterClient,
    code: contract.ExitCode,
    reason: str,
) -> None:
    job = await start(client, "bad-input")
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await cluster.mark_terminated(client, pod, exit_code=int(code), message=report(code, "nope"))
    await cluster.sync_job(client, job)
    cj = await wait_status(client, "bad-input", phase="Failed")
    failed = condition(cj, "Failed")
    assert failed is not None
    assert failed["reason"] == reason
    assert "nope" in failed["message"]
    assert cj["status"]["attempts"][0]["exitCode"] == int(code)


async def test_model_load_failure_is_retried_then_fails(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    job = await start(client, "weights", execution={"backoffLimit": 1})
    for _ in range(2):
        pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
        await cluster.mark_running(client, pod)
        code = contract.ExitCode.MODEL_LOAD_FAILED
        await cluster.mark_terminated(
            client, pod, exit_code=int(code), message=report(code, "checksum mismatch")
        )
        await cluster.sync_job(client, job)
        if _ == 0:
            await wait_status(client, "weights", reason=("Started", "Retrying"))
    cj = await wait_status(client, "weights", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "ModelLoadFailed"  # type: ignore[index]
    assert [a["outcome"] for a in cj["status"]["attempts"]] == ["Failed", "Failed"]


async def test_spot_interruption_then_retry_then_success(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    job = await start(client, "spot")
    first = await cluster.create_pod_for_job(client, job, node="spot-1")
    await cluster.mark_running(client, first)
    await cluster.mark_disrupted(client, first)
    await cluster.sync_job(client, job)
    cj = await wait_status(client, "spot", reason=("Started", "SpotInterrupted"))
    assert cj["status"]["phase"] == "Starting"
    second = await cluster.create_pod_for_job(client, job, node="od-1", capacity_type="on-demand")
    await cluster.mark_running(client, second)
    await cluster.mark_terminated(
        client, second, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    await cluster.sync_job(client, job)
    cj = await wait_status(client, "spot", phase="Succeeded")
    attempts = cj["status"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["Interrupted", "Succeeded"]
    assert attempts[0]["reason"] == "SpotInterrupted"
    assert attempts[1]["capacityType"] == "on-demand"
    stored = await client.get(JOBS, job["metadata"]["name"])
    assert stored["status"]["failed"] == 0  # the interruption did not count


async def test_unschedulable_reports_no_gpu_capacity_then_fails_at_the_start_deadline(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    job = await start(client, "no-gpu", execution={"startDeadlineSeconds": 30})
    pod = await cluster.create_pod_for_job(client, job)
    await cluster.mark_unschedulable(client, pod)
    cj = await wait_status(client, "no-gpu", reason=("Started", "Unschedulable"))
    assert "no GPU capacity" in condition(cj, "Started")["message"]  # type: ignore[index]
    # The Job controller started the Job 31 s ago: the start deadline has passed.
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=31)
    await client.patch_status(JOBS, job["metadata"]["name"], {"startTime": _rfc3339(past)})
    cj = await wait_status(client, "no-gpu", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "Unschedulable"  # type: ignore[index]
    await client.wait_for(JOBS, job["metadata"]["name"], lambda obj: obj is None)


async def test_image_pull_back_off(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    job = await start(client, "bad-image", execution={"startDeadlineSeconds": 30})
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_image_pull_backoff(client, pod)
    cj = await wait_status(client, "bad-image", reason=("Started", "ImagePullBackOff"))
    assert cj["status"]["phase"] == "Starting"
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=31)
    await client.patch_status(JOBS, job["metadata"]["name"], {"startTime": _rfc3339(past)})
    cj = await wait_status(client, "bad-image", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "ImagePullBackOff"  # type: ignore[index]


async def test_start_deadline_without_any_pod(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    job = await start(client, "stuck", execution={"startDeadlineSeconds": 30})
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=31)
    await client.patch_status(JOBS, job["metadata"]["name"], {"startTime": _rfc3339(past)})
    cj = await wait_status(client, "stuck", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "StartDeadlineExceeded"  # type: ignore[index]
    await client.wait_for(JOBS, job["metadata"]["name"], lambda obj: obj is None)


async def test_deadline_exceeded(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    job = await start(client, "slow")
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await wait_status(client, "slow", phase="Running")
    await cluster.fail_job(client, job, reason="DeadlineExceeded")
    cj = await wait_status(client, "slow", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
