"""Discovery: the declared resources, and CRDs created through the API."""

from __future__ import annotations

from tests.support.cluster_client import ClusterClient
from tests.support.resources import CRDS, ResourceSpec


async def test_compositionjobs_are_discoverable_with_their_status_subresource(
    kube: ClusterClient,
) -> None:
    body = await kube.request("GET", "/apis/compose.nextunicorn.dev/v1alpha1")
    by_name = {r["name"]: r for r in body["resources"]}
    assert set(by_name) == {"compositionjobs", "compositionjobs/status"}
    assert by_name["compositionjobs"]["kind"] == "CompositionJob"
    assert by_name["compositionjobs"]["namespaced"] is True
    assert by_name["compositionjobs"]["shortNames"] == ["cj"]
    groups = {g["name"] for g in (await kube.request("GET", "/apis"))["groups"]}
    assert {"batch", "kopf.dev", "apiextensions.k8s.io", "coordination.k8s.io"} <= groups
    core = {r["name"] for r in (await kube.request("GET", "/api/v1"))["resources"]}
    assert {"pods", "pods/status", "events", "namespaces", "nodes"} <= core


async def test_a_crd_created_through_the_api_becomes_a_resource(kube: ClusterClient) -> None:
    crd = {
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": True, "subresources": {"status": {}}}],
        },
    }
    await kube.create(CRDS, crd)
    widgets = ResourceSpec("example.com", "v1", "widgets", "Widget", namespaced=False,
                           status_subresource=True)  # fmt: skip
    created = await kube.create(widgets, {"metadata": {"name": "w"}, "spec": {"size": 1}})
    assert created["kind"] == "Widget"
    patched = await kube.patch_status(widgets, "w", {"ready": True})
    assert patched["status"] == {"ready": True}
    body = await kube.request("GET", "/apis/example.com/v1")
    assert {r["name"] for r in body["resources"]} == {"widgets", "widgets/status"}
