"""What users and operations do around a job: reject, suspend and resume, delete, restart the
operator in the middle, and the permissions every operator request needs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from compose_api import contract
from compose_operator import permissions
from tests.operator.conftest import cj_body
from tests.operator.integration.conftest import (
    OperatorProcess,
    condition,
    rewind_to_intent,
    wait_job,
    wait_status,
)
from tests.operator.integration.test_lifecycle import report
from tests.support import cluster_client
from tests.support import kube_cluster as cluster
from tests.support.resources import COMPOSITION_JOBS, EVENTS, JOBS, PODS

pytestmark = pytest.mark.timeout(90)


async def test_rejected_spec_fails_with_the_field_named_and_creates_no_job(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    # The API server would refuse this through the CRD schema; the emulator does not, so the
    # operator's own validation is what is tested here.
    await client.create(COMPOSITION_JOBS, cj_body("bad", params={"steps": 0}))
    cj = await wait_status(client, "bad", phase="Failed")
    accepted = condition(cj, "Accepted")
    assert accepted is not None
    assert accepted["status"] == "False"
    assert accepted["reason"] == "InvalidSpec"
    assert "spec.params.steps" in accepted["message"]
    assert condition(cj, "Failed")["reason"] == "InvalidSpec"  # type: ignore[index]
    assert await client.list(JOBS) == []


async def test_unknown_profile_fails(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("nowhere", profile="does-not-exist"))
    cj = await wait_status(client, "nowhere", phase="Failed")
    failed = condition(cj, "Failed")
    assert failed is not None
    assert failed["reason"] == "UnknownProfile"
    assert "does-not-exist" in failed["message"]
    assert "instantid-sdxl" in failed["message"]
    assert await client.list(JOBS) == []
    events = await client.wait_for_list(
        EVENTS, lambda items: any(e.get("reason") == "UnknownProfile" for e in items)
    )
    assert any(e["type"] == "Warning" for e in events if e.get("reason") == "UnknownProfile")


async def test_suspend_and_resume(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("pause"))
    job = (await wait_job(client))[0]
    name = job["metadata"]["name"]
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await wait_status(client, "pause", phase="Running")

    await client.patch(COMPOSITION_JOBS, "pause", {"spec": {"suspend": True}})
    await client.wait_for(JOBS, name, lambda obj: bool(obj and obj["spec"].get("suspend")))
    await cluster.set_job_suspended(client, job, True)
    cj = await wait_status(client, "pause", phase="Suspended")
    assert condition(cj, "Suspended")["reason"] == "SuspendedByUser"  # type: ignore[index]
    assert await cluster.pods_of_job(client, job) == []

    await client.patch(COMPOSITION_JOBS, "pause", {"spec": {"suspend": False}})
    await client.wait_for(JOBS, name, lambda obj: bool(obj and not obj["spec"].get("suspend")))
    await cluster.set_job_suspended(client, job, False)
    cj = await wait_status(client, "pause", reason=("Suspended", "Resumed"))
    assert cj["status"]["phase"] != "Suspended"
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await cluster.mark_terminated(
        client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    await cluster.sync_job(client, job)
    await wait_status(client, "pause", phase="Succeeded")
    assert len(await client.list(JOBS)) == 1


async def test_suspended_before_start_creates_no_job_until_resumed(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("held", suspend=True))
    await wait_status(client, "held", phase="Suspended")
    assert await client.list(JOBS) == []
    await client.patch(COMPOSITION_JOBS, "held", {"spec": {"suspend": False}})
    job = (await wait_job(client))[0]
    assert job["spec"]["suspend"] is False


async def test_delete_removes_the_children(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("gone"))
    job = (await wait_job(client))[0]
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await wait_status(client, "gone", phase="Running")
    cj = await client.get(COMPOSITION_JOBS, "gone")
    assert not cj["metadata"].get("finalizers")  # deletion never waits for the operator
    await client.delete(COMPOSITION_JOBS, "gone")
    await client.wait_for_list(JOBS, lambda items: items == [])
    await client.wait_for_list(PODS, lambda items: items == [])


async def test_operator_restart_creates_no_second_job_and_keeps_status(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("survivor"))
    job = (await wait_job(client))[0]
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    before = await wait_status(client, "survivor", phase="Running")

    operator.kill()
    # While the operator is down the pod finishes and its Job is garbage-collected (TTL).
    await cluster.mark_terminated(
        client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    await cluster.sync_job(client, job)
    operator.start()
    cj = await wait_status(client, "survivor", phase="Succeeded")
    assert len(await client.list(JOBS)) == 1
    assert cj["status"]["seed"] == before["status"]["seed"]
    started = condition(cj, "Accepted")
    assert started is not None
    assert started["lastTransitionTime"] == condition(before, "Accepted")["lastTransitionTime"]  # type: ignore[index]

    # A finished job stays finished when its children go, across another restart.
    operator.kill()
    await client.delete(JOBS, job["metadata"]["name"], propagation="Background")
    operator.start()
    await client.create(COMPOSITION_JOBS, cj_body("marker"))
    await wait_job(client, count=1)
    await wait_status(client, "marker", phase="Starting")
    cj = await client.get(COMPOSITION_JOBS, "survivor")
    assert cj["status"]["phase"] == "Succeeded"
    names = [j["metadata"]["name"] for j in await client.list(JOBS)]
    assert not any(n.startswith("survivor") for n in names)


async def test_restart_between_admission_and_job_creation_adopts_the_job(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    # Kill the operator as soon as the Job exists; status may or may not say so yet.
    await client.create(COMPOSITION_JOBS, cj_body("twice"))
    await wait_job(client)
    operator.kill()
    operator.start()
    await wait_status(client, "twice", phase="Starting")
    job = (await wait_job(client))[0]
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await wait_status(client, "twice", phase="Running")
    assert len(await client.list(JOBS)) == 1


async def test_every_request_is_covered_by_the_required_permissions(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("audited"))
    job = (await wait_job(client))[0]
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await cluster.mark_terminated(
        client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
    )
    await cluster.sync_job(client, job)
    await wait_status(client, "audited", phase="Succeeded")
    await client.create(COMPOSITION_JOBS, cj_body("late"))
    await wait_job(client, count=2)
    log = await client.request_log()
    mine = [r for r in log if r.user_agent != "compose-test-client" and r.is_resource_request]
    assert mine, "the operator made no requests"
    uncovered: list[Any] = [
        (r.group, r.resource, r.subresource, r.verb)
        for r in mine
        if not permissions.allows(
            r.group or "", r.resource or "", r.verb, clusterwide=True, subresource=r.subresource
        )
    ]
    assert uncovered == []
    verbs = {(r.resource, r.subresource, r.verb) for r in mine}
    assert ("compositionjobs", "status", "patch") in verbs
    assert ("jobs", None, "create") in verbs
    assert not any(
        r.resource == "compositionjobs" and r.verb in ("update", "patch") and r.subresource is None
        for r in mine
    ), "the operator must never write spec"


async def test_a_job_deleted_behind_the_operators_back_fails_the_composition(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("orphan"))
    job = (await wait_job(client))[0]
    pod = await cluster.create_pod_for_job(client, job, node="gpu-1")
    await cluster.mark_running(client, pod)
    await wait_status(client, "orphan", phase="Running")
    await client.delete(JOBS, job["metadata"]["name"], propagation="Background")
    cj = await wait_status(client, "orphan", phase="Failed")
    assert condition(cj, "Failed")["reason"] == "JobLost"  # type: ignore[index]
    assert cj["status"]["attempts"][0]["outcome"] == "Interrupted"
    assert await client.list(JOBS) == []  # not re-created: the attempt is not run twice


async def test_params_changed_before_start_run_as_a_new_attempt(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("edited"))
    first = (await wait_job(client))[0]
    await wait_status(client, "edited", phase="Starting")
    await client.patch(COMPOSITION_JOBS, "edited", {"spec": {"params": {"steps": 50, "seed": 7}}})

    def rebuilt(items: list[dict[str, Any]]) -> bool:
        return [j["metadata"]["labels"]["compose.nextunicorn.dev/attempt"] for j in items] == ["1"]

    jobs = await client.wait_for_list(JOBS, rebuilt)
    second = jobs[0]
    assert second["metadata"]["name"] != first["metadata"]["name"]
    env = second["spec"]["template"]["spec"]["containers"][0]["env"]
    document = json.loads(next(e["value"] for e in env if e["name"] == "COMPOSE_JOB_DOCUMENT"))
    assert document["spec"]["params"]["steps"] == 50
    assert document["seed"] == 7
    assert document["job"]["attempt"] == 1

    pod = await cluster.create_pod_for_job(client, second, node="gpu-1")
    await cluster.mark_running(client, pod)
    await wait_status(client, "edited", phase="Running")
    # Once a pod runs, edits no longer restart the work.
    await client.patch(COMPOSITION_JOBS, "edited", {"spec": {"params": {"steps": 20}}})
    cj = await wait_status(client, "edited", phase="Running")
    await client.wait_for(
        COMPOSITION_JOBS,
        "edited",
        lambda obj: bool(obj and obj["status"].get("observedGeneration") == 3),
    )
    assert [j["metadata"]["name"] for j in await client.list(JOBS)] == [second["metadata"]["name"]]
    assert cj["status"]["seed"] == 7


async def test_restart_between_the_intent_and_the_create_creates_the_job(
    operator: OperatorProcess, client: cluster_client.ClusterClient
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("intended"))
    job = (await wait_job(client))[0]
    operator.kill()
    # As if the operator had died after recording its intent and before the create: the Job
    # does not exist, and status says only that it was about to be created.
    await client.delete(JOBS, job["metadata"]["name"], propagation="Background")
    await client.wait_for_list(JOBS, lambda items: items == [])
    await rewind_to_intent(client, "intended")
    operator.start()
    again = (await wait_job(client))[0]
    assert again["metadata"]["name"] == job["metadata"]["name"]
    pod = await cluster.create_pod_for_job(client, again, node="gpu-1")
    await cluster.mark_running(client, pod)
    cj = await wait_status(client, "intended", phase="Running")
    assert condition(cj, "Started")["status"] == "True"  # type: ignore[index]
    assert len(await client.list(JOBS)) == 1
