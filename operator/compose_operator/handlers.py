"""The handlers: thin adapters from watch events to :class:`~compose_operator.reconciler.
Reconciler`.

CompositionJobs, their child Jobs and pods (and the pool workers' pods), and the Job
controller's FailedCreate Events of Jobs, come from the operator's own watches
(:mod:`compose_operator.watching`, started at start-up): each event is recorded in the
inventory at once and the job it concerns is reconciled soon, once for a burst of events.
The pools' own resources (CompositionPools, their Deployments, the workers' Leases) come through
``kopf.on.event``. Importing this module registers those and the start-up, clean-up and login
handlers in kopf's default registry; ``__main__`` imports it and passes a :class:`Runtime` in
kopf's memo. Everything is level-based (every event re-derives the status), so kopf writes no
progress annotations and needs no finalizer: a CompositionJob can be deleted while the operator
is down. With peering, the operator acts only while kopf's peering object shows no live peer
that outranks it (:func:`compose_operator.peering.standing_down`, on every change of the object
and at each sweep). A sweep task started at start-up is the safety net for time-based decisions
(start deadline, queue admission) and for errors.
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
from compose_operator import kubeapi, names, peering, reconciler, watching
from compose_operator import retention as retention_module
from compose_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

CHILD_LABELS = {names.MANAGED_BY_LABEL: names.MANAGED_BY}
MANAGED = f"{names.MANAGED_BY_LABEL}={names.MANAGED_BY}"
# Only the operator's own Jobs and pods come over the wire (server-side label selection).
COMPOSITION_JOBS = kubeapi.Watched(models.API_VERSION, models.PLURAL)
JOBS = kubeapi.Watched("batch/v1", "jobs", label_selector=MANAGED)
PODS = kubeapi.Watched("v1", "pods", label_selector=MANAGED)
# The Job controller's word that it cannot create a Job's pod (a quota, a LimitRange, an
# admission policy): rare, and selected by the server, so the watch costs little.
POD_REFUSALS = kubeapi.Watched(
    "v1", "events", field_selector="involvedObject.kind=Job,reason=FailedCreate"
)
LIST_CHUNK = 500  # objects per page of kopf's initial lists
EVENT_FLUSH_SECONDS = 5.0  # on shutdown, how long the Events still waiting may take
WORKER_IDLE_SECONDS = 0.5  # how long kopf keeps an object's worker (and its last body) idle


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
    watches: watching.Watches | None = None
    # kopf's peering object per scope ("" cluster-wide, else its namespace): its status, once
    # listed; the operator acts only when none shows a live peer that outranks it
    peers: dict[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    peering_scopes: int = 0  # how many scopes have a peering object to wait for

    def schedule_retention(self, body: Mapping[str, Any]) -> None:
        """Delete a finished CompositionJob that is due (in a task of its own); otherwise set a
        timer for when it is."""
        if self.retention is None:
            return
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        try:
            job = models.CompositionJob.model_validate(body)
        except pydantic.ValidationError:
            return  # not ours to judge: the reconciler reports it
        now = reconciler.utcnow()
        decided = retention_module.plan(job, now=now, settings=self.retention.settings)
        old = self.retention_timers.pop(uid, None)
        if old is not None:
            old.cancel()
        if decided.due:
            self._spawn(self._expire(job))
            return
        wait = decided.wait_seconds(now)
        if wait is None:
            return
        namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
        loop = asyncio.get_running_loop()
        self.retention_timers[uid] = loop.call_later(
            wait, lambda: self._spawn(self._retention_due(namespace, name, uid))
        )

    async def _expire(self, job: models.CompositionJob) -> None:
        if self.retention is None or self.reconciler.paused:
            return
        meta = job.metadata
        try:
            await self.retention.enforce(job, now=reconciler.utcnow())
        except Exception:
            logger.exception("retention of %s/%s failed; it is retried at the next event",
                             meta.namespace, meta.name)  # fmt: skip

    async def _retention_due(self, namespace: str, name: str, uid: str) -> None:
        self.retention_timers.pop(uid, None)
        try:
            body = await self.reconciler.client.get_composition_job(namespace, name)
        except Exception:
            logger.exception("retention of %s/%s failed; it is retried at the next event",
                             namespace, name)  # fmt: skip
            return
        if body is not None and (body.get("metadata") or {}).get("uid") == uid:
            self.schedule_retention(body)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def forget_retention(self, uid: str) -> None:
        timer = self.retention_timers.pop(uid, None)
        if timer is not None:
            timer.cancel()

    def peering_changed(self, scope: str, peers: Mapping[str, Any] | None) -> None:
        """kopf's peering object in ``scope`` changed (None: it is gone)."""
        self.peers[scope] = dict(peers or {})
        self.update_pause()

    def update_pause(self) -> None:
        """Stand by while a live peer outranks this instance (kopf pauses its own watches
        then); act again when none does. Until every scope's peering object has been read, wait.
        """
        if self.settings.standalone:
            return
        now = reconciler.utcnow()
        standing = len(self.peers) < self.peering_scopes or any(
            peering.standing_down(peers, identity=self.identity, priority=self.priority, now=now)
            for peers in self.peers.values()
        )
        self.reconciler.set_paused(standing)


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
            runtime.update_pause()  # a peer that outranked this one may have died since
            if runtime.reconciler.paused:
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
    # kopf's initial lists come in pages, and its per-object worker, which keeps the object's
    # last body while it waits for the next event, ends soon after its event.
    settings.watching.chunk_size = LIST_CHUNK
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # Level-based on.event handlers need neither a diff base nor progress records (see above).
    settings.persistence.diffbase_storage = EventsOnlyDiffBase()
    settings.persistence.progress_storage = EventsOnlyProgress()
    # Only the pools' own Deployments and the workers' Leases (the label's presence) come over
    # the wire, not the whole cluster's.
    settings.watching.label_selectors["apps", "v1", "deployments"] = MANAGED
    settings.watching.label_selectors["coordination.k8s.io", "v1", "leases"] = protocol.POOL_LABEL
    start_watches(runtime)
    runtime.sweeper = asyncio.create_task(_sweep_forever(runtime, logger))


