"""A small async Kubernetes client for tests and benchmarks, speaking plain HTTP to the emulator.

Tests use it to act as users (create a CompositionJob, suspend it, delete it), as the Job
controller and as the kubelet (tests/support/kube_cluster.py builds on it). It sends the
``compose-test-client`` User-Agent, so the emulator's request log tells its requests apart from
the code under test. Works against the emulator (plain HTTP, no authentication) and against the
real test control plane (HTTPS with a client certificate or a bearer token:
tests/support/control_plane.py).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from tests.support import kube_emulator
from tests.support.kube_emulator import ResourceSpec

Obj = dict[str, Any]


class KubeApiError(Exception):
    """A non-2xx answer, with the Kubernetes Status fields when the server sent them."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.reason: str = body.get("reason", "") if isinstance(body, Mapping) else ""
        self.message: str = body.get("message", "") if isinstance(body, Mapping) else str(body)
        super().__init__(f"HTTP {status} {self.reason}: {self.message}")


def object_path(
    spec: ResourceSpec,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    root = f"/apis/{spec.group}/{spec.version}" if spec.group else f"/api/{spec.version}"
    parts = [root]
    if spec.namespaced and namespace is not None:
        parts.append(f"namespaces/{quote(namespace)}")
    parts.append(spec.plural)
    if name is not None:
        parts.append(quote(name))
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


class KubeClient:
    """``async with KubeClient(url) as kube: await kube.create(JOBS, body, namespace='ns')``."""

    def __init__(
        self,
        base_url: str,
        *,
        namespace: str = "default",
        user_agent: str = kube_emulator.TEST_CLIENT_USER_AGENT,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.namespace = namespace
        self._user_agent = user_agent
        self._session = session
        self._own_session = session is None
        self._ssl = ssl_context
        self._token = token

    async def __aenter__(self) -> Self:
        if self._session is None:
            headers = {"User-Agent": self._user_agent}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl else None
            self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("KubeClient is not open: use `async with KubeClient(url)`")
        return self._session

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
    ) -> Any:
        headers = {"Content-Type": content_type} if json is not None else {}
        async with self.session.request(
            method, self.base_url + path, json=json, params=params, headers=headers
        ) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = await response.text()
            if response.status >= 400:
                raise KubeApiError(response.status, body)
            return body

    # -- verbs ------------------------------------------------------------------------------

    async def create(
        self, spec: ResourceSpec, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> Obj:
        path = object_path(spec, self._ns(spec, namespace or _ns_of(body)))
        result: Obj = await self.request("POST", path, json=body)
        return result

    async def get(self, spec: ResourceSpec, name: str, *, namespace: str | None = None) -> Obj:
        result: Obj = await self.request("GET", object_path(spec, self._ns(spec, namespace), name))
        return result

    async def get_or_none(
        self, spec: ResourceSpec, name: str, *, namespace: str | None = None
    ) -> Obj | None:
        try:
            return await self.get(spec, name, namespace=namespace)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

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
        params = {
            key: value
            for key, value in (("labelSelector", label_selector), ("fieldSelector", field_selector))
            if value
        }
        body = await self.request("GET", object_path(spec, ns), params=params)
        items: builtins.list[Obj] = body["items"]
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
        content_type = (
            "application/merge-patch+json"
            if isinstance(patch, Mapping)
            else "application/json-patch+json"
        )
        path = object_path(spec, self._ns(spec, namespace), name, subresource)
        result: Obj = await self.request("PATCH", path, json=patch, content_type=content_type)
        return result

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
        result: Obj = await self.request("PUT", path, json=body)
        return result

    async def delete(
        self,
        spec: ResourceSpec,
        name: str,
        *,
        namespace: str | None = None,
        propagation: str | None = None,
    ) -> Obj:
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation is not None:
            options["propagationPolicy"] = propagation
        path = object_path(spec, self._ns(spec, namespace), name)
        result: Obj = await self.request("DELETE", path, json=options)
        return result

    async def watch(
        self,
        spec: ResourceSpec,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        send_initial_events: bool = False,
    ) -> AsyncIterator[Obj]:
        """Yield watch events (``{"type": ..., "object": ...}``) until the stream ends."""
        ns = None if all_namespaces else self._ns(spec, namespace)
        params = {"watch": "true", "allowWatchBookmarks": "true"}
        optional = {
            "resourceVersion": resource_version,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
            "timeoutSeconds": str(timeout_seconds) if timeout_seconds is not None else None,
            "sendInitialEvents": "true" if send_initial_events else None,
        }
        params.update({key: value for key, value in optional.items() if value})
        async with self.session.get(self.base_url + object_path(spec, ns), params=params) as rsp:
            if rsp.status >= 400:
                raise KubeApiError(rsp.status, await rsp.json(content_type=None))
            async for line in rsp.content:
                if line.strip():
                    event: Obj = json.loads(line)
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

    async def request_log(self, since: int = 0) -> builtins.list[kube_emulator.RequestRecord]:
        """The emulator's request log (only the emulator serves this)."""
        body = await self.request("GET", "/_emulator/requests", params={"since": str(since)})
        return [kube_emulator.RequestRecord.from_json(item) for item in body["items"]]


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


def _ns_of(body: Mapping[str, Any]) -> str | None:
    namespace = (body.get("metadata") or {}).get("namespace")
    return namespace if isinstance(namespace, str) else None
