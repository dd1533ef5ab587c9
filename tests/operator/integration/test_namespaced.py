"""An operator limited to a list of namespaces leaves the others alone and stays within the
namespaced permissions."""

from __future__ import annotations

import pytest

from compose_operator import permissions
from tests.operator.conftest import cj_body
from tests.operator.integration.conftest import OperatorProcess, wait_job, wait_status
from tests.support import cluster_client
from tests.support.kube_emulator import KubeEmulator
from tests.support.resources import COMPOSITION_JOBS, JOBS

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {"COMPOSE_NAMESPACES": "team-a"}


async def test_only_the_listed_namespaces_are_served(
    operator: OperatorProcess, client: cluster_client.ClusterClient, kube_emulator: KubeEmulator
) -> None:
    await client.create(COMPOSITION_JOBS, cj_body("elsewhere", namespace="team-b"))
    await client.create(COMPOSITION_JOBS, cj_body("mine", namespace="team-a"))
    await wait_job(client, namespace="team-a")
    await wait_status(client, "mine", namespace="team-a", phase="Starting")
    other = await client.get(COMPOSITION_JOBS, "elsewhere", namespace="team-b")
    assert "status" not in other or not other["status"]
    assert await client.list(JOBS, namespace="team-b") == []

    log = await client.request_log()
    mine = [r for r in log if r.user_agent != "compose-test-client" and r.is_resource_request]
    uncovered = [
        (r.group, r.resource, r.subresource, r.verb, r.namespace)
        for r in mine
        if not permissions.allows(
            r.group or "", r.resource or "", r.verb, clusterwide=False, subresource=r.subresource
        )
    ]
    assert uncovered == [], uncovered
    cluster_scoped = {"nodes", "customresourcedefinitions", "namespaces", "clusterkopfpeerings"}
    stray = [
        (r.resource, r.namespace)
        for r in mine
        if r.resource not in cluster_scoped and r.namespace != "team-a"
    ]
    assert stray == []

    # Pods and Jobs are selected by label on the server: the rest of the cluster never arrives.
    child_reads = [
        request
        for request in kube_emulator._requests
        if request.headers.get("User-Agent", "") != "compose-test-client"
        and request.method == "GET"
        and request.url.path.endswith(("/pods", "/jobs"))
    ]
    assert child_reads
    for request in child_reads:
        assert (
            request.params.get("labelSelector") == "app.kubernetes.io/managed-by=compose-operator"
        )