def start_watches(runtime: Runtime) -> None:
    """The operator's own watches. Jobs and pods first: CompositionJobs are watched once their
    first lists are in, so that the first reconcile of a running job finds its children."""
    config = runtime.settings
    client = runtime.reconciler.client
    watches = runtime.watches = watching.Watches(client, config.namespaces)
    if not config.standalone:
        runtime.reconciler.set_paused(True)  # until the peering objects are read
        plural = "clusterkopfpeerings" if config.clusterwide else "kopfpeerings"
        kind = kubeapi.Watched(
            "kopf.dev/v1",
            plural,
            field_selector=f"metadata.name={config.peering_name}",
            namespaced=not config.clusterwide,
        )
        runtime.peering_scopes = len(watches.fixed)
        peerings = watches.start(kind, lambda kind_, body: _peering_event(runtime, kind_, body))

        async def peering_read() -> None:
            await watches.listed(kind)
            for watch in peerings:  # a scope without the object yet: no peer there
                runtime.peers.setdefault(watch.namespace or "", {})
            runtime.update_pause()

        runtime._spawn(peering_read())
    watches.start(JOBS, lambda kind, body: job_event(runtime, kind, body))
    watches.start(PODS, lambda kind, body: pod_event(runtime, kind, body))

    async def then_composition_jobs() -> None:
        await watches.listed(JOBS, PODS)
        watches.start(
            COMPOSITION_JOBS, lambda kind, body: composition_job_event(runtime, kind, body)
        )
        # Refusals name a Job: they are read once the jobs that own the Jobs are known.
        await watches.listed(COMPOSITION_JOBS)
        watches.start(POD_REFUSALS, lambda kind, body: pod_refused(runtime, kind, body))

    runtime._spawn(then_composition_jobs())


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    if runtime.sweeper is not None:
        runtime.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runtime.sweeper
    if runtime.watches is not None:
        await runtime.watches.stop()
    await runtime.reconciler.flush_events(EVENT_FLUSH_SECONDS)
    await runtime.reconciler.client.close()


@kopf.on.login()
async def login(
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    settings: kopf.OperatorSettings,
    **_: Any,
) -> Any:
    return await connection(_runtime(memo).settings, logger, settings)


def _peering_event(runtime: Runtime, kind: str, body: Mapping[str, Any]) -> None:
    meta = body.get("metadata") or {}
    peers = None if kind == "DELETED" else body.get("status")
    scope = str(meta.get("namespace") or "")
    runtime.peering_changed(scope, peers if isinstance(peers, Mapping) else None)


def composition_job_event(runtime: Runtime, kind: str, body: dict[str, Any]) -> None:
    if kind == "DELETED":
        runtime.reconciler.forget(body)
        runtime.forget_retention(str((body.get("metadata") or {}).get("uid") or ""))
        return
    if (body.get("status") or {}).get("phase") in models.TERMINAL_PHASES:
        runtime.schedule_retention(body)
    inventory = runtime.reconciler.inventory
    echo = inventory.is_status_echo(body)
    uid = inventory.put(body)
    if not echo:  # our own status patch coming back, or a finished job: nothing to decide
        runtime.reconciler.poke(uid)


def job_event(runtime: Runtime, kind: str, body: dict[str, Any]) -> None:
    owner = runtime.reconciler.child_changed("job", body, deleted=kind == "DELETED")
    if owner is not None:
        runtime.reconciler.poke(owner, after=reconciler.CHILD_EVENTS_SECONDS)


def pod_refused(runtime: Runtime, kind: str, body: dict[str, Any]) -> None:
    """A FailedCreate Event of a Job: its job shows why it has no pod."""
    if kind == "DELETED":
        return  # Events expire (an hour by default); the refusal they told stays true or not
    owner = runtime.reconciler.inventory.record_refusal(body)
    if owner is not None:
        runtime.reconciler.poke(owner, after=reconciler.CHILD_EVENTS_SECONDS)


def pod_event(runtime: Runtime, kind: str, body: dict[str, Any]) -> None:
    deleted = kind == "DELETED"
    if protocol.POOL_LABEL in ((body.get("metadata") or {}).get("labels") or {}):
        runtime.reconciler.pools.pod_event(body, deleted=deleted)  # a pool's worker
        return
    owner = runtime.reconciler.child_changed("pod", body, deleted=deleted)
    if owner is not None:
        runtime.reconciler.poke(owner, after=reconciler.CHILD_EVENTS_SECONDS)


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
