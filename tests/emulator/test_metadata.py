"""Server-managed metadata: uid, resourceVersion, generation, timestamps, no-op writes."""

from __future__ import annotations

import datetime
import uuid

from tests.emulator.helpers import cj
from tests.support import kube_emulator
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS


async def test_create_sets_uid_resource_version_generation_and_creation_time(
    kube: ClusterClient,
) -> None:
    first = await kube.create(COMPOSITION_JOBS, cj("a"))
    second = await kube.create(COMPOSITION_JOBS, cj("b"))
    meta = first["metadata"]
    assert uuid.UUID(meta["uid"]).version == 4
    assert meta["uid"] != second["metadata"]["uid"]
    assert meta["generation"] == 1
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    datetime.datetime.strptime(meta["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert first["apiVersion"] == "compose.nextunicorn.dev/v1alpha1"
    assert first["kind"] == "CompositionJob"
    assert meta["namespace"] == "default"


async def test_client_supplied_server_fields_are_ignored_on_create(kube: ClusterClient) -> None:
    body = cj("a")
    body["metadata"].update(uid="mine", resourceVersion="999", generation=7)
    created = await kube.create(COMPOSITION_JOBS, body)
    assert created["metadata"]["uid"] != "mine"
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["resourceVersion"] != "999"


async def test_generation_is_bumped_by_spec_changes_only(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    labelled = await kube.patch(COMPOSITION_JOBS, "a", {"metadata": {"labels": {"x": "1"}}})
    assert labelled["metadata"]["generation"] == 1
    with_status = await kube.patch_status(COMPOSITION_JOBS, "a", {"phase": "Running"})
    assert with_status["metadata"]["generation"] == 1
    changed = await kube.patch(COMPOSITION_JOBS, "a", {"spec": {"suspend": True}})
    assert changed["metadata"]["generation"] == 2
    assert int(changed["metadata"]["resourceVersion"]) > int(
        with_status["metadata"]["resourceVersion"]
    )


async def test_a_patch_that_changes_nothing_writes_nothing(kube: ClusterClient) -> None:
    created = await kube.create(COMPOSITION_JOBS, cj("a", labels={"x": "1"}))
    same = await kube.patch(COMPOSITION_JOBS, "a", {"metadata": {"labels": {"x": "1"}}})
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_injected_clock_sets_creation_and_deletion_timestamps() -> None:
    moment = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    with kube_emulator.EmulatorThread(clock=lambda: moment) as emulator:
        async with ClusterClient.at(kube_emulator.base_url(emulator)) as kube:
            body = cj("a")
            body["metadata"]["finalizers"] = ["example.com/hold"]
            created = await kube.create(COMPOSITION_JOBS, body)
            deleted = await kube.delete(COMPOSITION_JOBS, "a")
    assert created["metadata"]["creationTimestamp"] == "2030-01-02T03:04:05Z"
    assert deleted["metadata"]["deletionTimestamp"] == "2030-01-02T03:04:05Z"


async def test_stored_gives_a_copy_of_the_current_object(
    kube: ClusterClient, kube_emulator: kube_emulator.KubeEmulator
) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    stored = kube_emulator.stored(COMPOSITION_JOBS, "default", "a")
    assert stored is not None
    stored["spec"] = {}
    again = kube_emulator.stored(COMPOSITION_JOBS, "default", "a")
    assert again is not None and again["spec"] == {"profile": "instantid-sdxl"}
    assert kube_emulator.stored(COMPOSITION_JOBS, "default", "absent") is None
