"""A Kubernetes API emulator faithful enough to run the operator and the gateway against.

kmock's ``KubernetesEmulator`` (by kopf's author) serves discovery and the Kubernetes URL scheme
but stores objects as plain dicts: no uid, resourceVersion, generation or timestamps, no
``/status`` subresource, no selectors, no garbage collection, and it scans every object on every
request. This subclass keeps kmock's request parsing, discovery, Status-shaped errors and its
DSL (a test may still inject reactions such as ``emulator['patch', ...] << 500``), and replaces
the object store with one that behaves like the API server where our code relies on it:

- ``metadata.uid``, ``resourceVersion`` (one counter for the whole server), ``generation`` (1 on
  create, bumped only when something other than metadata and status changes),
  ``creationTimestamp`` and ``deletionTimestamp``; a patch that changes nothing writes nothing;
- the ``/status`` subresource kept apart from the main resource for resources declared with it
  (writes to the main resource ignore ``status``; writes to ``/status`` change only ``status``;
  ``status`` is dropped on create);
- label and field selectors on list and watch, list responses with ``kind``/``apiVersion`` and a
  real ``resourceVersion``; watches resume from a ``resourceVersion`` (410 Expired when it is
  older than the kept history), honour ``timeoutSeconds`` and ``sendInitialEvents``, and report
  objects leaving or entering a selector as DELETED/ADDED;
- ``generateName``; 409 AlreadyExists, 404 NotFound, 409 Conflict on a stale
  ``metadata.resourceVersion`` (optimistic concurrency), 422 on a failed JSON-patch ``test``, all
  as ``kind: Status`` objects;
- deletion with finalizers (``deletionTimestamp`` first, removal when the last finalizer goes;
  no new finalizers on an object being deleted) and uid/resourceVersion preconditions;
- CustomResourceDefinitions created through the API become discoverable resources;
- a request log (:class:`RequestRecord`) of every request, to compare with RBAC rules;
- objects kept by key (get/patch/delete do not scan; a list scans one resource), and API requests
  served straight from the store while no test reaction is registered (kmock matches every
  request against every reaction otherwise).

Not emulated: admission (CRD schemas and CEL rules are not enforced: what the emulator is still
for, a stored object the real API server would refuse), strategic-merge and server-side-apply
semantics (a strategic merge patch is treated as a JSON merge patch), namespace existence checks
(a namespace object is created on first use instead), pod grace periods, garbage collection
(``ownerReferences`` are stored, and a ``propagationPolicy`` checked, not acted on) and every
controller: everything else runs on the real test control plane (tests/support/control_plane.py).

Used by tests through tests/support/kube_fixtures.py (in a background thread) and by
benchmarks/gateway_bench.py as its own process: ``python -m tests.support.kube_emulator --port N``
prints ``KUBE_EMULATOR_URL=<url>`` when it is ready. The request log is also served over HTTP at
``GET /_emulator/requests?since=N`` for out-of-process users.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import copy
import dataclasses
import datetime
import itertools
import json
import re
import secrets
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import parsing as kmock_parsing
from kmock._internal import rendering as kmock_rendering
from typing_extensions import override

from tests.support import kube_selectors
from tests.support.resources import (
    CRDS,
    DEFAULT_RESOURCES,
    NAMESPACES,
    RequestRecord,
    ResourceSpec,
)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Clock = Callable[[], datetime.datetime]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# kmock's path parser reads /api/v1/namespaces/<name> as a namespace prefix and fails on
# /api/v1/namespaces; these paths are parsed here instead.
_NAMESPACE_PATH = re.compile(
    r"^/api/v1/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?/?$"
)
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet


def _encode_continue(start: tuple[str, str], rv: int) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(start)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        start = data["start"]
        if data.get("v") != "meta.k8s.io/v1" or not isinstance(start, list) or len(start) != 2:
            raise ValueError(token)
        return str(start[0]), str(start[1])
    except (ValueError, KeyError, TypeError):
        raise _kube_error(
            400, "BadRequest", "continue key is not valid: incorrect encoded start resourceVersion"
        ) from None


def _kube_error(
    status: int, reason: str, message: str, details: Mapping[str, Any] | None = None
) -> kmock.KubernetesError:
    return kmock.KubernetesError(status, reason, message, dict(details or {"causes": []}))


def _not_found(spec: ResourceSpec, name: str) -> kmock.KubernetesError:
    details = {"name": name, "group": spec.group, "kind": spec.plural}
    return _kube_error(404, "NotFound", f'{spec.qualified} "{name}" not found', details)


def _conflict(spec: ResourceSpec, name: str, why: str) -> kmock.KubernetesError:
    details = {"name": name, "group": spec.group, "kind": spec.plural}
    message = f'Operation cannot be fulfilled on {spec.qualified} "{name}": {why}'
    return _kube_error(409, "Conflict", message, details)


def _invalid(spec: ResourceSpec, name: str, field: str, why: str) -> kmock.KubernetesError:
    details = {
        "name": name,
        "group": spec.group,
        "kind": spec.kind,
        "causes": [{"reason": "FieldValueInvalid", "message": why, "field": field}],
    }
    message = f'{spec.kind}.{spec.group or "core"} "{name}" is invalid: {field}: {why}'
    return _kube_error(422, "Invalid", message, details)


def _bad_request(message: str) -> kmock.KubernetesError:
    return _kube_error(400, "BadRequest", message)


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


ObjectKey = tuple[str | None, str]  # (namespace, name)


@dataclasses.dataclass(frozen=True)
class Change:
    """One write as watchers see it; ``old`` lets selectors turn MODIFIED into ADDED/DELETED."""

    rv: int
    type: EventType
    old: Mapping[str, Any] | None
    new: Mapping[str, Any]


@dataclasses.dataclass(eq=False)
class _Watcher:
    spec: ResourceSpec
    namespace: str | None
    name: str | None
    selector: kube_selectors.Selector
    queue: asyncio.Queue[Change | None]
    loop: asyncio.AbstractEventLoop

    def wants(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return self.selector.matches(obj)

    def translate(self, change: Change) -> dict[str, Any] | None:
        """The watch event this watcher sees for a change, or None when it sees nothing."""
        was, now = self.wants(change.old), self.wants(change.new)
        if change.type == "DELETED":
            return {"type": "DELETED", "object": change.new} if (was or now) else None
        if was and now:
            return {"type": change.type, "object": change.new}
        if now:
            return {"type": "ADDED", "object": change.new}
        if was:
            return {"type": "DELETED", "object": change.new}
        return None


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with the API-server behaviour described in the module doc."""

    clock: Clock = _utcnow
    history_limit: int = 50_000  # kept changes per resource, for watches resuming from an RV
    auto_namespaces: bool = True
    keep_raw_requests: bool = True  # kmock's own request list; off for long benchmark runs
    resource_specs: Sequence[ResourceSpec] = DEFAULT_RESOURCES

    _specs: dict[tuple[str, str, str], ResourceSpec] = attrs.field(factory=dict, init=False)
    _store: dict[tuple[str, str, str], dict[ObjectKey, dict[str, Any]]] = attrs.field(
        factory=dict, init=False
    )
    _history: dict[tuple[str, str, str], collections.deque[Change]] = attrs.field(
        factory=dict, init=False
    )
    _watchers: set[_Watcher] = attrs.field(factory=set, init=False)
    _rv: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    request_log: list[RequestRecord] = attrs.field(factory=list, init=False)
    _builtin_payloads: int = attrs.field(default=0, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback["delete", re.compile(r"^/apis?/.*[^/]$")] << self._serve_delete_collection
        self.fallback["get /_emulator/requests"] << self._serve_request_log
        for spec in self.resource_specs:
            self.register(spec)
        for namespace in ("default", "kube-system"):
            self._ensure_namespace(namespace)
        self._builtin_payloads = len(self._payloads)

    # -- registry ---------------------------------------------------------------------------

    def register(self, spec: ResourceSpec) -> None:
        """Serve a resource: discovery, storage and watch history."""
        self._specs[spec.key] = spec
        self._store.setdefault(spec.key, {})
        self._history.setdefault(spec.key, collections.deque(maxlen=self.history_limit))
        self.resources[kmock.resource(spec.group, spec.version, spec.plural)] = kmock.ResourceInfo(
            kind=spec.kind,
            singular=spec.kind.lower(),
            namespaced=spec.namespaced,
            verbs=set(ALL_VERBS),
            shortnames=set(spec.short_names),
            subresources={"status"} if spec.status_subresource else set(),
        )

    def spec_for(self, group: str, version: str, plural: str) -> ResourceSpec:
        try:
            return self._specs[(group, version, plural)]
        except KeyError:
            gv = f"{group}/{version}" if group else version
            raise _kube_error(
                404, "NotFound", f"the server could not find the requested resource ({gv} {plural})"
            ) from None

    def _spec_of(self, request: kmock.Request) -> ResourceSpec:
        resource = request.resource
        if resource is None or resource.group is None or resource.version is None:
            raise _kube_error(404, "NotFound", "the server could not find the requested resource")
        return self.spec_for(resource.group, resource.version, resource.plural or "")

    @override
    def _get_resources(self) -> list[kmock.resource]:
        # Declared resources only: kmock's version also scans every stored object.
        return [kmock.resource(*spec.key) for spec in self._specs.values()]

    # -- direct access for tests (same thread or the emulator's own thread) -----------------

    def stored(self, spec: ResourceSpec, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The current stored object, or None (a deep copy, safe to keep)."""
        obj = self._store[spec.key].get((namespace if spec.namespaced else None, name))
        return copy.deepcopy(obj) if obj is not None else None

    def stored_all(self, spec: ResourceSpec) -> list[dict[str, Any]]:
        return [copy.deepcopy(obj) for obj in list(self._store[spec.key].values())]

    @property
    def resource_version(self) -> int:
        return self._last_rv

    @property
    def open_watches(self) -> int:
        """How many watch streams are open now (tests wait for theirs before writing)."""
        return len(self._watchers)

    # -- request handling -------------------------------------------------------------------

    @override
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = _NAMESPACE_PATH.match(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        request = await self._parse_namespace_request(raw_request, match)
        self._requests.append(request)
        try:
            return await self._handle(request)
        except kmock_rendering.StreamingError as exc:
            raw_response: aiohttp.web.StreamResponse = exc.args[0]
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            if not raw_response.prepared:
                return await self._render_error(cause)
            await self._stream_error(cause, raw_response)
            await raw_response.write_eof()
            return raw_response
        except Exception as exc:
            return await self._render_error(exc)

    async def _parse_namespace_request(
        self, raw_request: aiohttp.web.BaseRequest, match: re.Match[str]
    ) -> kmock.Request:
        parsed = await kmock.Request._parse(raw_request.clone(rel_url="/api/v1"), id=0)
        path = kmock_parsing.ParsedPath(
            group="",
            version="v1",
            plural="namespaces",
            name=match["name"],
            subresource=match["sub"],
        )
        action = kmock_parsing.guess_k8s(
            path, kmock.method(raw_request.method), dict(raw_request.query)
        )
        return attrs.evolve(
            parsed,
            id=len(self._requests),
            url=raw_request.url,
            action=action,
            resource=kmock.resource("", "v1", "namespaces"),
            namespace=None,
            name=match["name"],
            subresource=match["sub"],
        )

    @override
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Skip KubernetesEmulator._handle (it mutates its own store before any reaction runs):
        # here every write happens in the fallback handlers below, so an injected reaction
        # (an error, a delay) really replaces the write it intercepts.
        if request.url.path.startswith("/_emulator/"):
            return await super(kmock.KubernetesEmulator, self)._handle(request)  # not an API call
        # Logged on arrival (a watch may never end), its status filled in when it is answered.
        index = len(self.request_log)
        self.request_log.append(self._record(request, 0, time.monotonic()))
        status = 500
        try:
            response = await self._dispatch(request)
            status = response.status
            return response
        except kmock.KubernetesError as exc:
            status = exc.status
            raise
        except kmock_rendering.StreamingError as exc:  # a watch that failed before streaming
            if isinstance(exc.__cause__, kmock.KubernetesError):
                status = exc.__cause__.status
            raise
        finally:
            self.request_log[index] = dataclasses.replace(self.request_log[index], status=status)
            if not self.keep_raw_requests:
                # kmock keeps every request with its body and raw aiohttp request; a long run
                # only needs the compact log above.
                self._requests[-1:] = []

    async def _dispatch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Serve an API request straight from the store unless a test added its own reactions.

        kmock matches every request against every reaction (about 5 ms a request); with only
        the built-in ones registered, the action alone says which handler answers.
        """
        resource = request.resource
        if len(self._payloads) != self._builtin_payloads or resource is None or not resource.plural:
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        payload: kmock.Payload
        if request.action == kmock.action.WATCH:
            payload = self._serve_watch(request)
        elif request.action == kmock.action.LIST:
            payload = await self._serve_list(request)
        elif request.action == kmock.action.FETCH:
            payload = await self._serve_fetch(request)
        elif request.action == kmock.action.CREATE:
            payload = await self._serve_create(request)
        elif request.action == kmock.action.UPDATE:
            payload = await self._serve_update(request)
        elif request.action == kmock.action.DELETE:
            payload = await self._serve_delete(request)
        elif request.method == kmock.method.PUT:
            payload = await self._serve_replace(request)
        elif request.method == kmock.method.DELETE:
            payload = await self._serve_delete_collection(request)
        else:
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        return await kmock_rendering.Response(payload=payload)(request)

    def _record(self, request: kmock.Request, status: int, started: float) -> RequestRecord:
        method = str(request.method.value if request.method is not None else "")
        resource = request.resource
        action = request.action
        if resource is None or not resource.plural:
            resource = None  # discovery and other non-resource URLs
            verb = method.lower()
        elif action == kmock.action.WATCH:
            verb = "watch"
        elif action == kmock.action.LIST:
            verb = "list"
        elif action == kmock.action.FETCH:
            verb = "get"
        elif action == kmock.action.CREATE:
            verb = "create"
        elif action == kmock.action.UPDATE:
            verb = "patch"
        elif action == kmock.action.DELETE:
            verb = "delete"
        elif method == "PUT":
            verb = "update"
        elif method == "DELETE":
            verb = "deletecollection"
        else:
            verb = method.lower()
        return RequestRecord(
            method=method,
            verb=verb,
            group=resource.group if resource is not None else None,
            version=resource.version if resource is not None else None,
            resource=resource.plural if resource is not None else None,
            subresource=request.subresource,
            namespace=request.namespace,
            name=request.name,
            path=request.url.path,
            user_agent=request.headers.get("User-Agent", ""),
            status=status,
            at=started,
        )

    async def _serve_request_log(self, request: kmock.Request) -> kmock.Payload:
        since = int(request.params.get("since", "0") or 0)
        return {"items": [record.as_json() for record in self.request_log[since:]]}

    @override
    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec_of(request)
        name = request.name or ""
        if request.subresource not in (None, "status") or (
            request.subresource == "status" and not spec.status_subresource
        ):
            raise _not_found(spec, name)
        obj = self._get(spec, request.namespace, name)
        return obj

    @override
    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec_of(request)
        selector = self._selector(request)
        namespace = request.namespace if spec.namespaced else None
        # As the API server: items in key order (namespace, then name); with ``limit``, one
        # chunk and a ``continue`` token naming where the next starts (remainingItemCount only
        # without a selector); a token that is not one of ours is a 400.
        start: tuple[str, str] | None = None
        token = request.params.get("continue")
        if token:
            start = _decode_continue(token)
        limit_text = request.params.get("limit") or "0"
        if not limit_text.isdigit():
            raise _kube_error(400, "BadRequest", f"invalid limit: {limit_text!r}")
        limit = int(limit_text)
        items = []
        more: tuple[str, str] | None = None
        remaining = 0
        for key, obj in sorted(self._store[spec.key].items(), key=lambda kv: kv[0]):
            ns = key[0]
            if start is not None and (ns or "", key[1]) < start:
                continue
            if not ((namespace is None or ns == namespace) and selector.matches(obj)):
                continue
            if limit and len(items) >= limit:
                if more is None:
                    more = (ns or "", key[1])
                remaining += 1
                continue
            items.append(obj)
        metadata: dict[str, Any] = {"resourceVersion": str(self._last_rv)}
        if more is not None:
            metadata["continue"] = _encode_continue(more, self._last_rv)
            if not request.params.get("labelSelector") and not request.params.get("fieldSelector"):
                metadata["remainingItemCount"] = remaining
        return {
            "apiVersion": spec.api_version,
            "kind": f"{spec.kind}List",
            "metadata": metadata,
            "items": items,
        }

    @override
    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec_of(request)
        if request.subresource is not None:
            raise _kube_error(405, "MethodNotAllowed", "the server does not allow this method")
        return kmock.Response(  # type: ignore[attr-defined]  # exported, missing from __all__
            status=201, payload=self.create_object(spec, request.namespace, request.data)
        )

    @override
    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec_of(request)
        content_type = request.headers.get("Content-Type", "application/merge-patch+json")
        return self.patch_object(
            spec,
            request.namespace,
            request.name or "",
            request.data,
            content_type=content_type.split(";")[0].strip(),
            subresource=request.subresource,
        )

    async def _serve_replace(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec_of(request)
        if request.name is None:
            raise _kube_error(405, "MethodNotAllowed", "the server does not allow this method")
        return self.replace_object(
            spec, request.namespace, request.name, request.data, subresource=request.subresource
        )

    @override
    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec_of(request)
        options = request.data if isinstance(request.data, Mapping) else {}
        policy = request.params.get("propagationPolicy") or options.get("propagationPolicy")
        if policy is None and "orphanDependents" in options:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        preconditions = options.get("preconditions") or {}
        return self.delete_object(
            spec,
            request.namespace,
            request.name or "",
            propagation=policy,
            preconditions=preconditions,
        )

    async def _serve_delete_collection(self, request: kmock.Request) -> kmock.Payload:
        if request.resource is None or request.name is not None:
            raise NotImplementedError  # not ours: let the next reaction answer
        spec = self._spec_of(request)
        selector = self._selector(request)
        namespace = request.namespace if spec.namespaced else None
        victims = [
            obj["metadata"]["name"]
            for (ns, _), obj in list(self._store[spec.key].items())
            if (namespace is None or ns == namespace) and selector.matches(obj)
        ]
        deleted = [self.delete_object(spec, namespace, name) for name in victims]
        return {
            "apiVersion": spec.api_version,
            "kind": f"{spec.kind}List",
            "metadata": {"resourceVersion": str(self._last_rv)},
            "items": deleted,
        }

    @override
    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        spec = self._spec_of(request)
        selector = self._selector(request)
        params = request.params
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        since_text = params.get("resourceVersion") or ""
        watcher = _Watcher(
            spec=spec,
            namespace=request.namespace if spec.namespaced else None,
            name=request.name,
            selector=selector,
            queue=asyncio.Queue(),
            loop=asyncio.get_running_loop(),
        )

        # Headers first, so that a quiet watch is still an open stream.
        yield b""
        if self._closing:
            return

        # Replay and subscription happen with no await between them: nothing can slip through.
        initial: list[dict[str, Any]] = []
        since = int(since_text) if since_text.isdigit() else 0
        history = self._history[spec.key]
        if since_text in ("", "0") or params.get("sendInitialEvents") == "true":
            for obj in self._store[spec.key].values():
                if watcher.wants(obj):
                    initial.append({"type": "ADDED", "object": obj})
            if params.get("sendInitialEvents") == "true":
                initial.append(self._initial_events_end(spec))
        elif (
            history.maxlen is not None
            and len(history) == history.maxlen
            and (since < history[0].rv - 1)
        ):
            yield self._expired(since)
            return
        else:
            for change in history:
                if change.rv > since and (event := watcher.translate(change)) is not None:
                    initial.append(event)
        self._watchers.add(watcher)
        try:
            for event in initial:
                yield event
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    async with asyncio.timeout(remaining):
                        next_change = await watcher.queue.get()
                except TimeoutError:
                    return
                if next_change is None:  # the emulator is closing
                    return
                if (event := watcher.translate(next_change)) is not None:
                    yield event
        finally:
            self._watchers.discard(watcher)

    def _initial_events_end(self, spec: ResourceSpec) -> dict[str, Any]:
        return {
            "type": "BOOKMARK",
            "object": {
                "apiVersion": spec.api_version,
                "kind": spec.kind,
                "metadata": {
                    "resourceVersion": str(self._last_rv),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            },
        }

    @staticmethod
    def _expired(since: int) -> dict[str, Any]:
        return {
            "type": "ERROR",
            "object": {
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {since}",
                "reason": "Expired",
                "code": 410,
            },
        }

    def close_watches(self) -> None:
        """End every open watch stream and refuse new ones (so the server can stop at once)."""
        self._closing = True
        for watcher in list(self._watchers):
            watcher.loop.call_soon_threadsafe(watcher.queue.put_nowait, None)

    @staticmethod
    def _selector(request: kmock.Request) -> kube_selectors.Selector:
        try:
            return kube_selectors.Selector.parse(
                request.params.get("labelSelector"), request.params.get("fieldSelector")
            )
        except kube_selectors.SelectorError as exc:
            raise _bad_request(str(exc)) from None

    # -- the store: synchronous, so every operation is atomic within the event loop ----------

    def _key(self, spec: ResourceSpec, namespace: str | None, name: str) -> ObjectKey:
        return (namespace if spec.namespaced else None, name)

    def _get(self, spec: ResourceSpec, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._store[spec.key].get(self._key(spec, namespace, name))
        if obj is None:
            raise _not_found(spec, name)
        return obj

    def _next_rv(self) -> int:
        self._last_rv = next(self._rv)
        return self._last_rv

    def _emit(self, spec: ResourceSpec, change: Change) -> None:
        self._history[spec.key].append(change)
        for watcher in list(self._watchers):
            if watcher.spec.key == spec.key:
                watcher.loop.call_soon_threadsafe(watcher.queue.put_nowait, change)

    def _store_object(
        self, spec: ResourceSpec, key: ObjectKey, old: dict[str, Any] | None, new: dict[str, Any]
    ) -> dict[str, Any]:
        rv = self._next_rv()
        new["metadata"]["resourceVersion"] = str(rv)
        self._store[spec.key][key] = new
        self._emit(spec, Change(rv, "ADDED" if old is None else "MODIFIED", old, new))
        return new

    def _ensure_namespace(self, namespace: str) -> None:
        if (None, namespace) in self._store[NAMESPACES.key]:
            return
        self.create_object(NAMESPACES, None, {"metadata": {"name": namespace}})

    def create_object(self, spec: ResourceSpec, namespace: str | None, body: Any) -> dict[str, Any]:
        """Create an object as POST does; returns the stored object."""
        if not isinstance(body, Mapping):
            raise _bad_request("the body of the request was in an unknown format")
        obj: dict[str, Any] = copy.deepcopy(dict(body))
        meta: dict[str, Any] = dict(obj.get("metadata") or {})
        self._check_kind(spec, obj)
        if spec.namespaced:
            body_ns = meta.get("namespace")
            if namespace is None:
                namespace = body_ns
            if namespace is None:
                raise _kube_error(
                    405, "MethodNotAllowed", f"{spec.qualified} must be created in a namespace"
                )
            if body_ns is not None and body_ns != namespace:
                raise _bad_request(
                    "the namespace of the provided object does not match the namespace sent on"
                    " the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        name = meta.get("name")
        if not name and meta.get("generateName"):
            suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
            name = f"{meta['generateName']}{suffix}"
        if not name:
            raise _invalid(spec, "", "metadata.name", "name or generateName is required")
        if len(name) > 253 or not _NAME_RE.match(name):
            raise _invalid(
                spec,
                name,
                "metadata.name",
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric"
                " characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        key = self._key(spec, namespace, name)
        if key in self._store[spec.key]:
            details = {"name": name, "group": spec.group, "kind": spec.plural}
            message = f'{spec.qualified} "{name}" already exists'
            raise _kube_error(409, "AlreadyExists", message, details)
        if spec.namespaced and self.auto_namespaces and namespace is not None:
            self._ensure_namespace(namespace)
        meta.update(
            name=name,
            uid=str(uuid.uuid4()),
            generation=1,
            creationTimestamp=_rfc3339(self.clock()),
        )
        for server_field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_field, None)
        obj["apiVersion"] = spec.api_version
        obj["kind"] = spec.kind
        obj["metadata"] = meta
        if spec.status_subresource:
            obj.pop("status", None)
            if spec.initial_status is not None:
                obj["status"] = copy.deepcopy(dict(spec.initial_status))
        stored = self._store_object(spec, key, None, obj)
        if spec.key == CRDS.key:
            self._register_crd(stored)
        return stored

    def _check_kind(self, spec: ResourceSpec, obj: Mapping[str, Any]) -> None:
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if kind is not None and kind != spec.kind:
            raise _bad_request(f"kind {kind!r} does not match the resource {spec.qualified}")
        if api_version is not None and api_version != spec.api_version:
            raise _bad_request(
                f"apiVersion {api_version!r} does not match the endpoint {spec.api_version}"
            )

    def _register_crd(self, crd: Mapping[str, Any]) -> None:
        crd_spec = crd.get("spec") or {}
        names = crd_spec.get("names") or {}
        for version in crd_spec.get("versions") or []:
            if not version.get("served", True):
                continue
            self.register(
                ResourceSpec(
                    group=crd_spec.get("group", ""),
                    version=version["name"],
                    plural=names.get("plural", ""),
                    kind=names.get("kind", ""),
                    namespaced=crd_spec.get("scope", "Namespaced") == "Namespaced",
                    status_subresource="status" in (version.get("subresources") or {}),
                    short_names=tuple(names.get("shortNames") or ()),
                )
            )

    def patch_object(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str = "application/merge-patch+json",
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Patch an object (merge or JSON patch), the main resource or its ``/status``."""
        old = self._get(spec, namespace, name)
        self._check_subresource(spec, name, subresource)
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise _bad_request("a JSON patch must be a list of operations")
            try:
                patched: Any = jsonpatch.apply_patch(copy.deepcopy(old), patch)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise _invalid(spec, name, "patch", f"the test operation failed: {exc}") from None
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise _invalid(spec, name, "patch", str(exc)) from None
        elif content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            if not isinstance(patch, Mapping):
                raise _bad_request("a merge patch must be a JSON object")
            wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted_rv is not None and str(wanted_rv) != old["metadata"]["resourceVersion"]:
                raise _conflict(spec, name, _STALE)
            patched = _merge_patch(old, patch)
        else:
            raise _kube_error(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format"
                f" ({content_type!r}); accepted: merge-patch+json, json-patch+json"
            )  # fmt: skip
        if not isinstance(patched, dict):
            raise _bad_request("the patched object is not a JSON object")
        return self._write(spec, old, patched, subresource=subresource)

    def replace_object(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Replace an object as PUT does (with optimistic concurrency on resourceVersion)."""
        old = self._get(spec, namespace, name)
        self._check_subresource(spec, name, subresource)
        if not isinstance(body, Mapping):
            raise _bad_request("the body of the request was in an unknown format")
        self._check_kind(spec, body)
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and str(wanted_rv) != old["metadata"]["resourceVersion"]:
            raise _conflict(spec, name, _STALE)
        return self._write(spec, old, copy.deepcopy(dict(body)), subresource=subresource)

    def _check_subresource(self, spec: ResourceSpec, name: str, subresource: str | None) -> None:
        if subresource is None:
            return
        if subresource != "status" or not spec.status_subresource:
            raise _not_found(spec, name)

    def _write(
        self,
        spec: ResourceSpec,
        old: dict[str, Any],
        new: dict[str, Any],
        *,
        subresource: str | None,
    ) -> dict[str, Any]:
        """Store ``new`` in place of ``old`` with the API server's rules for each part."""
        name = old["metadata"]["name"]
        if subresource == "status":
            # Only the status changes through /status.
            merged = {k: v for k, v in old.items() if k != "status"}
            if "status" in new:
                merged["status"] = new["status"]
            new = merged
        elif spec.status_subresource:
            # The main resource never changes the status.
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in old:
                new["status"] = old["status"]
        old_meta = old["metadata"]
        meta = dict(new.get("metadata") or {})
        for fixed in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation", "resourceVersion"):  # fmt: skip
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
            else:
                meta.pop(fixed, None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise _invalid(
                    spec, name, "metadata.finalizers",
                    "Forbidden: no new finalizers can be added if the object is being deleted",
                )  # fmt: skip
        new["metadata"] = meta
        new["apiVersion"] = spec.api_version
        new["kind"] = spec.kind
        if _spec_part(spec, new) != _spec_part(spec, old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if new == old:
            return old  # a no-op write changes nothing, not even the resourceVersion
        key = self._key(spec, old_meta.get("namespace"), name)
        stored = self._store_object(spec, key, old, new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(spec, key)
        return stored

    def delete_object(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Delete an object as DELETE does (its dependents are left alone: no garbage
        collector runs here); returns the object as last seen."""
        obj = self._get(spec, namespace, name)
        meta = obj["metadata"]
        for field in ("uid", "resourceVersion"):
            wanted = (preconditions or {}).get(field)
            if wanted is not None and str(wanted) != meta.get(field):
                raise _conflict(spec, name, f"Precondition failed: {field}: {wanted}")
        if propagation not in (None, "Background", "Foreground", "Orphan"):
            raise _bad_request(f"propagationPolicy: unsupported value {propagation!r}")
        key = self._key(spec, namespace, name)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return obj
            marked = copy.deepcopy(obj)
            marked["metadata"]["deletionTimestamp"] = _rfc3339(self.clock())
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._store_object(spec, key, obj, marked)
        return self._remove(spec, key)

    def _remove(self, spec: ResourceSpec, key: ObjectKey) -> dict[str, Any]:
        """Remove an object for good."""
        obj = self._store[spec.key].pop(key)
        rv = self._next_rv()
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(rv)
        self._emit(spec, Change(rv, "DELETED", obj, gone))
        return gone


_STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _spec_part(spec: ResourceSpec, obj: Mapping[str, Any]) -> dict[str, Any]:
    """What ``generation`` counts changes of: everything but metadata (and status, if apart)."""
    skipped = {"metadata", "apiVersion", "kind"}
    if spec.status_subresource:
        skipped.add("status")
    return {k: v for k, v in obj.items() if k not in skipped}


# -- running it ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(
    *, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[KubeEmulator]:
    """Run an emulator on ``host:port`` (0 = a free port) in the current event loop."""
    emulator = KubeEmulator(**options)
    async with emulator, kmock.Server(emulator, host=host, port=port or None):
        try:
            yield emulator
        finally:
            emulator.close_watches()
            await asyncio.sleep(0)  # let the streams see the end before the server stops


def base_url(emulator: KubeEmulator) -> str:
    """The emulator's URL without a trailing slash, as COMPOSE_KUBE_URL wants it."""
    return str(emulator.url).rstrip("/")


class EmulatorThread:
    """An emulator serving from its own thread and event loop.

    Usable from sync and async tests alike, and from code that runs its own loop (kopf's
    KopfRunner, a FastAPI test client) without the test's loop having to be running. Tests
    write through the HTTP API (tests/support/cluster_client.py); reading ``stored()`` and
    ``request_log`` from the test's thread is safe, calling the ``*_object`` methods is not.
    """

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emulator: KubeEmulator | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)

    @property
    def emulator(self) -> KubeEmulator:
        if self._emulator is None:
            raise RuntimeError("the emulator thread is not running")
        return self._emulator

    @property
    def url(self) -> str:
        return base_url(self.emulator)

    def __enter__(self) -> KubeEmulator:
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the emulator did not start within 30 s")
        if self._error is not None:
            raise RuntimeError("the emulator failed to start") from self._error
        return self.emulator

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(**self._options) as emulator:
            self._emulator = emulator
            self._ready.set()
            await self._stop.wait()


def fetch_request_log(url: str, since: int = 0) -> list[RequestRecord]:
    """Read the request log of an emulator running in another process (blocking)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/_emulator/requests?since={since}", timeout=60) as rsp:
        data = json.load(rsp)
    return [RequestRecord.from_json(item) for item in data["items"]]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.support.kube_emulator --port N``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--keep-raw-requests",
        action="store_true",
        help="keep kmock's full request objects (memory grows with every request)",
    )
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with serve(
            host=args.host, port=args.port, keep_raw_requests=args.keep_raw_requests
        ) as emulator:
            print(f"KUBE_EMULATOR_URL={base_url(emulator)}", flush=True)
            await stop.wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
