"""The kopf handlers: thin adapters from watch events to :class:`~compose_operator.reconciler.
Reconciler`.

Importing this module registers the handlers in kopf's default registry; ``__main__`` imports it
and passes a :class:`Runtime` in kopf's memo. The CompositionJob and its children are observed
with ``kopf.on.event`` (level-based: every event re-derives the status) rather than
``on.create``/``on.update``, so kopf writes no progress annotations and needs no finalizer — a
CompositionJob can be deleted while the operator is down. A sweep task started at start-up is the
safety net for time-based decisions (start deadline, queue admission) and for errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf
import pydantic

from compose_api import models
from compose_api import pools as protocol
from compose_operator import names, peering, reconciler
from compose_operator import retention as retention_module
from compose_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

CHILD_LABELS = {names.MANAGED_BY_LABEL: names.MANAGED_BY}


class EventsOnlyDiffBase(kopf.DiffBaseStorage):
    """No diff base: with only ``on.event`` handlers kopf never uses one.

    kopf's default storage deep-copies every body on every event (pods included) to compute a
    diff that only ``on.create``/``on.update``/``on.delete`` handlers and daemons read; with
    thousands of objects that copy was the operator's largest single cost.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class EventsOnlyProgress(kopf.ProgressStorage):
    """No handler progress: ``on.event`` handlers run once per event and record nothing."""

    def fetch(self, *, key: Any, body: kopf.Body) -> None:
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


@dataclasses.dataclass
class Runtime:
    """What the handlers share, carried in kopf's memo (never in module globals)."""

    settings: OperatorSettings
    reconciler: reconciler.Reconciler
    identity: str = ""  # this instance's kopf peering identity
    priority: int = 0  # this instance's kopf peering priority (peering.effective_priority)
    sweeper: asyncio.Task[None] | None = None
    retention: retention_module.Retention | None = None
    # uid -> the timer that reads a finished job again when its retention is due
    retention_timers: dict[str, asyncio.TimerHandle] = dataclasses.field(default_factory=dict)
    background: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)

    async def enforce_retention(self, body: Mapping[str, Any]) -> None:
        """Delete a finished CompositionJob that is due; otherwise set a timer for when it is."""
        if self.retention is None:
            return
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        try:
            job = models.CompositionJob.model_validate(body)
        except pydantic.ValidationError:
            return  # not ours to judge: the reconciler reports it
        wait = await self.retention.enforce(job, now=reconciler.utcnow())
        old = self.retention_timers.pop(uid, None)
        if old is not None:
            old.cancel()
        if wait is None:
            return
        namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
        loop = asyncio.get_running_loop()
        self.retention_timers[uid] = loop.call_later(
            wait, lambda: self._spawn(self._retention_due(namespace, name, uid))
        )

    async def _retention_due(self, namespace: str, name: str, uid: str) -> None:
        self.retention_timers.pop(uid, None)
        try:
            body = await self.reconciler.client.get_composition_job(namespace, name)
            if body is not None and (body.get("metadata") or {}).get("uid") == uid:
                await self.enforce_retention(body)
        except Exception:
            logger.exception("retention of %s/%s failed; it is retried at the next event",
                             namespace, name)  # fmt: skip

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def forget_retention(self, uid: str) -> None:
        timer = self.retention_timers.pop(uid, None)
        if timer is not None:
            timer.cancel()

    async def standing_by(self) -> bool:
        """Whether a peer with a priority >= ours is alive (kopf has paused us, then)."""
        if self.settings.standalone:
            return False
        scopes: list[str | None] = (
            [None] if self.settings.clusterwide else list(self.settings.namespaces)
        )
        now = reconciler.utcnow()
        for namespace in scopes:
            peers = await self.reconciler.client.peering_status(
                self.settings.peering_name, namespace
            )
            if peering.standing_down(
                peers, identity=self.identity, priority=self.priority, now=now
            ):
                return True
        return False


async def connection(
    settings: OperatorSettings,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    kopf_settings: kopf.OperatorSettings | None = None,
) -> kopf.ConnectionInfo:
    """COMPOSE_KUBE_URL when set; else the service account, else the kubeconfig."""
    if settings.kube_url:
        return kopf.ConnectionInfo(server=settings.kube_url, default_namespace="default")
    options = kopf_settings or kopf.OperatorSettings()
    info = kopf.login_with_service_account(
        logger=logger, settings=options
    ) or kopf.login_with_kubeconfig(logger=logger, settings=options)
    if info is None:
        raise kopf.LoginError("no service account, no kubeconfig, and no COMPOSE_KUBE_URL")
    return info


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


