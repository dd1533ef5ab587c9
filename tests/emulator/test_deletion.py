"""Deletion: finalizers, preconditions, collections; no garbage collection."""

from __future__ import annotations

import pytest

from compose_api.kube import KubeError
from tests.emulator.helpers import cj
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, JOBS


async def test_dependents_are_left_alone(kube: ClusterClient) -> None:
    """No garbage collector runs here (the real control plane has one): ownerReferences are
    stored, and a delete's propagationPolicy checked, not acted on."""
    owner = await kube.create(COMPOSITION_JOBS, cj("a"))
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": "a",
           "uid": owner["metadata"]["uid"], "controller": True}  # fmt: skip
    await kube.create(JOBS, {"metadata": {"name": "a-job", "ownerReferences": [ref]}, "spec": {}})
    await kube.delete(COMPOSITION_JOBS, "a", propagation="Foreground")
    assert await kube.get_or_none(COMPOSITION_JOBS, "a") is None
    (job,) = await kube.list(JOBS)
    assert job["metadata"]["ownerReferences"] == [ref]
    with pytest.raises(KubeError) as caught:
        await kube.delete(JOBS, "a-job", propagation="Sideways")
    assert caught.value.status == 400


async def test_finalizers_hold_an_object_until_they_are_removed(kube: ClusterClient) -> None:
    body = cj("a")
    body["metadata"]["finalizers"] = ["example.com/cleanup"]
    await kube.create(COMPOSITION_JOBS, body)
    marked = await kube.delete(COMPOSITION_JOBS, "a")
    assert marked["metadata"]["deletionTimestamp"]
    still = await kube.get(COMPOSITION_JOBS, "a")
    assert still["metadata"]["finalizers"] == ["example.com/cleanup"]
    with pytest.raises(KubeError) as caught:
        await kube.patch(
            COMPOSITION_JOBS, "a", {"metadata": {"finalizers": ["example.com/cleanup", "more"]}}
        )
    assert caught.value.status == 422
    await kube.patch(COMPOSITION_JOBS, "a", {"metadata": {"finalizers": []}})
    assert await kube.get_or_none(COMPOSITION_JOBS, "a") is None


async def test_delete_preconditions(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    path = "/apis/compose.nextunicorn.dev/v1alpha1/namespaces/default/compositionjobs/a"
    with pytest.raises(KubeError) as caught:
        await kube.request("DELETE", path, json={"preconditions": {"uid": "not-this-one"}})
    assert caught.value.status == 409
    assert await kube.get_or_none(COMPOSITION_JOBS, "a") is not None


async def test_delete_collection_by_label(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a", labels={"team": "x"}))
    await kube.create(COMPOSITION_JOBS, cj("b", labels={"team": "y"}))
    path = "/apis/compose.nextunicorn.dev/v1alpha1/namespaces/default/compositionjobs"
    await kube.request("DELETE", path, params={"labelSelector": "team=x"})
    assert [i["metadata"]["name"] for i in await kube.list(COMPOSITION_JOBS)] == ["b"]
