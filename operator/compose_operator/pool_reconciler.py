"""Executes the decisions for CompositionPools: their Deployments, sizes, status and dispatch.

The kopf handlers hand every event of a pool, of its Deployment, of its workers' Leases and of
their pods to :class:`PoolReconciler`, which keeps them in the
:class:`~compose_operator.inventory.Inventory` and reacts:

- **Pool reconcile** (:meth:`PoolReconciler.reconcile_pool`, debounced per pool): the size from
  the demand (:func:`compose_operator.pools.size`), the Deployment created or patched when it
  differs, the pool's status written when it changed (counts at most once per
  ``status_coalesce_seconds``), the demand and worker metrics (KEDA reads the demand).
- **Dispatch** (:meth:`PoolReconciler.offer`): a pool job that may start (past the caps) is
  offered an idle worker when its place in the pool's order (priority, fair share across owners,
  age) is within the number of idle workers; the offer is reserved before the job's assignment
  is written, so two jobs never get one worker. A worker that becomes idle (a new Lease, a job
  finished) makes the next waiting jobs reconcile at once.
- **Lost workers**: a Lease deleted, taken over by a new process or marked draining makes the
  job assigned to the old worker reconcile at once; an expiring Lease is caught by the timer the
  job's plan sets at its expiry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from compose_api import pools as protocol
from compose_operator import kubeapi, pooljobs, pools, queueing

if TYPE_CHECKING:
    from compose_operator.reconciler import Reconciler

logger = logging.getLogger(__name__)

# A burst of job events reconciles each pool once, this long after the first of them.
DEBOUNCE_SECONDS = 0.2

Key = tuple[str, str]  # (namespace, pool)


class PoolReconciler:
    """Everything the operator does for pools; one per :class:`Reconciler`."""

    def __init__(self, jobs: Reconciler) -> None:
        self.jobs = jobs
        self.inventory = jobs.inventory
        self.settings = jobs.settings
        self.client = jobs.client
        self.metrics = jobs.metrics
        self._locks: dict[Key, asyncio.Lock] = {}
        self._pending: dict[Key, asyncio.TimerHandle] = {}
        self._dispatching: set[Key] = set()
        self._written: dict[Key, protocol.CompositionPoolStatus] = {}
        self._last_write: dict[Key, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- events -----------------------------------------------------------------------------

    def pool_event(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        view = self.inventory.put_pool(body, deleted=deleted)
        key = (view.namespace, view.name)
        if deleted:
            self._written.pop(key, None)
            self._last_write.pop(key, None)
            self.metrics.forget_pool(*key)
            for uid in self.inventory.pool_job_uids(*key):
                self.jobs.spawn(uid)  # PoolNotFound, or taken back when their worker goes
            return
        self.changed(*key, dispatch=True)

    def deployment_event(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        view = self.inventory.put_deployment(body, deleted=deleted)
        if view is not None:
            self.changed(view.namespace, view.pool, dispatch=False)

    def lease_event(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        before, now_seen = self.inventory.put_lease(body, deleted=deleted)
        lease = now_seen or before
        if lease is None:
            return
        namespace = str((body.get("metadata") or {}).get("namespace") or "default")
        if before is not None and (
            now_seen is None
            or now_seen.instance != before.instance
            or now_seen.state != before.state
        ):
            # The worker process went, was replaced, or drains: its job is looked at now.
            uid = self.inventory.assigned_to(
                namespace, protocol.holder_identity(before.pod, before.instance)
            )
            if uid is not None:
                self.jobs.spawn(uid)
        changed = (
            before is None
            or now_seen is None
            or (now_seen.instance, now_seen.state) != (before.instance, before.state)
        )
        self.changed(namespace, lease.pool, dispatch=True, status=changed)

    def pod_event(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        before_key = (
            str((body.get("metadata") or {}).get("namespace") or "default"),
            str((body.get("metadata") or {}).get("name") or ""),
        )
        before = self.inventory.worker_pods.get(before_key)
        view = self.inventory.put_worker_pod(body, deleted=deleted)
        if view is None:
            return
        if before is None or (before.problem, before.node) != (view.problem, view.node) or deleted:
            self.changed(view.namespace, view.pool, dispatch=False)

    def changed(
        self, namespace: str, pool: str, *, dispatch: bool = True, status: bool = True
    ) -> None:
        """Something the pool reads changed: reconcile it soon (once for a burst), and offer its
        idle workers to its waiting jobs."""
        key = (namespace, pool)
        if status:
            self._reconcile_in(key, DEBOUNCE_SECONDS)
        if dispatch:
            self.dispatch_soon(namespace, pool)

    def _reconcile_in(self, key: Key, delay: float) -> None:
        """Reconcile the pool in ``delay`` seconds, or sooner where a reconcile is already due
        sooner: one timer per pool, always the earliest asked for (a later recheck of the scale
        down never postpones a status write or an event's reconcile)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        handle = self._pending.get(key)
        if handle is not None:
            if handle.when() <= due:
                return
            handle.cancel()
        self._pending[key] = loop.call_at(due, self._run_pending, key)

    def _run_pending(self, key: Key) -> None:
        self._pending.pop(key, None)
        self._spawn(self.reconcile_pool(*key))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def sweep(self) -> None:
        """The safety net: every pool reconciled, every idle worker offered."""
        for key in sorted(self.inventory.pools):
            await self.reconcile_pool(*key)
            self.dispatch_soon(*key)

    # -- dispatch ---------------------------------------------------------------------------

    def _waiting(self, namespace: str, pool: str) -> list[queueing.Entry]:
        """The pool's jobs that want a worker and may start now, in dispatch order."""
        limits = self.settings.limits
        admitted = self.jobs.admitted(namespace) if limits.any else None
        waiting: list[queueing.Entry] = []
        holding: Counter[str] = Counter()
        for uid in self.inventory.pool_job_uids(namespace, pool):
            found = self.inventory.tracked.get(uid)
            if found is None or found.finished:
                continue
            if found.worker is not None:
                holding[found.fields.owner] += 1
                continue
            if found.fields.suspend:
                continue
            if admitted is not None and not found.admitted and uid not in admitted:
                continue  # behind the caps
            fields = found.fields
            waiting.append(
                queueing.Entry(
                    uid, fields.name, fields.priority, fields.created, False, True, fields.owner
                )
            )
        return queueing.fair_order(waiting, holding)

    def offer(self, uid: str, namespace: str, pool: str | None) -> pooljobs.Offer | None:
        """An idle worker for the job, reserved for it, when its turn has come (None: wait).

        Called with no await between it and the write of the assignment."""
        if pool is None:
            return None
        kept = self.inventory.reserved(uid)
        if kept is not None:
            return kept
        now = self.jobs.clock()
        idle = self.inventory.idle_workers(namespace, pool, now)
        if not idle:
            return None
        order = [
            e.uid for e in self._waiting(namespace, pool) if not self.inventory.reserved(e.uid)
        ]
        rank = order.index(uid) if uid in order else len(order)
        if rank >= len(idle):
            return None
        lease = idle[0]
        offer = pooljobs.Offer(pool, lease.pod, protocol.holder_identity(lease.pod, lease.instance))
        self.inventory.reserve(uid, namespace, offer)
        return offer

    def dispatch_soon(self, namespace: str, pool: str) -> None:
        key = (namespace, pool)
        if key in self._dispatching:
            return
        self._dispatching.add(key)
        asyncio.get_running_loop().call_soon(self._dispatch, key)

    def _dispatch(self, key: Key) -> None:
        """Reconcile as many of the pool's waiting jobs as it has idle workers, best first."""
        self._dispatching.discard(key)
        idle = self.inventory.idle_workers(*key, self.jobs.clock())
        if not idle:
            return
        chosen = [e.uid for e in self._waiting(*key) if not self.inventory.reserved(e.uid)]
        for uid in chosen[: len(idle)]:
            self.jobs.spawn(uid)

    # -- the pool ---------------------------------------------------------------------------

    def demand(self, namespace: str, pool: str) -> tuple[int, int]:
        """(queued, running): jobs waiting for a worker of the pool (past the caps), and jobs
        assigned to one."""
        running = sum(
            1
            for uid in self.inventory.pool_job_uids(namespace, pool)
            if (found := self.inventory.tracked.get(uid)) is not None and found.worker is not None
        )
        return len(self._waiting(namespace, pool)), running

    async def reconcile_pool(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        async with self._locks.setdefault(key, asyncio.Lock()):
            try:
                await self._reconcile_pool(key)
            except Exception as error:
                self.metrics.reconcile_errors.labels(f"Pool{type(error).__name__}").inc()
                logger.exception("reconciling pool %s/%s failed", namespace, name)

    async def _reconcile_pool(self, key: Key) -> None:
        pool = self.inventory.pools.get(key)
        if pool is None or pool.deleting:
            return
        now = self.jobs.clock().replace(microsecond=0)
        previous = self._written.get(key, pool.status)
        current = pool if previous is pool.status else _with_status(pool, previous)
        if pool.spec is None:
            new = pools.rejected(
                current,
                protocol.PoolReason.INVALID_SPEC,
                pool.spec_error or "spec: invalid",
                now=now,
            )
            await self._write_status(key, pool, new, previous, urgent=True)
            return
        profile = self.settings.profiles.get(pool.spec.profile)
        if profile is None:
            known = ", ".join(sorted(self.settings.profiles)) or "none configured"
            message = f"spec.profile: unknown profile {pool.spec.profile!r} (known: {known})"
            new = pools.rejected(current, protocol.PoolReason.UNKNOWN_PROFILE, message, now=now)
            await self._write_status(key, pool, new, previous, urgent=True)
            return
        queued, running = self.demand(*key)
        deployment = self.inventory.deployments.get(key)
        scaled = pools.size(
            pool.spec,
            current=deployment.replicas if deployment is not None else None,
            demand=queued + running,
            last_active=previous.last_active_time,
            now=now,
        )
        wanted = pools.build_deployment(pool, profile, self.settings, replicas=scaled.desired)
        if deployment is None:
            created = await self.client.create_deployment(wanted)
            if created is not None:
                deployment = self.inventory.put_deployment(created, deleted=False)
        else:
            patch = pools.deployment_patch(wanted, deployment)
            if patch is not None:
                patched = await self.client.patch_deployment(
                    namespace=key[0], name=deployment.name, patch=patch
                )
                deployment = self.inventory.put_deployment(patched, deleted=False)
        workers = pools.count_workers(
            self.inventory.pool_leases(*key), self.inventory.busy_instances(key[0]), now
        )
        problem = pools.problem_of(self.inventory.pool_pods(*key), deployment)
        new = pools.compute_status(
            current,
            deployment=deployment,
            workers=workers,
            queued=queued,
            running=running,
            scaled=scaled,
            problem=problem,
            now=now,
        )
        self.metrics.observe_pool(key[0], key[1], demand=queued + running, workers=workers)
        await self._write_status(
            key, pool, new, previous, urgent=not pools.counts_only(new, previous)
        )
        if scaled.recheck_at is not None:
            delay = max(0.5, (scaled.recheck_at - self.jobs.clock()).total_seconds() + 1.0)
            self._reconcile_in(key, delay)

    async def _write_status(
        self,
        key: Key,
        pool: pools.PoolView,
        new: protocol.CompositionPoolStatus,
        previous: protocol.CompositionPoolStatus,
        *,
        urgent: bool,
    ) -> None:
        patch = pools.status_patch(new, previous)
        if patch is None:
            return
        window = self.settings.status_coalesce_seconds
        last = self._last_write.get(key)
        if not urgent and last is not None and window > 0:
            wait = window - (time.monotonic() - last)
            if wait > 0:
                self._reconcile_in(key, wait)
                return
        try:
            await self.client.patch_pool_status(pool.namespace, pool.name, patch)
        except kubeapi.ApiError as error:
            if error.status == 404:
                return  # deleted meanwhile
            raise
        self._written[key] = new
        self._last_write[key] = time.monotonic()


def _with_status(pool: pools.PoolView, written: protocol.CompositionPoolStatus) -> pools.PoolView:
    """The pool as last written by this process (the watch may not have shown it yet)."""
    from dataclasses import replace

    return replace(pool, status=written)
