"""Executes the plans for CompositionJobs: read what is observed, ask the plan, act, in order.

The kopf handlers call :meth:`Reconciler.reconcile` for every event of a CompositionJob or of one
of its children (for a run of a job's Job and pod events, one reconcile, started
:data:`CHILD_EVENTS_SECONDS` after the first of them). Each call reads the in-memory
:class:`~compose_operator.inventory.Inventory` into an
:class:`~compose_operator.observed.Observed` (its queue place included), asks the pure
:func:`compose_operator.plan.plan` what to do, and executes the actions; the decisions are all
in the plan. Events are posted through the operator's own client, so a transition found by a
timer or by the sweep posts its Event like any other.

Time-based decisions do not wait for the sweep: a plan names when its start deadline falls due,
and a timer reconciles the job then. A slot freed under the caps (a job finished, its Job
finished or deleted, a job deleted or suspended) admits the next waiting jobs at once, and only
those: a finish costs one admission decision, not a reconcile of every waiting job. Without
caps no admission is computed at all. :meth:`Reconciler.sweep` remains the safety net for
errors, lost events and queue positions that have moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from compose_api import kube, models
from compose_api import pools as protocol
from compose_operator import (
    builders,
    inventory,
    kubeapi,
    metrics,
    names,
    observed,
    plan,
    pool_reconciler,
    pooljobs,
    pools,
    queueing,
    spans,
    status,
)
from compose_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

# The most characters of the API server's answer that a refused create puts in status.
REFUSAL_CHARS = 1024


class JobRefused(Exception):
    """The API server refused a Job create. Status says so; the sweep tries again. ``news``:
    this answer was not in status yet (logged as a warning; the same answer again, at debug)."""

    def __init__(self, message: str, *, news: bool) -> None:
        super().__init__(message)
        self.news = news


Clock = Callable[[], datetime.datetime]

# Plans in one reconcile (each may ask for one thing first: a fresh list, the pod wait).
_MAX_PLANS = 4
EVENT_POSTERS = 4  # Events in flight at once
# An Event waits while reconciles are pending (a burst of new jobs), at most this long: the API
# server's time goes to the Job creates and status writes first. The Event keeps its time.
EVENT_DEFER_SECONDS = 10.0
# The events of a job's Job and pods come in runs (a pod scheduled, then started; a pod's end,
# then its Job's conditions): the reconcile they ask for starts this long after the first of a
# run, so that one reconcile reads them all. A new CompositionJob is reconciled at once.
CHILD_EVENTS_SECONDS = 0.05


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Reconciler:
    """Everything one operator process needs to drive CompositionJobs."""

    def __init__(
        self,
        settings: OperatorSettings,
        client: kubeapi.KubeClient,
        *,
        inventory_: inventory.Inventory | None = None,
        metrics_: metrics.Metrics | None = None,
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client
        self.inventory = inventory_ or inventory.Inventory(settings.default_pools)
        self.metrics = metrics_ or metrics.Metrics()
        self.clock = clock
        self._monotonic = monotonic
        self._tasks: set[asyncio.Task[None]] = set()
        self._kicked: set[str] = set()  # uids with an admission reconcile already scheduled
        self._last_write: dict[str, float] = {}  # uid -> monotonic time of its last status write
        self._deferred: dict[str, asyncio.TimerHandle] = {}  # uid -> its next reconcile
        # uid -> until when a Job that finished waits for its pods' events (monotonic time)
        self._awaiting_pods: dict[str, float] = {}
        self._failed: set[str] = set()  # reconciles that raised: the sweep retries them
        self._poked: set[str] = set()  # uids with a reconcile scheduled that has not started
        # Events are posted a few at a time, so that a burst of them does not take the
        # connections the Job creates and status writes need.
        self._posting = asyncio.Semaphore(EVENT_POSTERS)
        self._active = 0  # reconciles running now
        self._quiet = asyncio.Event()  # set while no reconcile runs or waits to
        self._quiet.set()
        self._events: set[asyncio.Task[None]] = set()  # Events posted or waiting to be
        # With peering: a live peer outranks this instance, which then only keeps its view.
        self.paused = False
        self.pools = pool_reconciler.PoolReconciler(self)

    # -- entry points -----------------------------------------------------------------------

    def poke(self, uid: str, *, after: float = 0.0) -> None:
        """Reconcile the job soon, in a task of its own: once for all the events that come
        before that reconcile starts (it reads the newest of everything). ``after``: start it
        no sooner than that many seconds from now (a child's event, :data:`CHILD_EVENTS_SECONDS`),
        unless a reconcile is already on its way."""
        if uid in self._poked:
            return
        self._poked.add(uid)
        self._quiet.clear()
        self._spawn(uid, after)

    def set_paused(self, paused: bool) -> None:
        """Stand by (a peer outranks this instance) or act; on acting again every active job
        is reconciled, as what changed meanwhile brought no reconcile."""
        was, self.paused = self.paused, paused
        if was and not paused:
            namespaces = set()
            for uid in self.inventory.active_uids():
                self.poke(uid)
                found = self.inventory.tracked.get(uid)
                if found is not None:
                    namespaces.add(found.fields.namespace)
            for namespace in namespaces:
                self._kick_queue(namespace)

    async def reconcile(self, uid: str) -> None:
        """Bring one CompositionJob's children and status in line; errors are counted, and the
        sweep tries again."""
        self._active += 1
        self._quiet.clear()
        try:
            async with self.inventory.lock(uid):
                self._poked.discard(uid)  # events from here on need a reconcile of their own
                await self._reconcile_locked(uid)
        finally:
            self._active -= 1
            if not self._active and not self._poked:
                self._quiet.set()

    async def _reconcile_locked(self, uid: str) -> None:
        body = self.inventory.body(uid)
        if self.paused or body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        try:
            await self._reconcile(uid, body)
        except JobRefused as refused:  # in status already: no traceback, and once per answer
            self._failed.add(uid)
            self.metrics.reconcile_errors.labels("JobRefused").inc()
            level = logging.WARNING if refused.news else logging.DEBUG
            logger.log(level, "creating the Job of %s was refused: %s", _ref(body), refused)
        except Exception as error:
            self._failed.add(uid)
            self.metrics.reconcile_errors.labels(type(error).__name__).inc()
            logger.exception("reconciling %s failed", _ref(body))
        else:
            self._failed.discard(uid)
        finally:
            self._return_offer(uid, str((body.get("metadata") or {}).get("namespace") or ""))

    def _return_offer(self, uid: str, namespace: str) -> None:
        """A worker reserved for the job and not assigned to it goes back to its pool."""
        offer = self.inventory.reserved(uid)
        if offer is None:
            return
        self.inventory.release_offer(uid)
        if self.inventory.assigned_to(namespace, offer.instance) != uid:
            self.pools.dispatch_soon(namespace, offer.pool)

    def admitted(self, namespace: str) -> frozenset[str]:
        """The waiting jobs the caps let start now."""
        return frozenset(self._admissions(namespace))

    def child_changed(self, kind: str, body: Mapping[str, Any], *, deleted: bool) -> str | None:
        """Record a Job or Pod event; a Job that finished or went frees a slot. Returns the
        owning CompositionJob's uid when the event changed anything its decision reads."""
        owner, changed = self.inventory.record_child(kind, body, deleted=deleted)
        # ``kind`` is one of the two literals "job" and "pod" (interned, and "pod" sorts after
        # "job"): `is` or `<=` for `==` cannot change the result.
        if owner is not None and kind == "job":  # pragma: no mutate: *_Eq_Is, *_Eq_LtE
            view = observed.view_job(body)
            if deleted or not view.live:
                self._kick_queue(view.namespace)
        return owner if changed else None

    async def sweep(self) -> None:
        """The safety net: reconcile what failed or waits on time, admit what the queue now
        admits, and refresh queue positions that have moved (linear in the jobs)."""
        skip = {models.Phase.RUNNING, models.Phase.SUSPENDED, models.Phase.QUEUED}
        namespaces: set[str] = set()
        for uid in self.inventory.active_uids():
            found = self.inventory.tracked.get(uid)
            if found is None:
                continue
            namespaces.add(found.fields.namespace)
            if uid in self._failed or self.inventory.status_of(uid).phase not in skip:
                await self.reconcile(uid)
        for namespace in sorted(namespaces):
            self._kick_queue(namespace, refresh_positions=True)
        await self.pools.sweep()

    def forget(self, body: Mapping[str, Any]) -> None:
        """The CompositionJob is gone: drop it, and let the next job in its namespace start."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        found = self.inventory.tracked.get(uid)
        pool = found.pool if found is not None else None
        self.inventory.forget(uid)
        self._drop_timers(uid)
        self._failed.discard(uid)
        self.metrics.observe_phase(uid, "", None)
        namespace = str(meta.get("namespace") or "")
        self._kick_queue(namespace)
        if pool is not None:
            self.pools.changed(namespace, pool)

    # -- observing and planning -------------------------------------------------------------

    async def _reconcile(self, uid: str, body: Mapping[str, Any]) -> None:
        now = self.clock().replace(microsecond=0)
        listed: tuple[list[observed.JobView], list[dict[str, Any]]] | None = None
        pods_waited = False
        lease: tuple[protocol.WorkerLease | None] | None = None  # read from the API server
        for _ in range(_MAX_PLANS):
            seen = await self._observe(uid, body, listed=listed, pods_waited=pods_waited)
            if lease is not None:
                seen = dataclasses.replace(seen, lease=lease[0], lease_checked=True)
            decided = plan.plan(seen, now, self.settings)
            # Need is a plain Enum, whose `==` is identity, and None is a singleton: `==` for
            # `is` in these three tests cannot change them.
            if decided.need is plan.Need.LIST and listed is None:  # pragma: no mutate: *_Is_Eq
                listed = await self._list_children(seen)
                continue
            if decided.need is plan.Need.LEASE and lease is None:  # pragma: no mutate: *_Is_Eq
                lease = (await self._read_lease(seen),)
                continue
            if decided.need is plan.Need.PODS:  # pragma: no mutate: *_Is_Eq
                now_s = self._monotonic()
                until = self._awaiting_pods.setdefault(uid, now_s + plan.POD_CATCH_UP_SECONDS)
                if (wait := until - now_s) > 0:
                    self._later(uid, wait)  # the pods' events normally end the wait first
                    return
                pods_waited = True
                continue
            self._awaiting_pods.pop(uid, None)
            try:
                with spans.reconcile(body, decided, seen.previous):
                    await self._execute(uid, body, seen, decided)
            except kubeapi.ApiError as error:
                if error.status != 409 or not _conditional(decided):
                    raise
                # The job changed since the decision (a worker's report): read it, decide again.
                fresh = await self.client.get_composition_job(
                    seen.meta.namespace or "default", seen.meta.name
                )
                if fresh is None:
                    return
                self.inventory.put(fresh)
                body = self.inventory.body(uid) or fresh
                lease = None
                continue
            return
        raise RuntimeError(f"no decision for {_ref(body)} after {_MAX_PLANS} plans")

    async def _read_lease(self, seen: observed.Observed) -> protocol.WorkerLease | None:
        """The assigned worker's Lease from the API server (the watch may lag behind)."""
        assignment = seen.previous.assignment
        if assignment is None:
            return None
        namespace = seen.meta.namespace or "default"
        body = await self.client.get_lease(namespace, assignment.worker)
        if body is None:
            self.inventory.put_lease(
                {"metadata": {"namespace": namespace, "name": assignment.worker}}, deleted=True
            )
            return None
        self.inventory.put_lease(body, deleted=False)
        return protocol.view_lease(body)

    async def _observe(
        self,
        uid: str,
        body: Mapping[str, Any],
        *,
        listed: tuple[list[observed.JobView], list[dict[str, Any]]] | None,
        pods_waited: bool,
    ) -> observed.Observed:
        meta = models.ObjectMeta.model_validate(body.get("metadata") or {})
        previous = self.inventory.status_of(uid)
        read = self.inventory.spec_of(uid, body)
        spec, error = read.spec, read.error
        if listed is not None:
            jobs, pods = listed
        else:
            jobs = self.inventory.jobs_of(uid)
            pods = self.inventory.pods_of(uid, jobs[0].name) if jobs else []
        nodes: dict[str, dict[str, str]] = {}
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if node and node not in nodes:
                nodes[node] = await self.client.node_labels(str(node))
        pool_fields: dict[str, Any] = {}
        pool_name = pooljobs.pool_of(spec, self.settings) if spec is not None else None
        if not jobs and (pool_name is not None or previous.assignment is not None):
            pool_fields = await self._observe_pool(uid, meta, previous, pool_name)
        # No await from here to the admission mark in _execute: the queue place is current.
        queue, capped = self._queue_place(uid, meta, spec, jobs[0] if jobs else None)
        if pool_fields and queue is None and previous.assignment is None and spec is not None:
            pool_fields["offer"] = self.pools.offer(uid, meta.namespace or "default", pool_name)
        worker_node = pool_fields.pop("worker_node", None)
        if worker_node is not None:
            nodes[worker_node[0]] = worker_node[1]
        last = self._last_write.get(uid)
        return observed.Observed(
            **pool_fields,
            meta=meta,
            previous=previous,
            spec=spec,
            spec_error=error,
            jobs=tuple(jobs),
            pods=tuple(pods),
            nodes=nodes,
            queue=queue,
            capped=capped,
            listed=listed is not None,
            pods_waited=pods_waited,
            since_last_write=None if last is None else self._monotonic() - last,
            spec_hash=read.digest,
            refusal=self.inventory.refusals.get(uid),
        )

    async def _observe_pool(
        self,
        uid: str,
        meta: models.ObjectMeta,
        previous: models.CompositionJobStatus,
        pool_name: str | None,
    ) -> dict[str, Any]:
        """What a pool job's decision reads: the pool, the assigned worker's Lease and pod, the
        worker's report, and the labels of the node the worker runs on."""
        namespace = meta.namespace or "default"
        assignment = previous.assignment
        name = pool_name or (assignment.pool if assignment else "")
        pods = self.inventory.pool_pods(namespace, name)
        found: dict[str, Any] = {
            "pool_name": pool_name,
            "pool": self.inventory.pools.get((namespace, name)),
            "pool_problem": pools.problem_of(
                pods, self.inventory.deployments.get((namespace, name))
            ),
            "worker_report": self.inventory.worker_report(uid),
        }
        if assignment is not None:
            found["lease"] = self.inventory.leases.get((namespace, assignment.worker))
            pod = self.inventory.worker_pods.get((namespace, assignment.worker))
            found["worker_disrupted"] = pod.disrupted if pod is not None else None
            report = found["worker_report"]
            node = report.node_name if report is not None else (pod.node if pod else None)
            if node:
                found["worker_node"] = (node, await self.client.node_labels(node))
        return found

    def _queue_place(
        self,
        uid: str,
        meta: models.ObjectMeta,
        spec: models.CompositionJobSpec | None,
        job: observed.JobView | None,
    ) -> tuple[status.Queue | None, bool]:
        """(None: may start now | its place behind the caps, whether the caps apply)."""
        limits = self.settings.limits
        if spec is None or not limits.any or spec.execution.queue_name:
            return None, False
        if spec.suspend or (job is not None and not job.held_by_operator):
            return None, True  # held by the user, or running: no admission to decide
        namespace = meta.namespace or "default"
        place = self.inventory.standing(namespace).place(uid, limits)
        self.metrics.queue_depth.labels(namespace).set(place.depth)
        if place.position is None:
            return None, True
        return status.Queue(position=place.position, depth=place.depth), True

    def _admissions(self, namespace: str) -> list[str]:
        """The waiting jobs the caps let start now (no sort of the whole queue)."""
        standing = self.inventory.standing(namespace)
        admitted = standing.admitted(self.settings.limits)
        self.metrics.queue_depth.labels(namespace).set(standing.waiting - len(admitted))
        return admitted

    async def _list_children(
        self, seen: observed.Observed
    ) -> tuple[list[observed.JobView], list[dict[str, Any]]]:
        namespace = seen.meta.namespace or "default"
        selector = names.selector(seen.meta.uid or "")
        jobs = [observed.view_job(job) for job in await self.client.list_jobs(namespace, selector)]
        jobs.sort(key=lambda job: job.attempt, reverse=True)
        if not jobs:
            return [], []
        pods = await self.client.list_pods(namespace, selector)
        latest = jobs[0].name
        return jobs, [p for p in pods if _labels(p).get("job-name") in (None, latest)]

    # -- executing --------------------------------------------------------------------------

    async def _execute(
        self, uid: str, body: Mapping[str, Any], seen: observed.Observed, decided: plan.Plan
    ) -> None:
        namespace = seen.meta.namespace or "default"
        if decided.admit:
            self.inventory.admit(uid)  # taken before the first await: no double admission
        created = False
        try:
            if decided.together:
                # The intent and the Job's create at once: the create does not wait for the
                # write's round trip. The Job is recorded whatever became of the write, and a
                # refusal of the create is written after the intent, never overwritten by it.
                write, create = decided.actions
                writing = asyncio.create_task(self._act(uid, body, seen, write))
                try:
                    created = await self._act(uid, body, seen, create, written=writing)
                except BaseException:
                    await asyncio.wait([writing])
                    if not writing.cancelled():
                        writing.exception()  # the create's error is the one raised
                    raise
                await writing  # its error, if any, once the Job is recorded
            else:
                for planned in decided.actions:
                    created = await self._act(uid, body, seen, planned) or created
        except BaseException:
            if decided.admit and not created:
                self.inventory.release(uid)
                self._kick_queue(namespace)
            raise
        if seen.pool_name is not None or seen.previous.assignment is not None:
            for name in {seen.pool_name, *(a.pool for a in [seen.previous.assignment] if a)}:
                if name:
                    self.pools.changed(namespace, name)
        if decided.later is not None:
            self._later(uid, decided.later)
        if decided.recheck_at is not None:
            delay = (decided.recheck_at - self.clock()).total_seconds()
            self._later(uid, max(0.0, delay))

    async def _act(
        self,
        uid: str,
        body: Mapping[str, Any],
        seen: observed.Observed,
        planned: plan.Action,
        *,
        written: asyncio.Task[bool] | None = None,
    ) -> bool:
        """One action of a plan, in its span. Returns whether it created the job's Job or
        assigned it a worker. ``written``: the intent's write, sent at the same time as this
        create; a refusal of the create is recorded once it has ended."""
        namespace = seen.meta.namespace or "default"
        with spans.action(planned, seen.previous):
            action = spans.stamped(planned, seen.previous)
            if isinstance(action, plan.WriteStatus):
                await self._write(uid, body, seen.previous, action)
                return action.outcome.status.assignment is not None
            if isinstance(action, plan.CreateJob):
                try:
                    job = await self.client.create_job(action.manifest)
                except kube.KubeError as error:
                    if seen.job is not None or not _refused(error):
                        raise  # a new attempt's refusal: its Job is there to show
                    if written is not None:
                        await asyncio.wait([written])
                    news = await self._record_refusal(uid, body, seen, action, error)
                    raise JobRefused(str(error), news=news) from error
                self.inventory.put_child("job", job, deleted=False)
                return True
            if isinstance(action, plan.DeleteJob):
                await self.client.delete_job(namespace, action.name)
                gone = {"metadata": {"name": action.name, "labels": {names.UID_LABEL: uid}}}
                self.inventory.put_child("job", gone, deleted=True)
                self._kick_queue(namespace)
            elif isinstance(action, plan.SuspendJob):
                await self._set_suspended(uid, namespace, action)
            return False

    async def _record_refusal(
        self,
        uid: str,
        body: Mapping[str, Any],
        seen: observed.Observed,
        action: plan.CreateJob,
        error: kube.KubeError,
    ) -> bool:
        """The API server refused the Job, so none exists: status says so (a warning, with the
        server's answer), and the sweep tries again. The same refusal again writes nothing
        (returns False). A failure to write it is logged; the refusal is raised all the same."""
        previous = self.inventory.status_of(uid)
        cj = seen.composition().model_copy(update={"status": previous})
        answer = f"{error.status} {error.reason}: {error.message}"[:REFUSAL_CHARS]
        outcome = status.waiting(
            cj,
            seed=builders.choose_seed(cj),  # the seed plan() built the refused Job with
            queue=None,
            now=self.clock().replace(microsecond=0),
            creating=str(action.manifest["metadata"]["name"]),
            refused=answer,
        )
        refusal = plan.WriteStatus(outcome, status.event_for(previous, outcome))
        try:
            return await self._write(uid, body, previous, refusal)
        except Exception as problem:
            logger.warning("recording the refused create of %s failed: %s", _ref(body), problem)
            return True

    def later(self, uid: str, delay: float) -> None:
        """Reconcile the job again in ``delay`` seconds (the pool dispatcher's entry)."""
        self._later(uid, delay)

    def spawn(self, uid: str) -> None:
        """Reconcile the job soon, in a task of its own."""
        self.poke(uid)

    async def _set_suspended(self, uid: str, namespace: str, action: plan.SuspendJob) -> None:
        await self.client.patch_job(namespace, action.name, plan.suspend_patch(action.suspended))
        found = self.inventory.job(uid, action.name)
        if found is not None:
            # Seen at once by the queue, before the watch shows the change.
            updated = plan.suspended(found.body, action.suspended)
            self.inventory.put_child("job", updated, deleted=False)
        self.inventory.set_unsuspended(uid, not action.suspended)
        if action.suspended:
            self._kick_queue(namespace)  # a suspended job frees its slot

    async def _write(
        self,
        uid: str,
        body: Mapping[str, Any],
        previous: models.CompositionJobStatus,
        action: plan.WriteStatus,
    ) -> bool:
        """Patch the status (False: it already says that, nothing is sent), then post the
        Event off the critical path."""
        outcome = action.outcome
        meta = body.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        patch = status.to_patch(outcome.status, previous)
        if patch is None:
            return False
        version = self.inventory.resource_version(uid) if action.conditional else None
        written = await self.client.patch_status(
            namespace, str(meta.get("name")), patch, resource_version=version
        )
        self.inventory.record_write(
            uid, outcome.status, str((written.get("metadata") or {}).get("resourceVersion") or "")
        )
        self.metrics.observe_phase(uid, namespace, outcome.status.phase)
        for item in outcome.transitions:
            self.metrics.transitions.labels(item.type, item.status, item.reason).inc()
        if outcome.terminal:
            self._drop_timers(uid)
        else:
            self._last_write[uid] = self._monotonic()
        if action.event is not None:
            # Off the critical path: the Job create that follows an intent write does not wait.
            task = asyncio.create_task(self._post_event(dict(body), action.event, self.clock()))
            self._events.add(task)
            task.add_done_callback(self._events.discard)
        if outcome.terminal and previous.phase not in models.TERMINAL_PHASES:
            self.metrics.observe_finish(outcome.status)
            self._kick_queue(namespace)
        return True

    async def _post_event(
        self, body: Mapping[str, Any], event: status.Event, at: datetime.datetime
    ) -> None:
        """Post one Event once no reconcile is pending (or after ``EVENT_DEFER_SECONDS``); a
        failure is logged and counted, and loses nothing else."""
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EVENT_DEFER_SECONDS):
                    await self._quiet.wait()
            async with self._posting:
                await self.client.post_event(
                    body, type=event.type, reason=event.reason, message=event.message, now=at
                )
        except Exception as error:
            self.metrics.reconcile_errors.labels(f"Event{type(error).__name__}").inc()
            logger.warning("posting the %s Event of %s failed: %s", event.reason, _ref(body), error)

    async def flush_events(self, within: float) -> None:
        """Post the Events still waiting, without waiting for the reconciles (on shutdown),
        for at most ``within`` seconds."""
        self._quiet.set()
        if self._events:
            await asyncio.wait(set(self._events), timeout=within)

    # -- timers and the queue ---------------------------------------------------------------

    def _later(self, uid: str, delay: float) -> None:
        """Reconcile the job again in ``delay`` seconds; the earliest request wins."""
        loop = asyncio.get_running_loop()
        current = self._deferred.get(uid)
        if current is not None:
            # At an equal time, `<` for `<=` replaces the timer with one that fires at the same
            # moment: the same reconcile, so it cannot change what happens.
            if current.when() <= loop.time() + delay:  # pragma: no mutate: *_LtE_Lt
                return
            current.cancel()
        self._deferred[uid] = loop.call_later(delay, self._reconcile_deferred, uid)

    def _reconcile_deferred(self, uid: str) -> None:
        self._deferred.pop(uid, None)
        self.poke(uid)

    def _spawn(self, uid: str, after: float) -> None:
        task = asyncio.create_task(self._reconcile_after(uid, after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconcile_after(self, uid: str, after: float) -> None:
        if after > 0:
            await asyncio.sleep(after)
        await self.reconcile(uid)

    def _drop_timers(self, uid: str) -> None:
        self._last_write.pop(uid, None)
        self._awaiting_pods.pop(uid, None)
        deferred = self._deferred.pop(uid, None)
        if deferred is not None:
            deferred.cancel()

    def _kick_queue(self, namespace: str, *, refresh_positions: bool = False) -> None:
        """A slot may have freed: reconcile the jobs the queue now admits, and only those (and,
        from the sweep, the waiting jobs whose written position is due for a refresh)."""
        if not self.settings.limits.any or not namespace:
            return
        refresh = self.settings.queue_position_refresh_seconds
        if not (refresh_positions and refresh > 0):
            chosen = set(self._admissions(namespace))
        else:
            # The sweep's full decision, a sort of the namespace's queue once a sweep;
            # it also checks that the standing queue missed no change (none ever should).
            drift = self.inventory.standing_drift(namespace)
            if drift:
                logger.warning(
                    "the queue of namespace %s missed changes of %d job(s); mended",
                    namespace,
                    len(drift),
                )
            entries = self.inventory.standing(namespace).entries()
            decision = queueing.decide(entries, self.settings.limits)
            self.metrics.queue_depth.labels(namespace).set(decision.depth)
            chosen = set(decision.admitted)
            now_s = self._monotonic()
            for uid, position in decision.positions.items():
                last = self._last_write.get(uid)
                due = last is None or now_s - last >= refresh
                if due and self.inventory.status_of(uid).queue_position != position:
                    chosen.add(uid)
        for uid in chosen - self._kicked:
            self._kicked.add(uid)
            task = asyncio.create_task(self._admit(uid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _admit(self, uid: str) -> None:
        try:
            await self.reconcile(uid)
        finally:
            self._kicked.discard(uid)


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels: Mapping[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


def _refused(error: kube.KubeError) -> bool:
    """An answer that says the Job was not made and will not be by asking again at once: not
    allowed (RBAC, a quota, an admission webhook or policy), invalid, or a Job of that name
    owned by someone else. A conflict of our own, throttling and no answer are not refusals."""
    if isinstance(error, kubeapi.ForeignObjectError):
        return True
    return 400 <= error.status < 500 and error.status not in (409, 429)


def _ref(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _conditional(decided: plan.Plan) -> bool:
    return any(isinstance(a, plan.WriteStatus) and a.conditional for a in decided.actions)
