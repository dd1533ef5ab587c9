"""The operator's own watches: CompositionJobs, their child Jobs and pods, and kopf's peering
object, read with the operator's client (:mod:`compose_operator.kubeapi`).

kopf's per-object machinery (a worker task and a queue per object, cause detection, three
loggers and the handlers' keyword arguments for every event) cost more CPU than the decisions
the events led to, and it has no back-pressure: during an initial list every object's body
waited in its own queue, so 10,000 finished CompositionJobs held 140 MiB at once. A
:class:`Watch` reads one kind in one namespace (or in all) and hands each event to a synchronous
function before it reads the next: memory holds one page of a list at a time, and an event
costs its JSON decoding and what the function does with it. kopf still runs the rest (the
pools' resources, peering, login, the liveness endpoint).

A watch lists in pages, then watches from the list's resourceVersion with bookmarks. A stream
the server ends is resumed where it stopped; one silent for :data:`SILENCE_SECONDS` (bookmarks
come every minute) is restarted; 410 Gone lists again, and the objects that went meanwhile are
handed on as deleted. Other errors are logged and retried after a growing pause.
:class:`Watches` runs one watch per kind and namespace the operator serves, and follows glob
patterns (``team-*``, ``!kube-*``) through a watch of the namespaces.

``handlers`` starts the watches and gives them their functions; nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from compose_operator import kubeapi

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
Handler = Callable[[str, Obj], None]  # ("ADDED" | "MODIFIED" | "DELETED", object)

SILENCE_SECONDS = 70.0  # a stream with no event or bookmark for this long is restarted
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # pauses after failures in a row
NAMESPACES = kubeapi.Watched("v1", "namespaces", namespaced=False)
_GLOB = frozenset("*?[!")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    return meta


def _key(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def _identity(obj: Mapping[str, Any]) -> Obj:
    """What a handler reads of an object that went while nobody watched: who it was."""
    meta = _meta(obj)
    kept = {k: meta[k] for k in ("uid", "name", "namespace", "labels") if k in meta}
    return {"metadata": kept}


class Watch:
    """One kind in one namespace (None: all), handed to ``handler`` event by event.

    ``listed`` is set once the first list has been handed on in full."""

    def __init__(
        self,
        client: kubeapi.KubeClient,
        kind: kubeapi.Watched,
        namespace: str | None,
        handler: Handler,
    ) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.handler = handler
        self.listed = asyncio.Event()
        self._known: dict[str, Obj] = {}  # key -> identity of the objects handed on
        self._version = ""

    def __repr__(self) -> str:
        where = self.namespace or "all namespaces"
        return f"<watch of {self.kind.plural} in {where}>"

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if not self._version:
                    await self._list()
                await self._follow()
                failures = 0
            except kubeapi.Gone:
                self._version = ""  # too old: list again
            except Exception as error:
                # An API error, a stream line that is not JSON (a cut connection), or anything
                # else: the watch must outlive it.
                pause = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                logger.warning("%r failed (%s); again in %.0f s", self, error, pause)
                await asyncio.sleep(pause)

    async def _list(self) -> None:
        seen: set[str] = set()
        token: str | None = None
        while True:
            items, token, version = await self.client.list_page(self.kind, self.namespace, token)
            for item in items:
                key = _key(item)
                seen.add(key)
                self._hand("ADDED", key, item)
            del items  # one page in memory at a time
            if not token:
                break
        for key in [k for k in self._known if k not in seen]:
            self._hand("DELETED", key, self._known[key])  # went while nobody watched
        self._version = version
        self.listed.set()

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        silence = asyncio.timeout(SILENCE_SECONDS)
        try:
            async with silence:
                async for kind, obj in self.client.watch(self.kind, self.namespace, self._version):
                    silence.reschedule(loop.time() + SILENCE_SECONDS)
                    version = _meta(obj).get("resourceVersion")
                    if version:
                        self._version = str(version)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._hand(kind, _key(obj), obj)
        except TimeoutError:
            if not silence.expired():
                raise
            logger.info("%r was silent for %.0f s; restarting it", self, SILENCE_SECONDS)

    def _hand(self, kind: str, key: str, obj: Obj) -> None:
        if kind == "DELETED":
            self._known.pop(key, None)
        else:
            self._known[key] = _identity(obj)
        try:
            self.handler(kind, obj)
        except Exception:
            logger.exception("handling %s %s of %r failed", kind, key, self)


def matches(namespace: str, pattern: str) -> bool:
    """kopf's namespace patterns, one glob each: ``team-*``; ``!kube-*`` is every namespace but
    those."""
    if pattern.startswith("!"):
        return not fnmatch.fnmatchcase(namespace, pattern[1:])
    return fnmatch.fnmatchcase(namespace, pattern)


class Watches:
    """The operator's watches: each kind in each namespace it serves (one cluster-wide watch
    when it serves all), namespaces matched by glob patterns followed as they come and go."""

    def __init__(self, client: kubeapi.KubeClient, namespaces: Iterable[str]) -> None:
        self.client = client
        patterns = tuple(namespaces)
        self.fixed: tuple[str | None, ...] = (
            tuple(p for p in patterns if not _GLOB & set(p)) if patterns else (None,)
        )
        self.patterns = tuple(p for p in patterns if _GLOB & set(p))
        self._kinds: list[tuple[kubeapi.Watched, Handler]] = []
        self._running: dict[tuple[str, str | None], tuple[Watch, asyncio.Task[None]]] = {}
        self._discovery: Watch | None = None
        self._discovery_task: asyncio.Task[None] | None = None

    def start(self, kind: kubeapi.Watched, handler: Handler) -> list[Watch]:
        """Watch ``kind`` wherever the operator serves (cluster-scoped kinds: once)."""
        self._kinds.append((kind, handler))
        started = []
        scopes: Iterable[str | None] = self.fixed if kind.namespaced else (None,)
        for namespace in scopes:
            started.append(self._start(kind, handler, namespace))
        if kind.namespaced and self.patterns:
            if self._discovery is None:
                self._discovery = Watch(self.client, NAMESPACES, None, self._namespace_event)
                self._discovery_task = asyncio.create_task(self._discovery.run())
            else:
                for name in self._matched():
                    started.append(self._start(kind, handler, name))
        return started

    async def listed(self, *kinds: kubeapi.Watched) -> None:
        """Until every watch of ``kinds`` has listed once: in the fixed namespaces and in those
        the namespace discovery found in its first list."""
        if self._discovery is not None:
            await self._discovery.listed.wait()
        plurals = {kind.plural for kind in kinds}
        running = [watch for (plural, _), (watch, _) in self._running.items() if plural in plurals]
        await asyncio.gather(*(watch.listed.wait() for watch in running))

    async def stop(self) -> None:
        tasks = [task for _, task in self._running.values()]
        if self._discovery_task is not None:
            tasks.append(self._discovery_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._running.clear()

    def _start(self, kind: kubeapi.Watched, handler: Handler, namespace: str | None) -> Watch:
        key = (kind.plural, namespace)
        if key in self._running:
            return self._running[key][0]
        watch = Watch(self.client, kind, namespace, handler)
        self._running[key] = (watch, asyncio.create_task(watch.run()))
        return watch

    def _matched(self) -> list[str]:
        known = self._discovery._known.values() if self._discovery is not None else []
        names = [str(_meta(obj).get("name") or "") for obj in known]
        return [n for n in names if n and any(matches(n, p) for p in self.patterns)]

    def _namespace_event(self, kind: str, obj: Obj) -> None:
        name = str(_meta(obj).get("name") or "")
        if not any(matches(name, pattern) for pattern in self.patterns) or name in self.fixed:
            return
        for watched, handler in self._kinds:
            if not watched.namespaced:
                continue
            if kind == "DELETED":
                found = self._running.pop((watched.plural, name), None)
                if found is not None:
                    found[1].cancel()
            else:
                self._start(watched, handler, name)
