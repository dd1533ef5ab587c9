"""What users and operations do around a job on the real control plane: an unknown profile,
suspend and resume (the real Job controller removes and recreates the pod), edits before the
start, a Job deleted behind the operator's back, and the operator killed and restarted at each
point of a job's life."""

from __future__ import annotations

import json
from typing import Any

import pytest

from compose_api import contract
from tests.operator.cluster.conftest import (
    bound_pod,
    child_jobs,
    cj_with,
    condition,
    create,
    end,
    pods_of,
    rewind_to_intent,
    running_pod,
    wait_jobs,
    wait_until,
)
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, EVENTS, JOBS, PODS

pytestmark = pytest.mark.timeout(120)

ATTEMPT = "compose.nextunicorn.dev/attempt"


async def warnings_about(kube: ClusterClient, name: str) -> list[tuple[str, str]]:
    """The Warning Events posted about the CompositionJob ``name``: (reason, message)."""
    return [
        (e["reason"], e["message"])
        for e in await kube.list(EVENTS)
        if e["involvedObject"]["name"] == name and e["type"] == "Warning"
    ]


async def test_unknown_profile_fails_and_creates_no_job(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "nowhere", profile="does-not-exist")
    cj = await cj_with(kube, "nowhere", phase="Failed")
    failed = condition(cj, "Failed")
    assert failed is not None
    assert failed["reason"] == "UnknownProfile"
    assert "does-not-exist" in failed["message"]
    assert "instantid-sdxl" in failed["message"]
    assert await kube.list(JOBS) == []
    events = await kube.wait_for_list(
        EVENTS, lambda items: any(e.get("reason") == "UnknownProfile" for e in items)
    )
    assert any(e["type"] == "Warning" for e in events if e.get("reason") == "UnknownProfile")


async def test_suspend_and_resume(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "pause")
    await running_pod(kube, "pause")
    await cj_with(kube, "pause", phase="Running")
    name = (await child_jobs(kube))[0]["metadata"]["name"]

    await kube.patch(COMPOSITION_JOBS, "pause", {"spec": {"suspend": True}})
    await kube.wait_for(JOBS, name, lambda obj: bool(obj and obj["spec"].get("suspend")))
    cj = await cj_with(kube, "pause", phase="Suspended")
    assert condition(cj, "Suspended")["reason"] == "SuspendedByUser"  # type: ignore[index]

    async def no_pods(client: ClusterClient) -> bool:
        return not await pods_of(client, "pause")

    await wait_until(kube, no_pods, what="the Job controller to remove the suspended pod")

    def stopped(obj: dict[str, Any] | None) -> bool:
        attempts = ((obj or {}).get("status") or {}).get("attempts") or []
        return [(a["outcome"], a.get("reason")) for a in attempts] == [
            ("Interrupted", "SuspendedByUser")
        ]

    # The attempt the suspension stopped says so: neither a failure nor a spot interruption.
    await kube.wait_for(COMPOSITION_JOBS, "pause", stopped)

    await kube.patch(COMPOSITION_JOBS, "pause", {"spec": {"suspend": False}})
    await kube.wait_for(JOBS, name, lambda obj: bool(obj and not obj["spec"].get("suspend")))
    cj = await cj_with(kube, "pause", reason=("Suspended", "Resumed"))
    assert cj["status"]["phase"] != "Suspended"
    pod = await running_pod(kube, "pause")  # a new pod from the Job controller
    await end(kube, pod, contract.ExitCode.OK)
    cj = await cj_with(kube, "pause", phase="Succeeded")
    assert len(await kube.list(JOBS)) == 1
    assert [(a["outcome"], a.get("reason")) for a in cj["status"]["attempts"]] == [
        ("Interrupted", "SuspendedByUser"),
        ("Succeeded", "Completed"),
    ]
    assert cj["status"]["attempt"] == 1
    assert await warnings_about(kube, "pause") == []


