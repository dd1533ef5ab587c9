"""Level-based reconciliation of one CompositionJob: decide, act through the client, write status.

The kopf handlers call :meth:`Reconciler.reconcile` for every event of a CompositionJob or of one
of its children, and :meth:`Reconciler.sweep` runs on a timer as a safety net (start deadlines,
queue admission, errors). Each call reads the in-memory :class:`~compose_operator.inventory.
Inventory`, asks the pure builders and status mapping what should be, makes at most the API
calls needed to get there, and writes status only when it changed.

Restart safety comes from the order of writes: the seed, the admission and the intent to create
the Job are recorded in status before the Job is created, so a restart that finds no Job can
tell one never created (create it) from one that finished and was TTL-deleted meanwhile (lost,
never run twice); the Job's name is deterministic, so a create after a crash gets 409 and adopts
the Job it finds; a terminal status is never recomputed, so a finished job stays finished even
after its children are garbage-collected. A Job the operator suspends for ``spec.suspend`` is
annotated, and resuming undoes only such a suspension, through the namespace queue when capped.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import pydantic

from compose_api import models
from compose_operator import builders, inventory, kube, metrics, names, queueing, status
from compose_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]

# How long a finished Job waits for the pod watch to show its pods finished before the pods are
# listed from the API server instead (the Job's and the pods' watches are separate streams). The
# pod event normally comes first and ends the wait; the timer only covers a pod watch that lags.
POD_CATCH_UP_SECONDS = 5.0


class EmitFn(Protocol):
    def __call__(self, body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        """Post one Kubernetes Event about ``body``."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Reconciler:
    """Everything one operator process needs to drive CompositionJobs."""

    def __init__(
        self,
        settings: OperatorSettings,
        client: kube.KubeClient,
        *,
        emit: EmitFn,
        inventory_: inventory.Inventory | None = None,
        metrics_: metrics.Metrics | None = None,
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client
        self.emit = emit
        self.inventory = inventory_ or inventory.Inventory()
        self.metrics = metrics_ or metrics.Metrics()
        self.clock = clock
        self._monotonic = monotonic
        self._kicks: set[asyncio.Task[None]] = set()
        self._last_write: dict[str, float] = {}  # uid -> monotonic time of its last status write
        self._deferred: dict[str, asyncio.TimerHandle] = {}  # uid -> its next reconcile
        # uid -> until when a Job that finished waits for its pods' events (monotonic time)
        self._awaiting_pods: dict[str, float] = {}

    # -- entry points -----------------------------------------------------------------------

    async def reconcile(self, uid: str) -> None:
        """Bring one CompositionJob's children and status in line; errors are counted, and the
        next sweep tries again."""
        async with self.inventory.lock(uid):
            body = self.inventory.body(uid)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            try:
                await self._reconcile(uid, body)
            except Exception as error:
                self.metrics.reconcile_errors.labels(type(error).__name__).inc()
                logger.exception("reconciling %s failed", _ref(body))

    async def sweep(self) -> None:
        """The safety net: revisit every job that is waiting for something time-based."""
        for uid in list(self.inventory.jobs_by_uid):
            current = self.inventory.status_of(uid)
            if current.phase in (models.Phase.RUNNING, models.Phase.SUSPENDED):
                continue
            if current.phase in models.TERMINAL_PHASES:
                continue
            await self.reconcile(uid)

    def forget(self, body: Mapping[str, Any]) -> None:
        """The CompositionJob is gone: drop it, and let the next job in its namespace start."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        self.inventory.forget(uid)
        self._last_write.pop(uid, None)
        self._awaiting_pods.pop(uid, None)
        deferred = self._deferred.pop(uid, None)
        if deferred is not None:
            deferred.cancel()
        self.metrics.observe_phase(uid, "", None)
        self._kick_queue(str((body.get("metadata") or {}).get("namespace") or ""))

    # -- the decision -----------------------------------------------------------------------

    async def _reconcile(self, uid: str, body: Mapping[str, Any]) -> None:
        now = self.clock().replace(microsecond=0)
        previous = self.inventory.status_of(uid)
        meta = models.ObjectMeta.model_validate(body.get("metadata") or {})
        if previous.phase in models.TERMINAL_PHASES:
            self.inventory.finish(uid)
            return  # terminal stays terminal, whatever happens to the children
        try:
            spec = models.CompositionJobSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as error:
            message = models.describe_validation_error(error)
            outcome = status.rejected(
                previous, meta.generation, models.Reason.INVALID_SPEC, message, now=now
            )
            await self._write(body, previous, outcome)
            return
        cj = models.CompositionJob(metadata=meta, spec=spec, status=previous)
        profile = self.settings.profiles.get(spec.profile)
        problem = self._problem(cj, profile is None)
        if problem is not None:
            reason, message = problem
            outcome = status.rejected(previous, meta.generation, reason, message, now=now)
            await self._write(body, previous, outcome)
            return
        if profile is None:  # _problem reported it; this narrows the type
            return
        seed = builders.choose_seed(cj)
        namespace = meta.namespace or "default"
        jobs = self.inventory.jobs_of(uid)
        if not jobs and (previous.attempts or _has(previous, models.ConditionType.STARTED)):
            jobs = await self.client.list_jobs(namespace, names.selector(uid))  # watch lag?
            jobs.sort(key=inventory.job_attempt, reverse=True)
            if not jobs and not self._never_created(previous, now):
                last = previous.attempts[-1].job_name if previous.attempts else None
                lost = last or names.job_name(meta.name, uid, 0)
                await self._write(body, previous, status.lost(cj, lost, now=now))
                return
        job = jobs[0] if jobs else None
        held_back: status.Queue | None = None  # a resumed Job waiting for a slot under the cap
        for stale in jobs[1:]:  # an earlier attempt left by a crash during a rebuild
            await self.client.delete_job(namespace, str(stale["metadata"]["name"]))
        if job is None:
            job_name = names.job_name(meta.name, uid, 0)
            async with self.inventory.namespace_lock(namespace):
                queue = self._queue_position(cj)
                outcome = status.waiting(cj, seed=seed, queue=queue, now=now, creating=job_name)
                held = queue is not None or spec.suspend
                # The admission and the intent to create the Job are recorded before the Job
                # exists: a lagging Job watch never lets the namespace go over the cap, and a
                # restart can tell a Job never created from one that finished and was deleted.
                await self._write(body, previous, outcome)
                previous = outcome.status
            if held:
                return
            cj = cj.model_copy(update={"status": previous})
            manifest = builders.build_job(cj, profile, self.settings, 0, seed)
            job = await self.client.create_job(manifest)
            self.inventory.put_child("job", job, deleted=False)
        elif self._needs_rebuild(cj, job, uid):
            # The spec changed before any pod ran: the next attempt runs the new spec. Create
            # first, then delete, so that a crash in between leaves a Job to adopt.
            attempt = inventory.job_attempt(job) + 1
            manifest = builders.build_job(cj, profile, self.settings, attempt, seed)
            old_name = str(job["metadata"]["name"])
            job = await self.client.create_job(manifest)
            self.inventory.put_child("job", job, deleted=False)
            await self.client.delete_job(namespace, old_name)
        else:
            job, held_back = await self._sync_suspend(cj, job)
            seed = _job_seed(job, default=previous.seed if previous.seed is not None else seed)
        job_name = str(job["metadata"]["name"])
        pods = self.inventory.pods_of(uid, job_name)
        if not pods and previous.attempts:
            # Right after a restart the pod watch may not have caught up: ask once.
            pods = await self._fresh_pods(namespace, uid, job_name)
        outcome = await self._compute(cj, job, pods, now=now, seed=seed, queue=held_back)
        if outcome.terminal and not _settled(pods, outcome):
            # A terminal status is final: decide it on fresh pods, not on a watch that may lag
            # behind the Job's (the result and the exit code live in the pods). The pods' own
            # events are usually a moment behind the Job's: wait for them (they reconcile this
            # job) rather than list, unless the wait is over or the Job is ours to stop.
            if pods and not outcome.stop_job:
                now_s = self._monotonic()
                until = self._awaiting_pods.setdefault(uid, now_s + POD_CATCH_UP_SECONDS)
                if (wait := until - now_s) > 0:
                    self._later(uid, wait)
                    return
            pods = await self._fresh_pods(namespace, uid, job_name)
            outcome = await self._compute(cj, job, pods, now=now, seed=seed, queue=held_back)
        self._awaiting_pods.pop(uid, None)
        if outcome.stop_job:
            await self.client.delete_job(namespace, job_name)
        if self._coalesced(uid, previous, outcome):
            return
        await self._write(body, previous, outcome)

    def _needs_rebuild(self, cj: models.CompositionJob, job: Mapping[str, Any], uid: str) -> bool:
        """Params or execution changed, and no pod of the Job has started yet."""
        annotations = (job.get("metadata") or {}).get("annotations") or {}
        recorded = annotations.get(builders.SPEC_HASH_ANNOTATION)
        if recorded is None or recorded == builders.spec_hash(cj.spec):
            return False
        if cj.status.start_time is not None:
            return False
        name = str((job.get("metadata") or {}).get("name"))
        return not any(status.view_pod(pod).ran for pod in self.inventory.pods_of(uid, name))

    async def _fresh_pods(self, namespace: str, uid: str, job_name: str) -> list[dict[str, Any]]:
        pods = await self.client.list_pods(namespace, names.selector(uid))
        return [p for p in pods if _labels(p).get("job-name") in (None, job_name)]

    async def _compute(
        self,
        cj: models.CompositionJob,
        job: Mapping[str, Any],
        pods: list[dict[str, Any]],
        *,
        now: datetime.datetime,
        seed: int,
        queue: status.Queue | None,
    ) -> status.Outcome:
        nodes: dict[str, dict[str, str]] = {}
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if node and node not in nodes:
                nodes[node] = await self.client.node_labels(str(node))
        return status.compute(
            cj, job, pods, now=now, settings=self.settings, seed=seed, nodes=nodes, queue=queue
        )

    def _problem(
        self, cj: models.CompositionJob, unknown_profile: bool
    ) -> tuple[models.Reason, str] | None:
        if unknown_profile:
            known = ", ".join(sorted(self.settings.profiles)) or "none configured"
            return (
                models.Reason.UNKNOWN_PROFILE,
                f"spec.profile: unknown profile {cj.spec.profile!r} (known: {known})",
            )
        try:
            builders.output_bucket(cj, self.settings)
        except builders.BuildError as error:
            return models.Reason.INVALID_SPEC, str(error)
        return None

    def _queue_position(self, cj: models.CompositionJob) -> status.Queue | None:
        """None when the job may start now; its place in the namespace queue otherwise."""
        cap = self.settings.max_running_per_namespace
        if cap <= 0 or cj.spec.execution.queue_name or cj.spec.suspend:
            return None
        namespace = cj.metadata.namespace or "default"
        decision = queueing.decide(self.inventory.queue_entries(namespace), cap)
        self.metrics.queue_depth.labels(namespace).set(decision.depth)
        uid = cj.metadata.uid or ""
        if uid in decision.admitted or uid not in decision.positions:
            return None
        return status.Queue(position=decision.positions[uid], depth=decision.depth)

    def _never_created(self, previous: models.CompositionJobStatus, now: datetime.datetime) -> bool:
        """No Job is found although status records the intent to create one: whether it was
        never created (a crash between the intent and the create), so creating it is safe.

        A Job created after the intent was recorded finishes later still, and its TTL deletes
        it no sooner than ``job_ttl_seconds`` after that: within that time a missing Job was
        never created. Later, it may have run to the end and been deleted: the job is lost."""
        found = status.intent(previous.conditions)
        if found is None or previous.attempts:
            return False
        return (now - found.last_transition_time).total_seconds() < self.settings.job_ttl_seconds

    async def _sync_suspend(
        self, cj: models.CompositionJob, job: dict[str, Any]
    ) -> tuple[dict[str, Any], status.Queue | None]:
        """``spec.suspend`` drives the Job's. Resuming only undoes a suspension the operator
        made for the user (marked by an annotation on the Job): a Job that Kueue holds stays
        suspended until Kueue admits it. Under the namespace cap a resumed Job waits for a slot
        like any queued job; the returned queue position says so (None: not held back)."""
        meta = job.get("metadata") or {}
        job_suspended = bool((job.get("spec") or {}).get("suspend"))
        ours = names.SUSPENDED_ANNOTATION in (meta.get("annotations") or {})
        if cj.spec.suspend and not job_suspended:
            return await self._set_suspended(job, True), None
        if not cj.spec.suspend and job_suspended and ours:
            async with self.inventory.namespace_lock(str(meta.get("namespace") or "")):
                queue = self._queue_position(cj)
                if queue is not None:
                    return job, queue
                return await self._set_suspended(job, False), None
        return job, None

    async def _set_suspended(self, job: dict[str, Any], suspended: bool) -> dict[str, Any]:
        """Suspend the Job (marking it as the operator's doing) or undo that suspension."""
        meta = job.get("metadata") or {}
        mark = "true" if suspended else None
        patch: dict[str, Any] = {
            "metadata": {"annotations": {names.SUSPENDED_ANNOTATION: mark}},
            "spec": {"suspend": suspended},
        }
        await self.client.patch_job(str(meta.get("namespace")), str(meta.get("name")), patch)
        updated = _patched(job, patch)
        # Seen at once by the namespace queue, before the watch shows the change.
        self.inventory.put_child("job", updated, deleted=False)
        owner = inventory.owner_uid(job) or ""
        if suspended:
            self.inventory.unsuspended.discard(owner)
        else:
            self.inventory.unsuspended.add(owner)
        return updated

    # -- writing ----------------------------------------------------------------------------

    def _coalesced(
        self, uid: str, previous: models.CompositionJobStatus, outcome: status.Outcome
    ) -> bool:
        """Defer a progress-only write (same phase, not terminal) that comes within
        ``status_coalesce_seconds`` of the job's last write: one reconcile at the end of the
        window writes whatever the children show then, so that a pod going through several
        states in quick succession costs one status patch (and one echo event), not one each.
        Phase changes, terminal outcomes and stopped Jobs are written at once."""
        window = self.settings.status_coalesce_seconds
        last = self._last_write.get(uid)
        if (
            window <= 0
            or last is None
            or outcome.terminal
            or outcome.stop_job
            or outcome.status.phase != previous.phase
        ):
            return False
        wait = last + window - self._monotonic()
        if wait <= 0 or status.to_patch(outcome.status, previous) is None:
            return False
        self._later(uid, wait)
        return True

    def _later(self, uid: str, delay: float) -> None:
        """Reconcile the job again in ``delay`` seconds (once, however often it is asked)."""
        if uid not in self._deferred:
            loop = asyncio.get_running_loop()
            self._deferred[uid] = loop.call_later(delay, self._reconcile_deferred, uid)

    def _reconcile_deferred(self, uid: str) -> None:
        self._deferred.pop(uid, None)
        task = asyncio.create_task(self.reconcile(uid))
        self._kicks.add(task)
        task.add_done_callback(self._kicks.discard)

    async def _write(
        self,
        body: Mapping[str, Any],
        previous: models.CompositionJobStatus,
        outcome: status.Outcome,
    ) -> None:
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        patch = status.to_patch(outcome.status, previous)
        if patch is None:
            return
        await self.client.patch_status(str(meta.get("namespace")), str(meta.get("name")), patch)
        self.inventory.written[uid] = outcome.status
        self._last_write[uid] = self._monotonic()
        namespace = str(meta.get("namespace") or "")
        self.metrics.observe_phase(uid, namespace, outcome.status.phase)
        for item in outcome.transitions:
            self.metrics.transitions.labels(item.type, item.status, item.reason).inc()
        if outcome.transitions:
            # One Event per status write: the latest transition names it, the message lists all.
            last = outcome.transitions[-1]
            text = "; ".join(
                f"{t.type}={t.status} {t.reason}" + (f": {t.message}" if t.message else "")
                for t in outcome.transitions
            )
            warning = any(t.warning for t in outcome.transitions)
            self.emit(
                body, type="Warning" if warning else "Normal", reason=last.reason, message=text
            )
        if outcome.terminal:
            self.inventory.finish(uid)
        if outcome.terminal and previous.phase not in models.TERMINAL_PHASES:
            self.metrics.observe_finish(outcome.status)
            self._kick_queue(namespace)

    def _kick_queue(self, namespace: str) -> None:
        """A slot may have freed: reconcile the jobs that the queue now admits."""
        cap = self.settings.max_running_per_namespace
        if cap <= 0 or not namespace:
            return
        decision = queueing.decide(self.inventory.queue_entries(namespace), cap)
        for uid in decision.admitted:
            task = asyncio.create_task(self.reconcile(uid))
            self._kicks.add(task)
            task.add_done_callback(self._kicks.discard)


def _job_seed(job: Mapping[str, Any], *, default: int) -> int:
    """The seed the Job runs with (its annotation), which later spec edits do not change."""
    value = ((job.get("metadata") or {}).get("annotations") or {}).get(builders.SEED_ANNOTATION)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _patched(job: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``job`` as the merge ``patch`` of :meth:`Reconciler._sync_suspend` leaves it."""
    meta = dict(job.get("metadata") or {})
    annotations = dict(meta.get("annotations") or {})
    for key, value in (patch.get("metadata") or {}).get("annotations", {}).items():
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
    meta["annotations"] = annotations
    updated = dict(job)
    updated["metadata"] = meta
    updated["spec"] = {**(job.get("spec") or {}), **(patch.get("spec") or {})}
    return updated


def _settled(pods: list[dict[str, Any]], outcome: status.Outcome) -> bool:
    """Whether the watched pods already tell the whole story of a terminal outcome."""
    if not pods:
        return False
    if outcome.status.phase == models.Phase.SUCCEEDED and outcome.status.result is None:
        return False
    finished = {models.AttemptOutcome.SUCCEEDED, models.AttemptOutcome.FAILED,
                models.AttemptOutcome.INTERRUPTED}  # fmt: skip
    return all(status.view_pod(pod).outcome in finished for pod in pods)


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels: Mapping[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


def _has(current: models.CompositionJobStatus, kind: models.ConditionType) -> bool:
    return any(c.type == kind for c in current.conditions)


def _ref(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"
