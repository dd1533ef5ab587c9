"""The Job controller and kubelet as played by tests/support/kube_cluster.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import kube_cluster
from tests.support.cluster_client import ClusterClient
from tests.support.resources import JOBS, NODES, PODS

TEMPLATE = {
    "metadata": {"labels": {"app": "compose"}, "annotations": {"a": "b"}},
    "spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "inference", "image": "registry/compose:1"}],
    },
}


async def _job(kube: ClusterClient, **spec: Any) -> dict[str, Any]:
    body = {
        "metadata": {"name": "cj-a-0", "namespace": "team"},
        "spec": {"backoffLimit": 2, "template": TEMPLATE, **spec},
    }
    return await kube.create(JOBS, body)


async def test_pod_for_job_has_template_labels_owner_and_job_labels(kube: ClusterClient) -> None:
    job = await _job(kube)
    pod = await kube_cluster.create_pod_for_job(kube, job)
    labels = pod["metadata"]["labels"]
    assert labels["app"] == "compose"
    assert labels["batch.kubernetes.io/job-name"] == labels["job-name"] == "cj-a-0"
    assert labels["batch.kubernetes.io/controller-uid"] == job["metadata"]["uid"]
    (owner,) = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "Job",
        job["metadata"]["uid"],
        True,
    )
    assert pod["metadata"]["name"].startswith("cj-a-0-")
    assert pod["spec"]["containers"][0]["image"] == "registry/compose:1"
    assert pod["status"]["phase"] == "Pending"
    refreshed = await kube.get(JOBS, "cj-a-0", namespace="team")
    assert refreshed["status"]["active"] == 1
    assert refreshed["status"]["startTime"]


async def test_scheduling_on_a_labelled_node(kube: ClusterClient) -> None:
    job = await _job(kube)
    pod = await kube_cluster.create_pod_for_job(
        kube, job, node="ip-10-0-0-1", instance_type="g5.2xlarge", capacity_type="on-demand"
    )
    assert pod["spec"]["nodeName"] == "ip-10-0-0-1"
    assert kube_cluster.condition(pod, "PodScheduled") is not None
    node = await kube.get(NODES, "ip-10-0-0-1")
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "g5.2xlarge"
    assert node["metadata"]["labels"]["karpenter.sh/capacity-type"] == "on-demand"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"


async def test_unschedulable_then_image_pull_back_off(kube: ClusterClient) -> None:
    job = await _job(kube)
    pod = await kube_cluster.create_pod_for_job(kube, job)
    pod = await kube_cluster.mark_unschedulable(kube, pod)
    scheduled = kube_cluster.condition(pod, "PodScheduled")
    assert scheduled is not None
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]
    pod = await kube_cluster.mark_scheduled(kube, pod, node="n1")
    pod = await kube_cluster.mark_image_pulling(kube, pod)
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ContainerCreating"
    pod = await kube_cluster.mark_image_pull_backoff(kube, pod)
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ImagePullBackOff"
    assert "registry/compose:1" in waiting["message"]
    # Conditions are merged by type, not appended twice.
    types = [c["type"] for c in pod["status"]["conditions"]]
    assert len(types) == len(set(types))


async def test_success_path_completes_the_job(kube: ClusterClient) -> None:
    job = await _job(kube)
    pod = await kube_cluster.create_pod_for_job(kube, job, node="n1")
    pod = await kube_cluster.mark_running(kube, pod)
    started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    message = json.dumps({"exitCode": 0, "reason": "Completed"})
    pod = await kube_cluster.mark_terminated(kube, pod, exit_code=0, message=message)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["message"]) == (0, message)
    assert terminated["startedAt"] == started
    assert pod["status"]["phase"] == "Succeeded"
    job = await kube_cluster.sync_job(kube, job)
    assert (job["status"]["succeeded"], job["status"]["active"]) == (1, 0)
    types = [(c["type"], c["status"]) for c in job["status"]["conditions"]]
    assert types == [("SuccessCriteriaMet", "True"), ("Complete", "True")]


POLICY = {
    "rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [10, 11]}},
    ]
}


async def test_spot_interruption_is_not_counted_under_an_ignore_rule(kube: ClusterClient) -> None:
    job = await _job(kube, podFailurePolicy=POLICY)
    pod = await kube_cluster.create_pod_for_job(kube, job, node="spot-1")
    await kube_cluster.mark_running(kube, pod)
    pod = await kube_cluster.mark_disrupted(kube, pod)
    disruption = kube_cluster.condition(pod, "DisruptionTarget")
    assert disruption is not None and disruption["reason"] == "TerminationByKubelet"
    assert pod["status"]["phase"] == "Failed"
    job = await kube_cluster.sync_job(kube, job)
    assert (job["status"]["failed"], job["status"]["active"]) == (0, 0)
    assert kube_cluster.condition(job, "Failed") is None


async def test_disruption_can_delete_the_pod(kube: ClusterClient) -> None:
    job = await _job(kube)
    pod = await kube_cluster.create_pod_for_job(kube, job, node="spot-1")
    await kube_cluster.mark_disrupted(kube, pod, delete=True)
    assert await kube.list(PODS, namespace="team") == []


@pytest.mark.parametrize(("exit_code", "reason"), [(11, "PodFailurePolicy"), (1, None)])
async def test_fail_job_rule_fails_at_once(
    kube: ClusterClient, exit_code: int, reason: str | None
) -> None:
    job = await _job(kube, podFailurePolicy=POLICY)
    pod = await kube_cluster.create_pod_for_job(kube, job, node="n1")
    await kube_cluster.mark_terminated(kube, pod, exit_code=exit_code)
    job = await kube_cluster.sync_job(kube, job)
    failed = kube_cluster.condition(job, "Failed")
    if reason is None:
        assert failed is None
        assert job["status"]["failed"] == 1
    else:
        assert failed is not None and failed["reason"] == reason
        assert "exit code 11 matching FailJob rule at index 1" in failed["message"]
        assert kube_cluster.condition(job, "FailureTarget") is not None


async def test_backoff_limit_exceeded(kube: ClusterClient) -> None:
    job = await _job(kube, backoffLimit=1)
    for _ in range(2):
        pod = await kube_cluster.create_pod_for_job(kube, job, node="n1")
        await kube_cluster.mark_terminated(kube, pod, exit_code=1)
    job = await kube_cluster.sync_job(kube, job)
    failed = kube_cluster.condition(job, "Failed")
    assert failed is not None and failed["reason"] == "BackoffLimitExceeded"
    assert job["status"]["failed"] == 2


async def test_deadline_exceeded_removes_running_pods(kube: ClusterClient) -> None:
    job = await _job(kube)
    pod = await kube_cluster.create_pod_for_job(kube, job, node="n1")
    await kube_cluster.mark_running(kube, pod)
    job = await kube_cluster.fail_job(kube, job)
    failed = kube_cluster.condition(job, "Failed")
    assert failed is not None and failed["reason"] == "DeadlineExceeded"
    assert await kube.list(PODS, namespace="team") == []


async def test_suspend_and_resume_conditions(kube: ClusterClient) -> None:
    job = await _job(kube)
    await kube_cluster.create_pod_for_job(kube, job)
    job = await kube_cluster.set_job_suspended(kube, job, True)
    suspended = kube_cluster.condition(job, "Suspended")
    assert suspended is not None and suspended["status"] == "True"
    assert await kube.list(PODS, namespace="team") == []
    job = await kube_cluster.set_job_suspended(kube, job, False)
    resumed = kube_cluster.condition(job, "Suspended")
    assert resumed is not None and (resumed["status"], resumed["reason"]) == ("False", "JobResumed")
