"""The operator's in-memory view of CompositionJobs, their child Jobs and pods.

Fed by the watch handlers in :mod:`compose_operator.handlers` (kopf streams every change), read
by :mod:`compose_operator.reconciler`, so that reconciling a job costs no API reads. It also
remembers the status this process last wrote for each job (the operator is the only writer of
status, so that is the newest one even before the watch echoes it back) and what each job means
to the queue, so that an admission reads small records, never bodies. Plain data and no I/O.

Finished jobs are kept light: no body, no status, no pods; only their Job while the Job
controller has not finished it (it still holds a slot under the caps).

For pools it keeps the CompositionPools, their Deployments, the workers' Leases and pods, which
active job is assigned to which worker process, and the workers the dispatcher has reserved for a
job whose assignment is being written.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

import pydantic

from compose_api import models
from compose_api import pools as protocol
from compose_operator import observed, pooljobs, pools, queueing, status

_VOLATILE_METADATA = frozenset({"resourceVersion", "managedFields"})
_COMPARED_APART = frozenset({"spec", "metadata", "status"})  # by is_status_echo, each on its own
_TERMINAL = frozenset(str(phase) for phase in models.TERMINAL_PHASES)


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


@dataclasses.dataclass
class Tracked:
    """One CompositionJob: its body while it is active, what the queue reads, and its state."""

    uid: str
    fields: observed.QueueFields
    body: dict[str, Any] | None  # None once finished
    admitted: bool  # may start: its Job is being (or was) created, or it was resumed
    finished: bool = False
    written: models.CompositionJobStatus | None = None  # what this process last wrote
    parsed: models.CompositionJobStatus | None = None  # the body's status, parsed on demand
    spec: observed.SpecView | None = None  # the body's spec, validated once per generation
    revision: int = 0  # bumped on every change the queue reads (its entry is cached by it)
    pool: str | None = None  # the pool that runs it (None: Job mode)
    worker: str | None = None  # pool mode: the worker instance its attempt is assigned to
    resource_version: str = ""  # the newest known, from the watch or from our own write


class Inventory:
    """Latest known objects, keyed by the CompositionJob's uid."""

    def __init__(self, default_pools: Mapping[str, str] | None = None) -> None:
        self.default_pools = dict(default_pools or {})
        self.tracked: dict[str, Tracked] = {}
        self.jobs: dict[str, dict[str, observed.JobView]] = collections.defaultdict(dict)
        self.pods: dict[str, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        # Per namespace, the jobs the queue must look at: not finished, or a Job still running.
        self._active: dict[str, set[str]] = collections.defaultdict(set)
        # Jobs this process unsuspended on resume, until the watch shows it: an event from before
        # the patch must not make them look held (and free their slot) in the meantime.
        self.unsuspended: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        # uid -> ((revision, unsuspended), its queue entry): the sweep's full decision reads
        # cached entries, and only jobs that changed are looked at again.
        self._entries: dict[str, tuple[tuple[int, bool], queueing.Entry | None]] = {}
        # Per namespace, the queue kept in order (one job's admission reads it; made at the
        # first read), and the jobs changed since it was last read: every change a queue entry
        # reads marks its job here.
        self._standings: dict[str, queueing.Standing] = {}
        self._dirty: dict[str, set[str]] = collections.defaultdict(set)
        # Pools, keyed by (namespace, name), and what belongs to them.
        self.pools: dict[tuple[str, str], pools.PoolView] = {}
        self.deployments: dict[tuple[str, str], pools.DeploymentView] = {}
        self.leases: dict[tuple[str, str], protocol.WorkerLease] = {}  # (namespace, pod)
        self.worker_pods: dict[tuple[str, str], pools.WorkerPod] = {}  # (namespace, pod)
        self._pool_jobs: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        self._busy: dict[tuple[str, str], str] = {}  # (namespace, worker instance) -> uid
        self._reserved: dict[str, pooljobs.Offer] = {}  # uid -> the worker reserved for it
        self._reserved_by: dict[tuple[str, str], str] = {}  # (namespace, instance) -> uid
        # uid -> the Job controller's latest word that it cannot create a pod of the job's Job
        self.refusals: dict[str, status.Refusal] = {}

    # -- CompositionJobs --------------------------------------------------------------------

    def put(self, body: Mapping[str, Any]) -> str:
        uid = _uid(body)
        fields = observed.queue_fields(body)
        found = self.tracked.get(uid)
        if found is not None and found.finished:
            found.fields = fields
            self._touch(found)
            return uid  # terminal stays terminal: nothing more is kept or decided
        phase = (body.get("status") or {}).get("phase")
        if found is None:
            admitted = _admitted(body.get("status") or {})
            found = Tracked(uid=uid, fields=fields, body=dict(body), admitted=admitted)
            self.tracked[uid] = found
            self._touch(found)
        else:
            found.fields, found.body, found.parsed = fields, dict(body), None
            self._touch(found)
        found.resource_version = _newer(
            found.resource_version, str((body.get("metadata") or {}).get("resourceVersion") or "")
        )
        if found.written is None and phase in _TERMINAL:
            self.finish(uid)  # finished before this process saw it (a restart)
            return uid
        self._active[fields.namespace].add(uid)
        self._index_pool(found)
        if found.written is None:
            assignment = ((body.get("status") or {}).get("assignment") or {}).get("workerInstance")
            self._set_worker(found, str(assignment) if assignment else None)
        return uid

    def pool_of(self, fields: observed.QueueFields) -> str | None:
        if fields.kueue:
            return None
        return fields.pool or self.default_pools.get(fields.profile)

    def _index_pool(self, found: Tracked) -> None:
        pool = None if found.finished else self.pool_of(found.fields)
        # The same pool again would be taken out of its set and put back: `is` for `==` cannot
        # change the result.
        if pool == found.pool:  # pragma: no mutate: *_Eq_Is
            return
        if found.pool is not None:
            self._pool_jobs[(found.fields.namespace, found.pool)].discard(found.uid)
        found.pool = pool
        if pool is not None:
            self._pool_jobs[(found.fields.namespace, pool)].add(found.uid)

    def _set_worker(self, found: Tracked, instance: str | None) -> None:
        """Which worker instance the job's attempt is assigned to (None: none)."""
        namespace = found.fields.namespace
        # The same worker again would be unmarked and marked busy again; and ``_busy`` holds
        # the job's own uid object: `is` for these `==` cannot change the result.
        if found.worker == instance:  # pragma: no mutate: *_Eq_Is
            return
        if found.worker is not None:
            holder = self._busy.get((namespace, found.worker))
            if holder == found.uid:  # pragma: no mutate: *_Eq_Is
                del self._busy[(namespace, found.worker)]
        found.worker = instance
        self._touch(found)
        if instance is not None:
            self._busy[(namespace, instance)] = found.uid

    def is_status_echo(self, body: Mapping[str, Any]) -> bool:
        """Whether ``body`` differs from the stored one in its status (and resourceVersion or
        managedFields) only, and this process has written that job's status.

        Such an event is the echo of our own status patch: the reconciler reads the status it
        wrote, not the one in the body, so reconciling again would only recompute the same.
        """
        found = self.tracked.get(_uid(body))
        if found is None or found.finished:
            return found is not None  # a finished job: nothing to reconcile either
        stored = found.body
        if stored is None or found.written is None:
            return False
        if stored.get("spec") != body.get("spec"):
            return False
        if _report(stored) != _report(body):
            return False  # a pool worker wrote its report: news, not our echo
        old_meta, new_meta = stored.get("metadata") or {}, body.get("metadata") or {}
        # `^` for `-` here and below adds only keys that neither body has, which read None on
        # both sides: it cannot change the result.
        named = set(old_meta) | set(new_meta)
        keys = named - _VOLATILE_METADATA  # pragma: no mutate: *_Sub_BitXor
        if any(old_meta.get(key) != new_meta.get(key) for key in keys):
            return False
        fields = set(stored) | set(body)
        others = fields - _COMPARED_APART  # pragma: no mutate: *_Sub_BitXor
        return all(stored.get(key) == body.get(key) for key in others)

    def forget(self, uid: str) -> None:
        found = self.tracked.get(uid)
        if found is not None:
            self._touch(found)
            self._set_worker(found, None)
            self._release_offer(uid)
            if found.pool is not None:
                self._pool_jobs[(found.fields.namespace, found.pool)].discard(uid)
        self.tracked.pop(uid, None)
        self._entries.pop(uid, None)
        if found is not None:
            self._active[found.fields.namespace].discard(uid)
        self.jobs.pop(uid, None)
        self.pods.pop(uid, None)
        self.refusals.pop(uid, None)
        self.unsuspended.discard(uid)
        self._locks.pop(uid, None)

    def finish(self, uid: str) -> None:
        """The job reached a terminal phase: drop its body, status and pods; keep only its Jobs
        that the Job controller has not finished, as long as they hold a slot."""
        found = self.tracked.get(uid)
        if found is None:
            return
        found.finished, found.body, found.written, found.parsed = True, None, None, None
        found.spec = None
        # Tidy only: every reader of `admitted` skips a finished job, so True for False here
        # cannot change a result.
        found.admitted = False  # pragma: no mutate: ReplaceFalseWithTrue
        self._touch(found)
        self._set_worker(found, None)
        self._release_offer(uid)
        self._index_pool(found)
        self.pods.pop(uid, None)
        self.refusals.pop(uid, None)
        self._prune(uid)

    def _prune(self, uid: str) -> None:
        found = self.tracked.get(uid)
        if found is None or not found.finished:
            return
        self._touch(found)
        jobs = {name: job for name, job in self.jobs.get(uid, {}).items() if job.live}
        if jobs:
            self.jobs[uid] = jobs
        else:
            self.jobs.pop(uid, None)
            self._active[found.fields.namespace].discard(uid)
            self._entries.pop(uid, None)

    def _touch(self, found: Tracked) -> None:
        """Something the job's queue entry reads changed: its cached entry is stale, and the
        namespace's :class:`~compose_operator.queueing.Standing` reads it again."""
        found.revision += 1
        if found.fields.namespace in self._standings:  # else nothing reads the marks
            self._dirty[found.fields.namespace].add(found.uid)

    def set_unsuspended(self, uid: str, value: bool) -> None:
        """This process unsuspended the job's Job (True), or suspended it again (False)."""
        if value:
            self.unsuspended.add(uid)
        else:
            self.unsuspended.discard(uid)
        found = self.tracked.get(uid)
        if found is not None:
            self._touch(found)

    def body(self, uid: str) -> dict[str, Any] | None:
        found = self.tracked.get(uid)
        return found.body if found is not None else None

    def is_finished(self, uid: str) -> bool:
        found = self.tracked.get(uid)
        return found is not None and found.finished

    def status_of(self, uid: str) -> models.CompositionJobStatus:
        """What this process last wrote, else what the API server last showed."""
        found = self.tracked.get(uid)
        if found is None or found.finished:
            return models.CompositionJobStatus()
        if found.written is not None:
            return found.written
        if found.parsed is None:
            try:
                found.parsed = models.CompositionJobStatus.model_validate(
                    (found.body or {}).get("status") or {}
                )
            except pydantic.ValidationError:
                found.parsed = models.CompositionJobStatus()
        return found.parsed

    def spec_of(self, uid: str, body: Mapping[str, Any]) -> observed.SpecView:
        """The spec of ``body`` validated, kept while its generation stays the same (a body
        without one is validated every time)."""
        found = self.tracked.get(uid)
        kept = found.spec if found is not None else None
        generation = (body.get("metadata") or {}).get("generation")
        # Generations below 257 are the same int object, and a miss only validates again: `is`
        # for the last `==` cannot change the result.
        if (
            kept is not None
            and kept.generation is not None
            and kept.generation == generation  # pragma: no mutate: *_Eq_Is
        ):
            return kept
        view = observed.read_spec(body)
        if found is not None and not found.finished and view.generation is not None:
            found.spec = view
        return view

    def record_write(
        self, uid: str, written: models.CompositionJobStatus, resource_version: str = ""
    ) -> None:
        found = self.tracked.get(uid)
        if found is None or found.finished:
            return
        found.written = written
        self._touch(found)
        found.resource_version = _newer(found.resource_version, resource_version)
        self._set_worker(found, written.assignment.worker_instance if written.assignment else None)
        if found.pool is not None:
            # A pool job holds its slot from its admission (past the caps, waiting for a worker,
            # as a Job that exists holds one while its pod waits for a node) to its end; a
            # suspended one gives it back and goes through admission again when resumed.
            found.admitted = _admitted(written.to_api())
        if written.phase in models.TERMINAL_PHASES:
            self.finish(uid)

    def admit(self, uid: str) -> None:
        """The job takes a slot now (before any await), so that no other admission sees it
        free while its Job is being created."""
        found = self.tracked.get(uid)
        if found is not None:
            found.admitted = True
            self._touch(found)

    def release(self, uid: str) -> None:
        """An admission that did not lead to a Job or an assignment (its write failed): the
        slot is free."""
        found = self.tracked.get(uid)
        if found is not None and not self.jobs.get(uid):
            found.admitted = False
            self._touch(found)

    def worker_report(self, uid: str) -> models.WorkerReport | None:
        """``status.workerReport`` as the newest body shows it (written by the worker)."""
        found = self.tracked.get(uid)
        data = _report(found.body or {}) if found is not None else None
        if not data:
            return None
        try:
            return models.WorkerReport.model_validate(data)
        except pydantic.ValidationError:
            return None

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    # -- children ---------------------------------------------------------------------------

    def put_child(self, kind: str, body: Mapping[str, Any], *, deleted: bool) -> str | None:
        """Record a Job or Pod event; returns the owning CompositionJob's uid."""
        return self.record_child(kind, body, deleted=deleted)[0]

    def record_child(
        self, kind: str, body: Mapping[str, Any], *, deleted: bool
    ) -> tuple[str | None, bool]:
        """Record a Job or Pod event: (the owning CompositionJob's uid, whether anything a
        decision reads changed; not, for instance, the Job's pod counters or a finalizer)."""
        owner = observed.owner_uid(body)
        if owner is None:
            # With no owner the flag is never read (nothing to reconcile): True for False here
            # cannot change a result.
            return None, False  # pragma: no mutate: ReplaceFalseWithTrue
        name = str((body.get("metadata") or {}).get("name") or "")
        found = self.tracked.get(owner)
        # ``kind`` is one of the two literals "job" and "pod" (interned, and "pod" sorts after
        # "job"): `>` or `is not` for `!=` cannot change the result.
        if kind != "job":  # pragma: no mutate: *_NotEq_Gt, *_NotEq_IsNot
            pods = self.pods.get(owner, {})
            before = pods.get(name)
            if deleted:
                pods.pop(name, None)
                return owner, before is not None
            if found is not None and found.finished:
                return owner, False
            kept = observed.slim(body)
            self.pods[owner][name] = kept
            return owner, before is None or not observed.same(before, kept)
        view = observed.view_job(body)
        before_job = self.jobs.get(owner, {}).get(name)
        if found is not None:
            self._touch(found)
        if not deleted and not view.held_by_operator:
            self.unsuspended.discard(owner)  # the watch has caught up
        if deleted or (found is not None and found.finished and not view.live):
            self.jobs.get(owner, {}).pop(name, None)  # gone, or finished and of no more use
        else:
            self.jobs[owner][name] = view
        if found is not None and found.finished:
            self._prune(owner)
        changed = deleted or before_job is None or not observed.same(before_job.body, view.body)
        return owner, changed

    def record_refusal(self, event: Mapping[str, Any]) -> str | None:
        """A ``FailedCreate`` Event of a Job: kept as the latest refusal of the job that owns
        the Job. Returns that job's uid when the Event is news for a job still running (an
        older or repeated one, or one for a Job that is not ours, changes nothing)."""
        refusal = status.read_refusal(event)
        if refusal is None:
            return None
        namespace = (event.get("involvedObject") or {}).get("namespace")
        # FailedCreate Events are rare (the Job controller backs off): a scan of the Jobs
        # known costs less than an index kept up to date on every Job event.
        owner = next(
            (
                uid
                for uid, jobs in self.jobs.items()
                if refusal.job_name in jobs and jobs[refusal.job_name].namespace == namespace
            ),
            None,
        )
        found = self.tracked.get(owner) if owner is not None else None
        if owner is None or found is None or found.finished:
            return None
        before = self.refusals.get(owner)
        if before is not None and before.job_name == refusal.job_name and before.at > refusal.at:
            return None
        self.refusals[owner] = refusal
        return owner if before != refusal else None

    def job(self, uid: str, name: str) -> observed.JobView | None:
        return self.jobs.get(uid, {}).get(name)

    def jobs_of(self, uid: str) -> list[observed.JobView]:
        """The CompositionJob's child Jobs, latest attempt first."""
        return sorted(self.jobs.get(uid, {}).values(), key=lambda j: j.attempt, reverse=True)

    def pods_of(self, uid: str, job_name: str) -> list[dict[str, Any]]:
        return [
            pod
            for pod in self.pods.get(uid, {}).values()
            if ((pod.get("metadata") or {}).get("labels") or {}).get("job-name") in (None, job_name)
        ]

    # -- queueing ---------------------------------------------------------------------------

    def holds_slot(self, uid: str) -> bool:
        found = self.tracked.get(uid)
        return found is not None and self._entry(found) is not None and self._holds(found)

    def _parked(self, found: Tracked) -> bool:
        """Resumed, but its Job is still suspended by the operator: it waits for a slot again
        (unless this process has just unsuspended it and the watch has not caught up)."""
        if found.uid in self.unsuspended:
            return False
        jobs = self.jobs.get(found.uid) or {}
        return any(j.held_by_operator and j.live for j in jobs.values())

    def _holds(self, found: Tracked) -> bool:
        """A slot is held by a live Job (one the Job controller has not finished), by a pool job
        assigned to a worker, or by an admission whose Job or assignment is being written. A Job
        the user suspended holds none."""
        jobs = self.jobs.get(found.uid) or {}
        if found.worker is not None and not found.finished:
            return True
        if found.fields.suspend and not found.finished:
            return False
        if self._parked(found):
            return False
        if any(j.live for j in jobs.values()):
            return True
        return found.admitted and not found.finished and not jobs

    def _entry(self, found: Tracked) -> queueing.Entry | None:
        if found.fields.kueue:
            return None
        jobs = self.jobs.get(found.uid) or {}
        running = self._holds(found)
        parked = self._parked(found)
        idle = not jobs and not found.admitted and found.worker is None
        waiting = not (found.finished or found.fields.suspend) and not running and (parked or idle)
        if not (running or waiting):
            return None
        return queueing.Entry(
            uid=found.uid,
            name=found.fields.name,
            priority=found.fields.priority,
            created=found.fields.created,
            running=running,
            waiting=waiting,
            owner=found.fields.owner,
        )

    def queue_entries(self, namespace: str) -> list[queueing.Entry]:
        """The namespace's jobs that hold or want a slot under the operator's caps (Kueue's
        are not); finished jobs whose Jobs are finished are not even looked at."""
        entries = []
        for uid in self._active.get(namespace, ()):
            found = self.tracked.get(uid)
            if found is None:
                continue
            key = (found.revision, uid in self.unsuspended)
            cached = self._entries.get(uid)
            # A cache: a miss makes the same entry again, and a job's key only grows (its
            # revision is bumped with every change), so `>`, `>=` or `is` for `==` cannot
            # change the result.
            if cached is not None and cached[0] == key:  # pragma: no mutate: *_Eq_Gt*, *_Eq_Is
                entry = cached[1]
            else:
                entry = self._entry(found)
                self._entries[uid] = (key, entry)
            if entry is not None:
                entries.append(entry)
        return entries

    def standing(self, namespace: str) -> queueing.Standing:
        """The namespace's queue in order, brought up to date with the jobs that changed since
        it was last read (so an admission costs nothing per job that did not change)."""
        standing = self._standings.get(namespace)
        if standing is None:  # the first read (without caps there is none): from every job
            standing = self._standings[namespace] = queueing.Standing()
            for each in self.queue_entries(namespace):
                standing.put(each.uid, each)
            self._dirty.pop(namespace, None)
            return standing
        for uid in self._dirty.pop(namespace, ()):
            found = self.tracked.get(uid)
            entry: queueing.Entry | None = None
            if found is not None and uid in self._active.get(namespace, ()):
                entry = self._entry(found)
            standing.put(uid, entry)
        return standing

    def standing_drift(self, namespace: str) -> list[str]:
        """The jobs whose entry in :meth:`standing` differs from a full recompute (none, unless
        a change reached the queue without marking its job); those entries are then mended."""
        standing = self.standing(namespace)
        full = {entry.uid: entry for entry in self.queue_entries(namespace)}
        kept = {entry.uid: entry for entry in standing.entries()}
        drift = sorted(uid for uid in full.keys() | kept.keys() if full.get(uid) != kept.get(uid))
        for uid in drift:
            standing.put(uid, full.get(uid))
        return drift

    def active_uids(self) -> list[str]:
        """Jobs not finished (the sweep's candidates)."""
        return [uid for uid, found in self.tracked.items() if not found.finished]

    # -- pools ------------------------------------------------------------------------------

    def put_pool(self, body: Mapping[str, Any], *, deleted: bool) -> pools.PoolView:
        view = pools.view_pool(body)
        key = (view.namespace, view.name)
        if deleted:
            self.pools.pop(key, None)
        else:
            self.pools[key] = view
        return view

    def put_deployment(
        self, body: Mapping[str, Any], *, deleted: bool
    ) -> pools.DeploymentView | None:
        view = pools.view_deployment(body)
        if view is None:
            return None
        key = (view.namespace, view.pool)
        if deleted:
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = view
        return view

    def put_lease(
        self, body: Mapping[str, Any], *, deleted: bool
    ) -> tuple[protocol.WorkerLease | None, protocol.WorkerLease | None]:
        """Record a worker Lease event: (the Lease before, the Lease now; None when gone)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        before = self.leases.get(key)
        view = None if deleted else protocol.view_lease(body)
        if view is None:
            self.leases.pop(key, None)
        else:
            self.leases[key] = view
        return before, view

    def put_worker_pod(self, body: Mapping[str, Any], *, deleted: bool) -> pools.WorkerPod | None:
        view = pools.view_worker_pod(body)
        if view is None:
            return None
        key = (view.namespace, view.name)
        if deleted:
            self.worker_pods.pop(key, None)
        else:
            self.worker_pods[key] = view
        return view

    def pool_job_uids(self, namespace: str, pool: str) -> set[str]:
        return set(self._pool_jobs.get((namespace, pool), ()))

    def assigned_to(self, namespace: str, instance: str) -> str | None:
        """The active job assigned to a worker instance, if any."""
        return self._busy.get((namespace, instance))

    def pool_leases(self, namespace: str, pool: str) -> list[protocol.WorkerLease]:
        return [
            lease
            for (space, _), lease in self.leases.items()
            if space == namespace and lease.pool == pool
        ]

    def pool_pods(self, namespace: str, pool: str) -> list[pools.WorkerPod]:
        return [
            pod
            for (space, _), pod in self.worker_pods.items()
            if space == namespace and pod.pool == pool
        ]

    def busy_instances(self, namespace: str) -> set[str]:
        return {instance for (space, instance) in self._busy if space == namespace}

    def idle_workers(
        self, namespace: str, pool: str, now: datetime.datetime
    ) -> list[protocol.WorkerLease]:
        """Workers that take work now: fresh Lease, ready, nothing assigned, not reserved."""
        found = []
        for lease in self.pool_leases(namespace, pool):
            instance = protocol.holder_identity(lease.pod, lease.instance)
            if not lease.takes_work(now):
                continue
            if (namespace, instance) in self._busy or (namespace, instance) in self._reserved_by:
                continue
            found.append(lease)
        return sorted(found, key=lambda lease: lease.pod)

    def reserve(self, uid: str, namespace: str, offer: pooljobs.Offer) -> None:
        self._release_offer(uid)
        self._reserved[uid] = offer
        self._reserved_by[(namespace, offer.instance)] = uid

    def reserved(self, uid: str) -> pooljobs.Offer | None:
        return self._reserved.get(uid)

    def _release_offer(self, uid: str) -> None:
        offer = self._reserved.pop(uid, None)
        if offer is None:
            return
        for key, holder in list(self._reserved_by.items()):
            if holder == uid:  # a job holds one reservation at a time (reserve() releases first)
                del self._reserved_by[key]

    def release_offer(self, uid: str) -> None:
        """The reserved worker was assigned (its assignment now marks it busy) or not used."""
        self._release_offer(uid)

    def resource_version(self, uid: str) -> str:
        found = self.tracked.get(uid)
        return found.resource_version if found is not None else ""


def _admitted(status_: Mapping[str, Any]) -> bool:
    """Past the caps, as written: ``Queued=False`` and not suspended, or assigned to a worker."""
    conditions = {c.get("type"): c.get("status") for c in status_.get("conditions") or []}
    passed = conditions.get(models.ConditionType.QUEUED) == "False"
    suspended = conditions.get(models.ConditionType.SUSPENDED) == "True"
    return (passed and not suspended) or bool(status_.get("assignment"))


def _report(body: Mapping[str, Any]) -> Any:
    return (body.get("status") or {}).get("workerReport")


def _newer(known: str, seen: str) -> str:
    """The newer of two resourceVersions. They are opaque to clients in general; etcd's are
    increasing integers, which is what lets a watch event older than our own write be told
    apart. Anything else: the one seen last."""
    if not known:
        return seen
    if not seen:
        return known
    if known.isdigit() and seen.isdigit():
        # Equal numbers are the same resourceVersion (etcd's have no leading zeros): `>=` for
        # `>` cannot change the result.
        return known if int(known) > int(seen) else seen  # pragma: no mutate: *_Gt_GtE
    return seen
