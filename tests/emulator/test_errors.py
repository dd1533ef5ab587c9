"""Errors are Kubernetes Status objects with the API server's codes and reasons."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from compose_api.kube import KubeError
from tests.emulator.helpers import cj
from tests.support.cluster_client import ClusterClient
from tests.support.kube_emulator import KubeEmulator
from tests.support.resources import COMPOSITION_JOBS, EVENTS, JOBS, NODES


async def _error(coro: Any) -> KubeError:
    with pytest.raises(KubeError) as caught:
        await coro
    return caught.value


async def test_duplicate_create_is_409_already_exists(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    error = await _error(kube.create(COMPOSITION_JOBS, cj("a")))
    assert error.status == 409
    assert error.reason == "AlreadyExists"
    assert error.details == {
        "name": "a",
        "group": "compose.nextunicorn.dev",
        "kind": "compositionjobs",
    }
    assert error.message == 'compositionjobs.compose.nextunicorn.dev "a" already exists'


async def test_same_name_in_another_namespace_is_fine(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    other = await kube.create(COMPOSITION_JOBS, cj("a"), namespace="elsewhere")
    assert other["metadata"]["namespace"] == "elsewhere"


@pytest.mark.parametrize("verb", ["get", "patch", "delete"])
async def test_missing_objects_are_404_not_found(kube: ClusterClient, verb: str) -> None:
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "get": lambda: kube.get(JOBS, "ghost"),
        "patch": lambda: kube.patch(JOBS, "ghost", {"spec": {}}),
        "delete": lambda: kube.delete(JOBS, "ghost"),
    }
    error = await _error(calls[verb]())
    assert (error.status, error.reason) == (404, "NotFound")
    assert error.message == 'jobs.batch "ghost" not found'


async def test_unknown_resources_are_404(kube: ClusterClient) -> None:
    error = await _error(kube.request("GET", "/apis/example.com/v1/widgets"))
    assert error.status == 404


async def test_stale_resource_version_is_409_conflict(kube: ClusterClient) -> None:
    created = await kube.create(COMPOSITION_JOBS, cj("a"))
    old_rv = created["metadata"]["resourceVersion"]
    await kube.patch(COMPOSITION_JOBS, "a", {"spec": {"suspend": True}})
    error = await _error(
        kube.patch(COMPOSITION_JOBS, "a", {"metadata": {"resourceVersion": old_rv}, "spec": {}})
    )
    assert (error.status, error.reason) == (409, "Conflict")
    assert "the object has been modified" in error.message
    replaced = await _error(kube.replace(COMPOSITION_JOBS, created))
    assert replaced.status == 409


async def test_current_resource_version_is_accepted(kube: ClusterClient) -> None:
    created = await kube.create(COMPOSITION_JOBS, cj("a"))
    body = dict(created, spec={"profile": "other"})
    replaced = await kube.replace(COMPOSITION_JOBS, body)
    assert replaced["spec"] == {"profile": "other"}
    assert replaced["metadata"]["generation"] == 2


async def test_failed_json_patch_test_is_422(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    error = await _error(kube.patch(COMPOSITION_JOBS, "a", ops))
    assert error.status == 422


async def test_json_patch_applies(kube: ClusterClient) -> None:
    created = await kube.create(COMPOSITION_JOBS, cj("a"))
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion",
         "value": created["metadata"]["resourceVersion"]},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]  # fmt: skip
    patched = await kube.patch(COMPOSITION_JOBS, "a", ops)
    assert patched["metadata"]["finalizers"] == ["x"]


async def test_generate_name_gives_distinct_names(kube: ClusterClient) -> None:
    body = {"metadata": {"generateName": "kopf-event-"}, "reason": "Test"}
    names = {(await kube.create(EVENTS, body))["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5
    assert all(name.startswith("kopf-event-") and len(name) == 16 for name in names)


@pytest.mark.parametrize("name", ["Upper", "under_score", "-dash", ""])
async def test_invalid_names_are_422_naming_the_field(kube: ClusterClient, name: str) -> None:
    error = await _error(kube.create(COMPOSITION_JOBS, cj(name)))
    assert error.status == 422
    assert "metadata.name" in error.message


async def test_wrong_kind_or_namespace_is_400(kube: ClusterClient) -> None:
    body = cj("a")
    body["kind"] = "Job"
    assert (await _error(kube.create(COMPOSITION_JOBS, body))).status == 400
    body = cj("b")
    body["metadata"]["namespace"] = "one"
    path = "/apis/compose.nextunicorn.dev/v1alpha1/namespaces/two/compositionjobs"
    assert (await _error(kube.request("POST", path, json=body))).status == 400


async def test_cluster_scoped_objects_have_no_namespace(kube: ClusterClient) -> None:
    node = await kube.create(NODES, {"metadata": {"name": "n1", "namespace": "x"}})
    assert "namespace" not in node["metadata"]
    assert (await kube.get(NODES, "n1"))["metadata"]["name"] == "n1"


async def test_namespaces_appear_on_first_use(kube: ClusterClient) -> None:
    from tests.support.resources import NAMESPACES

    await kube.create(COMPOSITION_JOBS, cj("a"), namespace="team-a")
    namespace = await kube.get(NAMESPACES, "team-a")
    assert namespace["status"] == {"phase": "Active"}


async def test_an_injected_reaction_replaces_the_write_it_intercepts(
    kube: ClusterClient, kube_emulator: KubeEmulator
) -> None:
    kube_emulator["post /apis/batch/v1/namespaces/default/jobs"] << 503
    error = await _error(kube.create(JOBS, {"metadata": {"name": "j"}, "spec": {}}))
    assert error.status == 503
    assert await kube.get_or_none(JOBS, "j") is None  # nothing was stored
    assert kube_emulator.request_log[-1].status == 404  # the get, served by the store
