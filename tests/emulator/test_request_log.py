"""The request log: every request as RBAC sees it, with its caller and outcome."""

from __future__ import annotations

import contextlib

from compose_api.kube import KubeError
from tests.emulator.helpers import cj
from tests.support.cluster_client import ClusterClient
from tests.support.kube_emulator import KubeEmulator
from tests.support.resources import COMPOSITION_JOBS, PODS, TEST_CLIENT_USER_AGENT


async def test_each_request_is_logged_with_verb_resource_and_status(
    kube: ClusterClient, kube_emulator: KubeEmulator
) -> None:
    start = len(kube_emulator.request_log)
    await kube.create(COMPOSITION_JOBS, cj("a"), namespace="ns1")
    await kube.patch_status(COMPOSITION_JOBS, "a", {"phase": "X"}, namespace="ns1")
    await kube.list(PODS, all_namespaces=True)
    with contextlib.suppress(KubeError):
        await kube.get(COMPOSITION_JOBS, "missing")
    await kube.request("DELETE", "/api/v1/namespaces/ns1/pods", params={"labelSelector": "a=b"})
    records = kube_emulator.request_log[start:]
    assert [
        (r.method, r.verb, r.group, r.version, r.resource, r.subresource, r.namespace, r.status)
        for r in records
    ] == [
        ("POST", "create", "compose.nextunicorn.dev", "v1alpha1", "compositionjobs", None,
         "ns1", 201),
        ("PATCH", "patch", "compose.nextunicorn.dev", "v1alpha1", "compositionjobs", "status",
         "ns1", 200),
        ("GET", "list", "", "v1", "pods", None, None, 200),
        ("GET", "get", "compose.nextunicorn.dev", "v1alpha1", "compositionjobs", None,
         "default", 404),
        ("DELETE", "deletecollection", "", "v1", "pods", None, "ns1", 200),
    ]  # fmt: skip
    assert all(r.user_agent == TEST_CLIENT_USER_AGENT for r in records)


async def test_discovery_and_namespace_urls_are_logged_correctly(
    kube: ClusterClient, kube_emulator: KubeEmulator
) -> None:
    start = len(kube_emulator.request_log)
    await kube.request("GET", "/apis")
    await kube.request("GET", "/api/v1/namespaces")
    await kube.request("GET", "/api/v1/namespaces/default")
    records = kube_emulator.request_log[start:]
    assert [(r.verb, r.resource, r.name) for r in records] == [
        ("get", None, None),
        ("list", "namespaces", None),
        ("get", "namespaces", "default"),
    ]


async def test_the_log_is_served_over_http(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    records = await kube.request_log()
    creates = [r for r in records if r.verb == "create"]
    assert [(r.resource, r.status) for r in creates] == [("compositionjobs", 201)]
    later = await kube.request_log(since=len(records))
    assert later == []  # reading the log is not an API request


async def test_a_refused_watch_is_logged_with_its_status(
    kube: ClusterClient, kube_emulator: KubeEmulator
) -> None:
    start = len(kube_emulator.request_log)
    with contextlib.suppress(KubeError):
        async for _ in kube.watch(COMPOSITION_JOBS, label_selector="a in b"):
            break
    (record,) = kube_emulator.request_log[start:]
    assert (record.verb, record.status) == ("watch", 400)
