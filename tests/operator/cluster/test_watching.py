"""The operator's own watches (compose_operator.watching) on the real API server: a list, then
the events; a stream resumed from a resourceVersion the server no longer has (410 Gone) lists
again and hands on as deleted what went while nobody watched; namespaces matched by a glob
pattern are followed as they are created."""

from __future__ import annotations

import asyncio
import contextlib

import kopf
import pytest

from compose_api import models
from compose_operator import kubeapi, watching
from tests.operator.cluster.conftest import kopf_admin_login
from tests.operator.conftest import cj_body
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS

pytestmark = pytest.mark.timeout(60)

KIND = kubeapi.Watched(models.API_VERSION, models.PLURAL)


def _client(plane: cp.ControlPlane) -> kubeapi.KubeClient:
    async def login() -> kopf.ConnectionInfo:
        return kopf_admin_login(plane)

    return kubeapi.KubeClient(login)


class Recorder:
    """A watch's handler: what it was handed, as (type, name)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, kind: str, obj: watching.Obj) -> None:
        self.seen.append((kind, obj["metadata"]["name"]))
        self._changed.set()

    async def until(self, item: tuple[str, str]) -> None:
        async with asyncio.timeout(15):
            while item not in self.seen:
                self._changed.clear()
                await self._changed.wait()


async def test_a_watch_lists_follows_and_lists_again_after_gone(
    control_plane: cp.ControlPlane, namespace: str, kube: ClusterClient
) -> None:
    client = _client(control_plane)
    seen = Recorder()
    watch = watching.Watch(client, KIND, namespace, seen)
    try:
        for name in ("a", "b"):
            await kube.create(COMPOSITION_JOBS, cj_body(name, namespace))
        task = asyncio.create_task(watch.run())
        await asyncio.wait_for(watch.listed.wait(), 15)
        assert sorted(seen.seen) == [("ADDED", "a"), ("ADDED", "b")]
        await kube.create(COMPOSITION_JOBS, cj_body("c", namespace))
        await kube.delete(COMPOSITION_JOBS, "a", namespace=namespace)
        await seen.until(("DELETED", "a"))
        assert ("ADDED", "c") in seen.seen

        # Nobody watches while b goes; the watch then resumes from a version long compacted
        # out of the server's window: 410 Gone, a new list, and b handed on as deleted.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kube.delete(COMPOSITION_JOBS, "b", namespace=namespace)
        await kube.wait_for(COMPOSITION_JOBS, "b", lambda obj: obj is None, timeout=15)
        seen.seen.clear()
        watch._version = "1"
        watch.listed.clear()
        task = asyncio.create_task(watch.run())
        await seen.until(("DELETED", "b"))
        assert watch.listed.is_set() and ("ADDED", "c") in seen.seen  # listed again
        assert ("DELETED", "c") not in seen.seen and ("DELETED", "a") not in seen.seen
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await client.close()


async def test_namespaces_matched_by_a_pattern_are_watched_as_they_come(
    control_plane: cp.ControlPlane, namespace: str, kube: ClusterClient
) -> None:
    client = _client(control_plane)
    later = f"{namespace}-later"
    seen = Recorder()
    watches = watching.Watches(client, [f"{namespace}*"])
    try:
        await kube.create(COMPOSITION_JOBS, cj_body("first", namespace))
        watches.start(KIND, seen)
        await asyncio.wait_for(watches.listed(KIND), 15)
        assert seen.seen == [("ADDED", "first")]
        control_plane.create_namespace(later)
        await kube.create(COMPOSITION_JOBS, cj_body("second", later))
        await seen.until(("ADDED", "second"))
        assert watching.matches("default", "!kube-*") and not watching.matches("kube-x", "!kube-*")
    finally:
        await watches.stop()
        await client.close()
        control_plane.delete_namespace(later)
