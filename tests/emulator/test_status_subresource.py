"""The /status subresource is kept apart from the main resource."""

from __future__ import annotations

import pytest

from compose_api.kube import KubeError
from tests.emulator.helpers import cj
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, CONFIG_MAPS, PODS


async def test_status_is_dropped_on_create(kube: ClusterClient) -> None:
    body = cj("a")
    body["status"] = {"phase": "Succeeded"}
    created = await kube.create(COMPOSITION_JOBS, body)
    assert "status" not in created


async def test_pods_start_pending(kube: ClusterClient) -> None:
    pod = await kube.create(PODS, {"metadata": {"name": "p"}, "spec": {"containers": []}})
    assert pod["status"] == {"phase": "Pending"}


async def test_main_resource_writes_ignore_status(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    await kube.patch_status(COMPOSITION_JOBS, "a", {"phase": "Running"})
    patched = await kube.patch(
        COMPOSITION_JOBS, "a", {"spec": {"suspend": True}, "status": {"phase": "Failed"}}
    )
    assert patched["status"] == {"phase": "Running"}
    assert patched["spec"]["suspend"] is True


async def test_status_writes_change_only_status(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    patched = await kube.patch(
        COMPOSITION_JOBS,
        "a",
        {"spec": {"suspend": True}, "metadata": {"labels": {"x": "1"}}, "status": {"phase": "X"}},
        subresource="status",
    )
    assert patched["status"] == {"phase": "X"}
    assert "suspend" not in patched["spec"]
    assert "x" not in (patched["metadata"].get("labels") or {})


async def test_put_to_status_replaces_only_status(kube: ClusterClient) -> None:
    created = await kube.create(COMPOSITION_JOBS, cj("a"))
    body = dict(created, spec={"other": 1}, status={"phase": "Y"})
    replaced = await kube.replace(COMPOSITION_JOBS, body, subresource="status")
    assert replaced["status"] == {"phase": "Y"}
    assert replaced["spec"] == created["spec"]


async def test_resources_without_the_subresource_refuse_status_writes(kube: ClusterClient) -> None:
    await kube.create(CONFIG_MAPS, {"metadata": {"name": "c"}, "data": {"k": "v"}})
    with pytest.raises(KubeError) as caught:
        await kube.patch_status(CONFIG_MAPS, "c", {"phase": "X"})
    assert caught.value.status == 404
