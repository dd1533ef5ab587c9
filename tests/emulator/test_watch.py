"""Watch streams: live events, resuming from a resourceVersion, selectors, timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from compose_api.kube import Gone
from tests.emulator.helpers import cj
from tests.support import kube_emulator
from tests.support.cluster_client import ClusterClient, poll
from tests.support.kube_emulator import KubeEmulator
from tests.support.resources import COMPOSITION_JOBS


async def _collect(kube: ClusterClient, count: int, **options: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        async for kind, obj in kube.watch(COMPOSITION_JOBS, **options):
            events.append({"type": kind, "object": obj})
            if len(events) == count:
                break
    return events


def _summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"].get("name", "")) for e in events]


async def _live(
    kube: ClusterClient, emulator: KubeEmulator, count: int, **options: Any
) -> asyncio.Task[list[dict[str, Any]]]:
    before = emulator.open_watches
    task = asyncio.create_task(_collect(kube, count, **options))
    await poll(lambda: _true(emulator.open_watches > before), timeout=5, interval=0.01)
    return task


async def _true(value: bool) -> bool:
    return value


async def test_live_events_in_order(kube: ClusterClient, kube_emulator: KubeEmulator) -> None:
    watching = await _live(kube, kube_emulator, 4)
    await kube.create(COMPOSITION_JOBS, cj("a"))
    await kube.patch(COMPOSITION_JOBS, "a", {"spec": {"suspend": True}})
    await kube.patch_status(COMPOSITION_JOBS, "a", {"phase": "Running"})
    await kube.delete(COMPOSITION_JOBS, "a")
    events = await watching
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and len(set(versions)) == 4


async def test_existing_objects_come_first_without_a_resource_version(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    events = await _collect(kube, 1)
    assert _summary(events) == [("ADDED", "a")]


async def test_resuming_from_a_resource_version_replays_only_later_changes(
    kube: ClusterClient,
) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    listed = await kube.request("GET", "/apis/compose.nextunicorn.dev/v1alpha1/compositionjobs")
    since = listed["metadata"]["resourceVersion"]
    await kube.create(COMPOSITION_JOBS, cj("b"))
    await kube.patch(COMPOSITION_JOBS, "a", {"spec": {"suspend": True}})
    events = await _collect(kube, 2, resource_version=since, timeout_seconds=2)
    assert _summary(events) == [("ADDED", "b"), ("MODIFIED", "a")]


async def test_a_resource_version_older_than_the_history_is_410_expired() -> None:
    with kube_emulator.EmulatorThread(history_limit=3) as emulator:
        async with ClusterClient.at(kube_emulator.base_url(emulator)) as kube:
            for index in range(5):
                await kube.create(COMPOSITION_JOBS, cj(f"j{index}"))
            with pytest.raises(Gone) as caught:  # an ERROR event in the stream
                await _collect(kube, 1, resource_version="1")
    assert (caught.value.status, caught.value.reason) == (410, "Expired")


async def test_label_selector_turns_leaving_and_entering_into_deleted_and_added(
    kube: ClusterClient, kube_emulator: KubeEmulator
) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a", labels={"color": "red"}))
    await kube.create(COMPOSITION_JOBS, cj("noise"))
    watching = await _live(kube, kube_emulator, 3, label_selector="color=red")
    await kube.patch(COMPOSITION_JOBS, "noise", {"spec": {"x": 1}})
    await kube.patch(COMPOSITION_JOBS, "a", {"metadata": {"labels": {"color": "blue"}}})
    await kube.patch(COMPOSITION_JOBS, "a", {"metadata": {"labels": {"color": "red"}}})
    events = await watching
    assert _summary(events) == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "a")]


async def test_namespace_and_field_selector_filter_the_stream(
    kube: ClusterClient, kube_emulator: KubeEmulator
) -> None:
    watching = await _live(
        kube, kube_emulator, 1, namespace="team-a", field_selector="metadata.name=wanted"
    )
    await kube.create(COMPOSITION_JOBS, cj("wanted"), namespace="team-b")
    await kube.create(COMPOSITION_JOBS, cj("unwanted"), namespace="team-a")
    await kube.create(COMPOSITION_JOBS, cj("wanted"), namespace="team-a")
    events = await watching
    assert _summary(events) == [("ADDED", "wanted")]
    assert events[0]["object"]["metadata"]["namespace"] == "team-a"


async def test_timeout_seconds_ends_the_stream(kube: ClusterClient) -> None:
    events = await _collect(kube, 99, timeout_seconds=1)
    assert events == []


async def test_send_initial_events_ends_with_a_bookmark(kube: ClusterClient) -> None:
    await kube.create(COMPOSITION_JOBS, cj("a"))
    events = await _collect(kube, 2, send_initial_events=True)
    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    annotations = events[1]["object"]["metadata"]["annotations"]
    assert annotations == {"k8s.io/initial-events-end": "true"}


@pytest.mark.parametrize("count", [1])
async def test_closing_the_emulator_ends_open_watches(count: int) -> None:
    with kube_emulator.EmulatorThread() as emulator:
        async with ClusterClient.at(kube_emulator.base_url(emulator)) as kube:
            watching = await _live(kube, emulator, count)
            emulator.close_watches()
            assert await watching == []
