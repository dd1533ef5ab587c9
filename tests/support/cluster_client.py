"""The tests' convenience layer over the project's Kubernetes client (:mod:`compose_api.kube`).

Tests act as users (create a CompositionJob, suspend it, delete it) and as the kubelet (finish a
pod: tests/support/control_plane.py) through a :class:`ClusterClient`: resources are named by
:class:`~tests.support.resources.ResourceSpec`, the namespace defaults to the client's own, and
``wait_for``/``wait_for_list`` poll until a predicate holds. Every request goes through
:class:`compose_api.kube.Client`, so errors are its classes (``kube.NotFound``,
``kube.Conflict``, ...). It sends the ``compose-test-client`` User-Agent, so the emulator's
request log tells its requests apart from the code under test (on the real control plane the
audit log tells them apart by user).

    async with ClusterClient.at(url) as kube:  # plain http: the emulator
        await kube.create(COMPOSITION_JOBS, body)
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from compose_api import kube
from tests.support.resources import TEST_CLIENT_USER_AGENT, RequestRecord, ResourceSpec

Obj = dict[str, Any]


def object_path(
    spec: ResourceSpec,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    return kube.path(
        spec.api_version,
        spec.plural,
        namespace=namespace if spec.namespaced else None,
        name=name,
        subresource=subresource,
    )


class ClusterClient:
    """Typed-by-resource calls on one API server, as a test uses them."""

    def __init__(self, api: kube.Client, *, namespace: str = "default") -> None:
        self.api = api
        self.namespace = namespace

    @classmethod
    def at(
        cls,
        connection: kube.Connection | str,
        *,
        namespace: str = "default",
        user_agent: str = TEST_CLIENT_USER_AGENT,
    ) -> ClusterClient:
        """A client on ``connection`` (or a plain http URL: the emulator)."""
        if isinstance(connection, str):
            connection = kube.Connection(server=connection)
        return cls(kube.Client(connection, user_agent=user_agent), namespace=namespace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.api.close()

    def _ns(self, spec: ResourceSpec, namespace: str | None) -> str | None:
        return (namespace or self.namespace) if spec.namespaced else None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        return await self.api.request(
            method, path, body=json, params=params, content_type=content_type
        )

    # -- verbs ------------------------------------------------------------------------------

    async def create(
        self, spec: ResourceSpec, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> Obj:
        meta_namespace = (body.get("metadata") or {}).get("namespace")
        path = object_path(spec, self._ns(spec, namespace or meta_namespace))
        return await self.api.create(path, body)

    async def get(self, spec: ResourceSpec, name: str, *, namespace: str | None = None) -> Obj:
        return await self.api.get(object_path(spec, self._ns(spec, namespace), name))

    async def get_or_none(
        self, spec: ResourceSpec, name: str, *, namespace: str | None = None
    ) -> Obj | None:
        return await self.api.get_or_none(object_path(spec, self._ns(spec, namespace), name))

    async def list(
        self,
        spec: ResourceSpec,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]:
        ns = None if all_namespaces else self._ns(spec, namespace)
        items, _ = await self.api.list(
            object_path(spec, ns), label_selector=label_selector, field_selector=field_selector
        )
        return items

    async def patch(
        self,
        spec: ResourceSpec,
        name: str,
        patch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        """A JSON merge patch (a dict), or a JSON patch (a list of operations)."""
        content_type = kube.MERGE_PATCH if isinstance(patch, Mapping) else kube.JSON_PATCH
        path = object_path(spec, self._ns(spec, namespace), name, subresource)
        return await self.api.patch(path, patch, content_type=content_type)

    async def patch_status(
        self,
        spec: ResourceSpec,
        name: str,
        status: Mapping[str, Any],
        *,
        namespace: str | None = None,
    ) -> Obj:
        """Merge ``status`` into the object's status through the /status subresource."""
        return await self.patch(
            spec, name, {"status": status}, namespace=namespace, subresource="status"
        )

    async def replace(
        self, spec: ResourceSpec, body: Mapping[str, Any], *, subresource: str | None = None
    ) -> Obj:
        meta = body["metadata"]
        path = object_path(spec, self._ns(spec, meta.get("namespace")), meta["name"], subresource)
        return await self.api.replace(path, body)

    async def delete(
        self,
        spec: ResourceSpec,
        name: str,
        *,
        namespace: str | None = None,
        propagation: str | None = None,
        uid: str | None = None,
        missing_ok: bool = False,
    ) -> Obj | None:
        """Delete (404 raises :class:`compose_api.kube.NotFound` unless ``missing_ok``);
        ``propagation`` None: the resource's default (batch/v1 Jobs orphan their pods). The
        answer: the object being deleted (finalizers pending) or a Status."""
        return await self.api.delete(
            object_path(spec, self._ns(spec, namespace), name),
            propagation=propagation,
            uid=uid,
            missing_ok=missing_ok,
        )

    async def watch(
        self,
        spec: ResourceSpec,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
        send_initial_events: bool = False,
    ) -> AsyncIterator[tuple[str, Obj]]:
        """``(type, object)`` per watch event until the stream ends (410: ``kube.Gone``)."""
        ns = None if all_namespaces else self._ns(spec, namespace)
        async for event in self.api.watch(
            object_path(spec, ns),
            resource_version=resource_version,
            label_selector=label_selector,
            field_selector=field_selector,
            timeout_seconds=timeout_seconds,
            send_initial_events=send_initial_events,
        ):
            yield event

    # -- waiting ----------------------------------------------------------------------------

    async def wait_for(
        self,
        spec: ResourceSpec,
        name: str,
        predicate: Callable[[Obj | None], bool],
        *,
        namespace: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 (a polling deadline, not a cancel scope)
        interval: float = 0.05,
    ) -> Obj | None:
        """Poll one object until ``predicate(obj)`` holds (obj is None while it is absent)."""
        last: Obj | None = None

        async def probe() -> bool:
            nonlocal last
            last = await self.get_or_none(spec, name, namespace=namespace)
            return predicate(last)

        await poll(probe, timeout=timeout, interval=interval, what=lambda: f"{name}: {last!r}")
        return last

    async def wait_for_list(
        self,
        spec: ResourceSpec,
        predicate: Callable[[builtins.list[Obj]], bool],
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        label_selector: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 (a polling deadline, not a cancel scope)
        interval: float = 0.05,
    ) -> builtins.list[Obj]:
        """Poll a list until ``predicate(items)`` holds; returns the items."""
        last: builtins.list[Obj] = []

        async def probe() -> bool:
            nonlocal last
            last = await self.list(
                spec,
                namespace=namespace,
                all_namespaces=all_namespaces,
                label_selector=label_selector,
            )
            return predicate(last)

        await poll(
            probe, timeout=timeout, interval=interval, what=lambda: f"{spec.plural}: {last!r}"
        )
        return last

    async def request_log(self, since: int = 0) -> builtins.list[RequestRecord]:
        """The emulator's request log (only the emulator serves this)."""
        body = await self.request("GET", "/_emulator/requests", params={"since": str(since)})
        return [RequestRecord.from_json(item) for item in body["items"]]


async def poll(
    probe: Callable[[], Awaitable[bool]],
    *,
    timeout: float,  # noqa: ASYNC109 (a polling deadline, not a cancel scope)
    interval: float = 0.05,
    what: Callable[[], str] = lambda: "",
) -> None:
    """Call ``probe`` until it returns True; TimeoutError naming ``what()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if await probe():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s; last seen: {what()}")
        await asyncio.sleep(interval)