async def test_a_pod_stopped_by_a_suspension_is_neither_a_failure_nor_a_retry(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    """As on a real node, the stopped pod stays a while: its container ends with the SIGTERM's
    143 and the pod shows Failed before it goes. A finalizer of the test's holds it there,
    through the suspension and the resume."""
    await create(kube, namespace, "stopped")
    pod = await running_pod(kube, "stopped")
    await cj_with(kube, "stopped", phase="Running")
    pod_name = pod["metadata"]["name"]
    hold = [{"op": "add", "path": "/metadata/finalizers/-", "value": "compose.test/hold"}]
    await kube.patch(PODS, pod_name, hold)
    try:
        await kube.patch(COMPOSITION_JOBS, "stopped", {"spec": {"suspend": True}})

        def sigtermed(obj: dict[str, Any] | None) -> bool:
            statuses = ((obj or {}).get("status") or {}).get("containerStatuses") or [{}]
            ended = (statuses[0].get("state") or {}).get("terminated") or {}
            return (
                obj is not None
                and obj["status"]["phase"] == "Failed"
                and ended.get("exitCode") == 143
            )

        await kube.wait_for(PODS, pod_name, sigtermed)

        def ended_by_suspension(obj: dict[str, Any] | None) -> bool:
            attempts = ((obj or {}).get("status") or {}).get("attempts") or []
            return [(a["outcome"], a.get("reason"), a.get("exitCode")) for a in attempts] == [
                ("Interrupted", "SuspendedByUser", 143)
            ]

        cj = await kube.wait_for(COMPOSITION_JOBS, "stopped", ended_by_suspension)
        assert cj["status"]["phase"] == "Suspended"
        assert condition(cj, "Failed") is None

        # Resumed while the stopped pod is still there: the Job controller starts a new one.
        await kube.patch(COMPOSITION_JOBS, "stopped", {"spec": {"suspend": False}})
        second = await running_pod(kube, "stopped", index=1)
        cj = await cj_with(kube, "stopped", phase="Running")
        assert ended_by_suspension({"status": {"attempts": cj["status"]["attempts"][:1]}})
    finally:
        held = await kube.get(PODS, pod_name)
        kept = [f for f in held["metadata"].get("finalizers") or [] if f != "compose.test/hold"]
        await kube.patch(PODS, pod_name, {"metadata": {"finalizers": kept or None}})
    await end(kube, second, contract.ExitCode.OK)
    cj = await cj_with(kube, "stopped", phase="Succeeded")
    assert [(a["outcome"], a.get("reason")) for a in cj["status"]["attempts"]] == [
        ("Interrupted", "SuspendedByUser"),
        ("Succeeded", "Completed"),
    ]
    assert await warnings_about(kube, "stopped") == []


async def test_suspended_before_start_creates_no_job_until_resumed(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "held", suspend=True)
    await cj_with(kube, "held", phase="Suspended")
    assert await kube.list(JOBS) == []
    await kube.patch(COMPOSITION_JOBS, "held", {"spec": {"suspend": False}})
    job = (await wait_jobs(kube))[0]
    assert job["spec"]["suspend"] is False
    await running_pod(kube, "held")


async def test_operator_restart_creates_no_second_job_and_keeps_status(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "survivor")
    pod = await running_pod(kube, "survivor")
    before = await cj_with(kube, "survivor", phase="Running")
    job = (await child_jobs(kube))[0]

    operator.kill()
    # While the operator is down the pod finishes and the Job controller completes the Job.
    await end(kube, pod, contract.ExitCode.OK)

    async def complete(client: ClusterClient) -> bool:
        jobs = await child_jobs(client)
        return bool(jobs) and condition(jobs[0], "Complete") is not None

    await wait_until(kube, complete, what="the Job controller to complete the Job")
    operator.start()
    cj = await cj_with(kube, "survivor", phase="Succeeded")
    assert len(await kube.list(JOBS)) == 1
    assert cj["status"]["seed"] == before["status"]["seed"]
    accepted = condition(cj, "Accepted")
    assert accepted is not None
    assert accepted["lastTransitionTime"] == condition(before, "Accepted")["lastTransitionTime"]  # type: ignore[index]

    # A finished job stays finished when its children go, across another restart.
    operator.kill()
    await kube.delete(JOBS, job["metadata"]["name"], propagation="Background")
    await kube.wait_for(JOBS, job["metadata"]["name"], lambda obj: obj is None)
    operator.start()
    await create(kube, namespace, "marker")
    await cj_with(kube, "marker", phase=("Starting", "Running"))
    cj = await kube.get(COMPOSITION_JOBS, "survivor")
    assert cj["status"]["phase"] == "Succeeded"
    names = [j["metadata"]["name"] for j in await kube.list(JOBS)]
    assert not any(n.startswith("survivor") for n in names)


async def test_restart_between_admission_and_job_creation_adopts_the_job(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    # Kill the operator as soon as the Job exists; status may or may not say so yet.
    await create(kube, namespace, "twice")
    await wait_jobs(kube)
    operator.kill()
    operator.start()
    await running_pod(kube, "twice")
    await cj_with(kube, "twice", phase="Running")
    assert len(await kube.list(JOBS)) == 1


async def test_a_job_deleted_behind_the_operators_back_fails_the_composition(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "orphan")
    await running_pod(kube, "orphan")
    await cj_with(kube, "orphan", phase="Running")
    job = (await child_jobs(kube))[0]
    await kube.delete(JOBS, job["metadata"]["name"], propagation="Background")
    cj = await cj_with(kube, "orphan", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "JobLost"  # type: ignore[index]
    assert cj["status"]["attempts"][0]["outcome"] == "Interrupted"
    assert await kube.list(JOBS) == []  # not re-created: the attempt is not run twice


@pytest.mark.parametrize("operator_settings", [{"COMPOSE_INFERENCE_IMAGE": cp.HELD_IMAGE}])
async def test_params_changed_before_start_run_as_a_new_attempt(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    """The image is still being pulled (kwok holds the pod) when the params change."""
    await create(kube, namespace, "edited")
    first = (await wait_jobs(kube))[0]
    await bound_pod(kube, "edited")
    await cj_with(kube, "edited", phase="Starting")
    await kube.patch(COMPOSITION_JOBS, "edited", {"spec": {"params": {"steps": 50, "seed": 7}}})

    def rebuilt(items: list[dict[str, Any]]) -> bool:
        return [j["metadata"]["labels"][ATTEMPT] for j in items] == ["1"]

    jobs = await kube.wait_for_list(JOBS, rebuilt, timeout=30)
    second = jobs[0]
    assert second["metadata"]["name"] != first["metadata"]["name"]
    env = second["spec"]["template"]["spec"]["containers"][0]["env"]
    document = json.loads(next(e["value"] for e in env if e["name"] == "COMPOSE_JOB_DOCUMENT"))
    assert document["spec"]["params"]["steps"] == 50
    assert document["seed"] == 7
    assert document["job"]["attempt"] == 1

    pod = await bound_pod(kube, "edited", job=second["metadata"]["name"])
    await cp.start_pod(kube, pod)
    await cj_with(kube, "edited", phase="Running")
    # Once a pod runs, edits no longer restart the work.
    await kube.patch(COMPOSITION_JOBS, "edited", {"spec": {"params": {"steps": 20}}})
    await kube.wait_for(
        COMPOSITION_JOBS,
        "edited",
        lambda obj: bool(obj and obj["status"].get("observedGeneration") == 3),
    )
    cj = await cj_with(kube, "edited", phase="Running")
    assert [j["metadata"]["name"] for j in await kube.list(JOBS)] == [second["metadata"]["name"]]
    assert cj["status"]["seed"] == 7


async def test_restart_between_the_intent_and_the_create_creates_the_job(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "intended")
    job = (await wait_jobs(kube))[0]
    operator.kill()
    # As if the operator had died after recording its intent and before the create: the Job
    # does not exist, and status says only that it was about to be created.
    await kube.delete(JOBS, job["metadata"]["name"], propagation="Background")
    await kube.wait_for(JOBS, job["metadata"]["name"], lambda obj: obj is None)
    await rewind_to_intent(kube, "intended")
    operator.start()
    again = (await wait_jobs(kube))[0]
    assert again["metadata"]["name"] == job["metadata"]["name"]
    assert again["metadata"]["uid"] != job["metadata"]["uid"]
    await running_pod(kube, "intended")
    cj = await cj_with(kube, "intended", phase="Running")
    assert condition(cj, "Started")["status"] == "True"  # type: ignore[index]
    assert len(await kube.list(JOBS)) == 1
