"""Least privilege from the other side: every permission the operator asks for is one it uses.

``test_control.py`` checks that each request the operator makes is covered by
``permissions.REQUIRED_PERMISSIONS`` (and the deployment tests check that the chart grants exactly
that list); this scenario walks the operator through the paths behind each grant — peering,
adoption after a 409, a rebuild, suspend, node lookup — and checks that nothing granted in
cluster-wide mode went unused.
"""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest

from compose_api import contract
from compose_operator import names, permissions
from tests.operator.conftest import cj_body
from tests.operator.integration.conftest import OperatorProcess, operator_env, wait_status
from tests.operator.integration.test_lifecycle import report
from tests.support import cluster_client
from tests.support import kube_cluster as cluster
from tests.support.resources import CLUSTER_KOPF_PEERINGS, COMPOSITION_JOBS, JOBS

pytestmark = pytest.mark.timeout(120)

PEERING = "audit"


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


async def _used(client: cluster_client.ClusterClient) -> set[tuple[str, str, str]]:
    used = set()
    for r in await client.request_log():
        if r.user_agent == "compose-test-client" or not r.is_resource_request:
            continue
        resource = f"{r.resource}/{r.subresource}" if r.subresource else str(r.resource)
        used.add((r.group or "", resource, r.verb))
    return used


async def test_every_granted_permission_is_used(
    kube_url: str,
    profiles_path: pathlib.Path,
    client: cluster_client.ClusterClient,
    tmp_path: pathlib.Path,
) -> None:
    # No peering object: the operator creates its own (the grant's "create").
    # Retention after 3 s: a finished job is read again when due, then deleted (get, delete).
    env = operator_env(
        kube_url,
        profiles_path,
        COMPOSE_STANDALONE="false",
        COMPOSE_PEERING_NAME=PEERING,
        COMPOSE_RETENTION_TTL_SECONDS_AFTER_FINISHED="3",
    )
    operator = OperatorProcess(env, tmp_path / "operator.log")
    try:
        # A Job already there under the attempt's name (a crash after the create): 409, adopt.
        operator_down = await client.create(COMPOSITION_JOBS, cj_body("adopted"))
        uid = operator_down["metadata"]["uid"]
        owner: dict[str, Any] = {
            "apiVersion": "compose.nextunicorn.dev/v1alpha1",
            "kind": "CompositionJob",
            "name": "adopted",
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        await client.create(
            JOBS,
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "name": names.job_name("adopted", uid, 0),
                    "ownerReferences": [owner],
                },
                "spec": {"template": {"spec": {"containers": [], "restartPolicy": "Never"}}},
            },
        )
        operator.start()

        # A rebuild (params edited before any pod ran): a second Job created, the first deleted.
        await client.create(COMPOSITION_JOBS, cj_body("edited"))
        await wait_status(client, "edited", phase="Starting", timeout=40)
        await client.patch(COMPOSITION_JOBS, "edited", {"spec": {"params": {"steps": 50}}})
        jobs = await client.wait_for_list(
            JOBS,
            lambda items: any(
                j["metadata"]["labels"].get("compose.nextunicorn.dev/attempt") == "1" for j in items
            ),
            label_selector=f"{names.MANAGED_BY_LABEL}={names.MANAGED_BY}",
            timeout=30,
        )
        second = next(
            j for j in jobs if j["metadata"]["labels"]["compose.nextunicorn.dev/attempt"] == "1"
        )
        # A pod on a node (node lookup), then suspend (the Job is patched).
        pod = await cluster.create_pod_for_job(client, second, node="gpu-1")
        await cluster.mark_running(client, pod)
        await wait_status(client, "edited", phase="Running")
        await client.patch(COMPOSITION_JOBS, "edited", {"spec": {"suspend": True}})
        await client.wait_for(
            JOBS, second["metadata"]["name"], lambda obj: bool(obj and obj["spec"].get("suspend"))
        )
        # A restart with attempts recorded: the operator lists the pods afresh.
        operator.stop()
        await client.patch(COMPOSITION_JOBS, "edited", {"spec": {"suspend": False}})
        operator.start()
        await client.wait_for(
            JOBS,
            second["metadata"]["name"],
            lambda obj: bool(obj and not obj["spec"].get("suspend")),
            timeout=40,
        )
        await cluster.mark_terminated(
            client, pod, exit_code=0, message=report(contract.ExitCode.OK, result=True)
        )
        await cluster.sync_job(client, second)
        await wait_status(client, "edited", phase="Succeeded")
        await wait_status(client, "adopted", phase="Starting")
        gone = await client.wait_for(
            COMPOSITION_JOBS, "edited", lambda obj: obj is None, timeout=20
        )
        assert gone is None, "retention did not delete the finished job"

        # The safety-net sweep asks for the peering object once per interval (0.5 s here).
        peering_read = ("kopf.dev", "clusterkopfpeerings", "get")
        deadline = asyncio.get_running_loop().time() + 10
        while peering_read not in await _used(client):
            assert asyncio.get_running_loop().time() < deadline, "the sweep never read peering"
            await asyncio.sleep(0.1)
        peering = await client.get_or_none(CLUSTER_KOPF_PEERINGS, PEERING)
        assert peering is not None, "the operator did not create its peering object"
        unused = _granted_clusterwide() - await _used(client)
        assert unused == set(), f"granted but never used: {sorted(unused)}\n{operator.log()}"
    finally:
        operator.stop()
