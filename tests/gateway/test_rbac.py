"""Every request the gateway makes is covered by permissions.REQUIRED_PERMISSIONS, and every
verb granted there is used: the Role the chart renders from it is exact. The gateway runs with
the chart's Role on the real API server, so a missing grant is a 403 there; its requests are
read from the API server's audit log."""

from __future__ import annotations

import asyncio

from compose_gateway import permissions
from tests.gateway import operator_play
from tests.gateway.conftest import (
    NAMESPACE,
    GatewayCluster,
    MakeGateway,
    Receiver,
    original_request,
)
from tests.support import cluster_client
from tests.support.cluster_client import poll
from tests.support.resources import COMPOSITION_JOBS


async def test_the_gateway_uses_exactly_its_permissions(
    make_gateway: MakeGateway,
    cluster: cluster_client.ClusterClient,
    receiver: Receiver,
    gateway_cluster: GatewayCluster,
) -> None:
    since = gateway_cluster.plane.audit_offset()
    gateway = await make_gateway(callback_allow_cidrs="127.0.0.0/8", callback_allow_http=True)
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    created = (await gateway.post(original_request(callbackUrl=receiver.url))).json()
    await gateway.post(original_request(), headers={"Idempotency-Key": "k"})
    await gateway.post(original_request(), headers={"Idempotency-Key": "k"})
    await gateway.get(created["statusUrl"])
    await gateway.get("/jobs")
    # A request that waits for its job watches it until the operator's end arrives.
    before = await _names(cluster)
    waiting = asyncio.create_task(gateway.post(original_request(), params={"wait": "20"}))
    found: list[str] = []

    async def created_one() -> bool:
        found[:] = sorted(await _names(cluster) - before)
        return bool(found)

    await poll(created_one, timeout=10)
    await operator_play.fail(cluster, found[0], NAMESPACE, reason="JobLost", message="")
    assert (await waiting).status_code == 502
    await operator_play.fail(cluster, created["jobId"], NAMESPACE, reason="JobLost", message="")

    async def delivered() -> bool:
        return len(receiver.received) == 1

    await poll(delivered, timeout=10)
    assert (await gateway.client.delete(created["statusUrl"], headers={"X-API-Key": (
        "cgw_alice-0123456789abcdefghijklmnopqrstuvwxyz")})).status_code == 200  # fmt: skip

    log = [
        record
        for record in gateway_cluster.plane.request_records(user=gateway_cluster.user, since=since)
        if record.is_resource_request
    ]
    assert log, "the gateway made no request"
    for record in log:
        assert record.namespace == NAMESPACE, record
        assert permissions.allows(
            verb=record.verb,
            api_group=record.group or "",
            resource=record.resource or "",
            subresource=record.subresource,
        ), record
    used = {record.verb for record in log}
    granted = {verb for rule in permissions.REQUIRED_PERMISSIONS for verb in rule.verbs}
    assert used == granted


def test_the_role_rules_are_namespaced_and_minimal() -> None:
    assert permissions.rbac_rules() == [
        {
            "apiGroups": ["compose.nextunicorn.dev"],
            "resources": ["compositionjobs"],
            "verbs": ["create", "get", "list", "watch", "patch", "delete"],
        }
    ]
    assert not any(p.cluster_scoped for p in permissions.REQUIRED_PERMISSIONS)
    assert not permissions.allows(verb="update", api_group="compose.nextunicorn.dev",
                                  resource="compositionjobs")  # fmt: skip
    assert not permissions.allows(
        verb="patch", api_group="compose.nextunicorn.dev", resource="compositionjobs",
        subresource="status",
    )  # fmt: skip


async def _names(cluster: cluster_client.ClusterClient) -> set[str]:
    return {
        j["metadata"]["name"] for j in await cluster.list(COMPOSITION_JOBS, namespace=NAMESPACE)
    }
