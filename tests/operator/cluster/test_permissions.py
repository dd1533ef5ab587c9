"""Least privilege on the real API server, with exactly the chart's RBAC: every request the
operator makes is covered by ``permissions.REQUIRED_PERMISSIONS`` (the deployment tests check
that the chart grants exactly that list), a namespaced operator stays in its namespace and reads
only its own Jobs and pods, and every permission granted cluster-wide is one the operator uses.
Its requests are read from the API server's audit log, by its service account."""

from __future__ import annotations

import datetime
import pathlib
import subprocess
import time
import urllib.error
from typing import Any

import pytest

from compose_api import contract, models, pools
from compose_operator import names, permissions
from tests.operator.cluster.conftest import (
    MANAGED,
    bound_pod,
    cj_with,
    create,
    end,
    field_selector,
    label_selector,
    operator_requests,
    running_operator,
    running_pod,
    wait_jobs,
)
from tests.operator.conftest import cj_body
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.cluster_fixtures import kubectl_path
from tests.support.resources import (
    COMPOSITION_JOBS,
    COMPOSITION_POOLS,
    DEPLOYMENTS,
    JOBS,
    LEASES,
    RequestRecord,
)

pytestmark = pytest.mark.timeout(150)

PEERING_CRDS = cp.REPO / "charts" / "nextunicorn-compose" / "crds" / "kopf-peering.yaml"
ATTEMPT = "compose.nextunicorn.dev/attempt"


def _uncovered(records: list[RequestRecord], *, clusterwide: bool) -> list[tuple[Any, ...]]:
    return [
        (r.group, r.resource, r.subresource, r.verb)
        for r in records
        if not permissions.allows(
            r.group or "", r.resource or "", r.verb, clusterwide=clusterwide,
            subresource=r.subresource,
        )
    ]  # fmt: skip


def _spec_writes(records: list[RequestRecord]) -> list[RequestRecord]:
    return [
        r
        for r in records
        if r.resource == models.PLURAL and r.verb in ("update", "patch") and r.subresource is None
    ]


async def test_a_namespaced_operator_stays_in_its_namespace_and_its_permissions(
    operator: OperatorProcess, kube: ClusterClient, namespace: str, control_plane: cp.ControlPlane
) -> None:
    other = f"{namespace}-b"
    control_plane.create_namespace(other)
    try:
        await kube.create(COMPOSITION_JOBS, cj_body("elsewhere", other))
        await create(kube, namespace, "mine")
        await end(kube, await running_pod(kube, "mine"), contract.ExitCode.OK)
        await cj_with(kube, "mine", phase="Succeeded")
        await create(kube, namespace, "late")
        await wait_jobs(kube, count=2)
        await cj_with(kube, "late", phase=("Starting", "Running"))
        elsewhere = await kube.get(COMPOSITION_JOBS, "elsewhere", namespace=other)
        assert not elsewhere.get("status")
        assert await kube.list(JOBS, namespace=other) == []
    finally:
        control_plane.delete_namespace(other)

    mine = [r for r in operator_requests(control_plane, operator) if r.is_resource_request]
    assert mine, "the operator made no requests"
    assert _uncovered(mine, clusterwide=False) == []
    assert [r for r in mine if r.status == 403] == []
    cluster_scoped = {"nodes", "customresourcedefinitions", "namespaces"}
    stray = [
        (r.resource, r.namespace)
        for r in mine
        if r.resource not in cluster_scoped and r.namespace != namespace
    ]
    assert stray == []
    verbs = {(r.resource, r.subresource, r.verb) for r in mine}
    assert (models.PLURAL, "status", "patch") in verbs
    assert ("jobs", None, "create") in verbs
    assert _spec_writes(mine) == [], "the operator must never write spec"
    # Pods and Jobs are selected by label on the server: the rest of the cluster never arrives
    # (watches: everything the operator manages; lists: also one job's children by uid).
    reads = [r for r in mine if r.resource in ("pods", "jobs") and r.verb in ("list", "watch")]
    assert {label_selector(r) for r in reads if r.verb == "watch"} == {MANAGED}
    for read in reads:
        selector = label_selector(read) or ""
        assert selector == MANAGED or selector.startswith(f"{names.UID_LABEL}="), read.path