async def _sweep_forever(
    runtime: Runtime, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    while True:
        await asyncio.sleep(runtime.settings.reconcile_interval_seconds)
        try:
            if await runtime.standing_by():
                continue  # the active peer does the work; what we last saw may be stale
            await runtime.reconciler.sweep()
        except Exception:
            runtime.reconciler.metrics.reconcile_errors.labels("Sweep").inc()
            logger.exception("the safety-net sweep failed; it runs again in a moment")


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    runtime = _runtime(memo)
    # Watch requests end after 5 min and a stream silent past kopf's inactivity_timeout (70 s;
    # bookmarks come every 60 s) is restarted: a frozen watch heals instead of going quiet.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.posting.loggers = False  # events are posted for transitions only
    # Level-based on.event handlers need neither a diff base nor progress records (see above).
    settings.persistence.diffbase_storage = EventsOnlyDiffBase()
    settings.persistence.progress_storage = EventsOnlyProgress()
    # Only our own Jobs and pods come over the wire (server-side label selection), not the
    # whole cluster's; the handlers' label filters below repeat it on the client side.
    managed = f"{names.MANAGED_BY_LABEL}={names.MANAGED_BY}"
    settings.watching.label_selectors["batch", "v1", "jobs"] = managed
    settings.watching.label_selectors["v1", "pods"] = managed
    settings.watching.label_selectors["apps", "v1", "deployments"] = managed
    # Pool workers' Leases only (the label's presence), not every Lease of the cluster.
    settings.watching.label_selectors["coordination.k8s.io", "v1", "leases"] = protocol.POOL_LABEL
    runtime.sweeper = asyncio.create_task(_sweep_forever(runtime, logger))


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    if runtime.sweeper is not None:
        runtime.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runtime.sweeper
    await runtime.reconciler.client.close()


@kopf.on.login()
async def login(
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    settings: kopf.OperatorSettings,
    **_: Any,
) -> Any:
    return await connection(_runtime(memo).settings, logger, settings)


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
async def composition_job_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    body = event["object"]
    if event.get("type") == "DELETED":
        runtime.reconciler.forget(body)
        runtime.forget_retention(str((body.get("metadata") or {}).get("uid") or ""))
        return
    if (body.get("status") or {}).get("phase") in models.TERMINAL_PHASES:
        try:
            await runtime.enforce_retention(body)
        except Exception:
            logger.exception("retention failed; it is tried again at the job's next event")
    echo = runtime.reconciler.inventory.is_status_echo(body)
    uid = runtime.reconciler.inventory.put(body)
    if echo:
        return  # our own status patch coming back, or a finished job: nothing to decide
    await runtime.reconciler.reconcile(uid)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
async def job_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    deleted = event.get("type") == "DELETED"
    owner = runtime.reconciler.child_changed("job", event["object"], deleted=deleted)
    if owner is not None:
        await runtime.reconciler.reconcile(owner)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
async def pod_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    deleted = event.get("type") == "DELETED"
    body = event["object"]
    if protocol.POOL_LABEL in ((body.get("metadata") or {}).get("labels") or {}):
        runtime.reconciler.pools.pod_event(body, deleted=deleted)  # a pool's worker
        return
    owner = runtime.reconciler.child_changed("pod", body, deleted=deleted)
    if owner is not None:
        await runtime.reconciler.reconcile(owner)


@kopf.on.event(models.GROUP, models.VERSION, protocol.PLURAL)
async def pool_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    deleted = event.get("type") == "DELETED"
    _runtime(memo).reconciler.pools.pool_event(event["object"], deleted=deleted)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
async def deployment_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    deleted = event.get("type") == "DELETED"
    _runtime(memo).reconciler.pools.deployment_event(event["object"], deleted=deleted)


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={protocol.POOL_LABEL: kopf.PRESENT})
async def lease_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    deleted = event.get("type") == "DELETED"
    _runtime(memo).reconciler.pools.lease_event(event["object"], deleted=deleted)
