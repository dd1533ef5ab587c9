"""Deletion: finalizers, and garbage collection through ownerReferences."""

from __future__ import annotations

from typing import Any

import pytest

from compose_api.kube import KubeError
from tests.emulator.helpers import cj
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, CONFIG_MAPS, JOBS, PODS


def _owned_by(owner: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


async def _family(kube: ClusterClient) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A CompositionJob owning a Job owning a Pod."""
    owner = await kube.create(COMPOSITION_JOBS, cj("a"))
    job = await kube.create(
        JOBS, {"metadata": {"name": "a-job", "ownerReferences": _owned_by(owner)}, "spec": {}}
    )
    pod = await kube.create(
        PODS, {"metadata": {"name": "a-job-x", "ownerReferences": _owned_by(job)}, "spec": {}}
    )
    return owner, job, pod


async def test_deleting_the_owner_collects_jobs_and_pods(kube: ClusterClient) -> None:
    await _family(kube)
    await kube.create(JOBS, {"metadata": {"name": "bystander"}, "spec": {}})
    await kube.delete(COMPOSITION_JOBS, "a")
    assert await kube.get_or_none(COMPOSITION_JOBS, "a") is None
    assert [j["metadata"]["name"] for j in await kube.list(JOBS)] == ["bystander"]
    assert await kube.list(PODS) == []


async def test_deleting_a_job_orphans_its_pods_by_default(kube: ClusterClient) -> None:
    await _family(kube)
    await kube.delete(JOBS, "a-job")
    (pod,) = await kube.list(PODS)
    assert "ownerReferences" not in pod["metadata"]


async def test_background_propagation_on_a_job_removes_its_pods(kube: ClusterClient) -> None:
    await _family(kube)
    await kube.delete(JOBS, "a-job", propagation="Background")
    assert await kube.list(PODS) == []


async def test_orphan_propagation_keeps_dependents(kube: ClusterClient) -> None:
    await _family(kube)
    await kube.delete(COMPOSITION_JOBS, "a", propagation="Orphan")
    (job,) = await kube.list(JOBS)
    assert "ownerReferences" not in job["metadata"]
    assert len(await kube.list(PODS)) == 1


async def test_foreground_deletion_waits_for_blocking_dependents(kube: ClusterClient) -> None:
    _owner, _job, pod = await _family(kube)
    await kube.patch(PODS, pod["metadata"]["name"], {"metadata": {"finalizers": ["hold/it"]}})
    deleting = await kube.delete(COMPOSITION_JOBS, "a", propagation="Foreground")
    assert "foregroundDeletion" in deleting["metadata"]["finalizers"]
    assert deleting["metadata"]["deletionTimestamp"]
    # The pod is held by its finalizer, so its Job and the CompositionJob wait for it.
    held = await kube.get(PODS, pod["metadata"]["name"])
    assert held["metadata"]["deletionTimestamp"]
    assert await kube.get_or_none(COMPOSITION_JOBS, "a") is not None
    await kube.patch(PODS, pod["metadata"]["name"], {"metadata": {"finalizers": None}})
    assert await kube.list(PODS) == []
    assert await kube.list(JOBS) == []
    assert await kube.get_or_none(COMPOSITION_JOBS, "a") is None


async def test_a_dependent_with_another_live_owner_survives(kube: ClusterClient) -> None:
    first = await kube.create(COMPOSITION_JOBS, cj("first"))
    second = await kube.create(COMPOSITION_JOBS, cj("second"))
    refs = [*_owned_by(first), dict(_owned_by(second)[0], controller=False)]
    await kube.create(CONFIG_MAPS, {"metadata": {"name": "shared", "ownerReferences": refs}})
    await kube.delete(COMPOSITION_JOBS, "first")
    shared = await kube.get(CONFIG_MAPS, "shared")
    assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["second"]
    await kube.delete(COMPOSITION_JOBS, "second")
    assert await kube.get_or_none(CONFIG_MAPS, "shared") is None


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