def _apply_peering_crds(plane: cp.ControlPlane) -> None:
    subprocess.run(
        [kubectl_path(), "apply", "--server-side", "-f", str(PEERING_CRDS)],
        capture_output=True, text=True, env=plane.kubectl_env(), check=True, timeout=60,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:  # established and served (its watch cache filled)
        try:
            plane.request("GET", "/apis/kopf.dev/v1/clusterkopfpeerings")
            return
        except urllib.error.HTTPError as error:
            if error.code not in (404, 429) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _granted_clusterwide() -> set[tuple[str, str, str]]:
    granted = set()
    for item in permissions.REQUIRED_PERMISSIONS:
        if item.scope in (
            permissions.Scope.NAMESPACED_ONLY,
            permissions.Scope.CLUSTER_NAMESPACED_ONLY,
        ):
            continue
        granted |= {(item.api_group, item.resource, verb) for verb in item.verbs}
    return granted


def _used(plane: cp.ControlPlane, operator: OperatorProcess) -> set[tuple[str, str, str]]:
    return {
        (r.group or "", f"{r.resource}/{r.subresource}" if r.subresource else str(r.resource),
         r.verb)
        for r in operator_requests(plane, operator)
        if r.is_resource_request
    }  # fmt: skip


def _held_job(name: str, namespace: str, owner: dict[str, Any]) -> dict[str, Any]:
    """A Job of the attempt's name, owned by the CompositionJob, whose pod kwok holds."""
    meta = owner["metadata"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "ownerReferences": [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": cp.HELD_IMAGE}]}}},
    }  # fmt: skip


async def test_every_permission_granted_cluster_wide_is_used(
    control_plane: cp.ControlPlane,
    namespace: str,
    kube: ClusterClient,
    profiles_path: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    """The scenario walks the paths behind each grant: peering (the operator creates its own
    object), adoption after a 409, a rebuild, suspend, node lookup, a restart, retention."""
    _apply_peering_crds(control_plane)
    peering = f"audit-{namespace}"[:63]
    settings = {
        "COMPOSE_STANDALONE": "false",
        "COMPOSE_PEERING_NAME": peering,
        "COMPOSE_RETENTION_TTL_SECONDS_AFTER_FINISHED": "3",
        "COMPOSE_INFERENCE_IMAGE": cp.HELD_IMAGE,
    }
    # A Job already there under the attempt's name (a crash after the create): 409, adopt.
    adopted = await create(kube, namespace, "adopted")
    job_name = names.job_name("adopted", adopted["metadata"]["uid"], 0)
    await kube.create(JOBS, _held_job(job_name, namespace, adopted))
    with running_operator(
        control_plane, namespace, profiles_path, tmp_path, settings, clusterwide=True
    ) as operator:
        try:
            await _walk(kube, namespace, control_plane, operator)
        except BaseException:
            print(f"--- operator log ---\n{operator.log()[-20000:]}")
            raise
        peering_object = await kube.request(
            "GET", f"/apis/kopf.dev/v1/clusterkopfpeerings/{peering}"
        )
        assert peering_object["metadata"]["name"] == peering  # created by the operator
        mine = [r for r in operator_requests(control_plane, operator) if r.is_resource_request]
        assert _uncovered(mine, clusterwide=True) == []
        assert _spec_writes(mine) == []
        unused = _granted_clusterwide() - _used(control_plane, operator)
        assert unused == set(), f"granted but never used: {sorted(unused)}"


async def _walk(
    kube: ClusterClient, namespace: str, plane: cp.ControlPlane, operator: OperatorProcess
) -> None:
    # A rebuild (params edited before any pod ran): a second Job created, the first deleted.
    await create(kube, namespace, "edited")
    await cj_with(kube, "edited", phase="Starting")
    await kube.patch(COMPOSITION_JOBS, "edited", {"spec": {"params": {"steps": 50}}})
    jobs = await kube.wait_for_list(
        JOBS,
        lambda items: any(j["metadata"]["labels"].get(ATTEMPT) == "1" for j in items),
        label_selector=MANAGED,
        timeout=30,
    )
    second = next(j for j in jobs if j["metadata"]["labels"][ATTEMPT] == "1")
    name = second["metadata"]["name"]
    # Its pod on a node (node lookup) starts; then suspend (the Job is patched).
    pod = await bound_pod(kube, "edited", job=name)
    await cp.start_pod(kube, pod)
    await cj_with(kube, "edited", phase="Running")
    await kube.patch(COMPOSITION_JOBS, "edited", {"spec": {"suspend": True}})
    await kube.wait_for(JOBS, name, lambda obj: bool(obj and obj["spec"].get("suspend")))
    # A restart with attempts recorded: the operator lists the pods afresh, and resumes.
    operator.stop()
    await kube.patch(COMPOSITION_JOBS, "edited", {"spec": {"suspend": False}})
    operator.start()
    await kube.wait_for(
        JOBS, name, lambda obj: bool(obj and not obj["spec"].get("suspend")), timeout=40
    )
    pod = await bound_pod(kube, "edited", job=name)
    await cp.start_pod(kube, pod)
    await end(kube, pod, contract.ExitCode.OK)
    await cj_with(kube, "edited", phase="Succeeded")
    await cj_with(kube, "adopted", phase="Starting")
    gone = await kube.wait_for(COMPOSITION_JOBS, "edited", lambda obj: obj is None, timeout=20)
    assert gone is None, "retention did not delete the finished job"
    await _walk_a_pool(kube, namespace)
    # The operator follows its own peering object (one object, selected on the server) to know
    # whether a peer outranks it; kopf's peering watch is not selected by name.
    peering = f"metadata.name={operator.env['COMPOSE_PEERING_NAME']}"
    own = [
        r
        for r in operator_requests(plane, operator)
        if (r.resource, r.verb) == ("clusterkopfpeerings", "watch") and field_selector(r) == peering
    ]
    assert own, "the operator never watched its peering object"


async def _walk_a_pool(kube: ClusterClient, namespace: str) -> None:
    """A pool scaled up for a job (its Deployment created, its status written), a worker's Lease
    that stops being renewed after the job was assigned to it (the operator reads the Lease
    before calling the worker lost), and the pool scaled back to zero (the Deployment patched)."""
    pool = {
        "apiVersion": models.API_VERSION,
        "kind": pools.KIND,
        "metadata": {"name": "audit-pool", "namespace": namespace},
        "spec": {"profile": "smoke", "maxReplicas": 1, "scaleToZeroAfterSeconds": 1},
    }
    await kube.create(COMPOSITION_POOLS, pool)
    await create(kube, namespace, "pooled", profile="smoke",
                 execution={"pool": "audit-pool", "startDeadlineSeconds": 60})  # fmt: skip
    await kube.wait_for(
        DEPLOYMENTS, pools.deployment_name("audit-pool"), lambda obj: obj is not None, timeout=30
    )
    now = datetime.datetime.now(datetime.UTC)
    lease = pools.lease_body(
        pool="audit-pool", namespace=namespace, pod="audit-worker", pod_uid=None,
        instance="i1", lease_seconds=2, now=now,
    )  # fmt: skip
    await kube.create(LEASES, lease)
    assigned = await cj_with(kube, "pooled", reason=("Started", "AssignedToWorker"), timeout=30)
    assert assigned["status"]["assignment"]["worker"] == "audit-worker"
    # Never renewed: lost before it accepted, the job waits for another worker.
    await cj_with(kube, "pooled", reason=("Started", "WaitingForWorker"), timeout=30)
    await kube.delete(COMPOSITION_JOBS, "pooled", namespace=namespace)
    await kube.wait_for(
        DEPLOYMENTS,
        pools.deployment_name("audit-pool"),
        lambda obj: bool(obj) and obj["spec"]["replicas"] == 0,
        timeout=30,
    )
