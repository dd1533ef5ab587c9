"""The operator's in-memory view of CompositionJobs, their child Jobs and pods.

Fed by the watch handlers in :mod:`compose_operator.handlers` (kopf streams every change), read
by :mod:`compose_operator.reconciler`, so that reconciling a job costs no API reads. It also
remembers the status this process last wrote for each job (the operator is the only writer of
status, so that is the newest one even before the watch echoes it back) and what each job means
to the queue, so that an admission reads small records, never bodies. Plain data and no I/O.

Finished jobs are kept light: no body, no status, no pods; only their Job while the Job
controller has not finished it (it still holds a slot under the caps).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Mapping
from typing import Any

import pydantic

from compose_api import models
from compose_operator import observed, queueing, status

_VOLATILE_METADATA = frozenset({"resourceVersion", "managedFields"})
_TERMINAL = frozenset(str(phase) for phase in models.TERMINAL_PHASES)


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


@dataclasses.dataclass
class Tracked:
    """One CompositionJob: its body while it is active, what the queue reads, and its state."""

    uid: str
    fields: observed.QueueFields
    body: dict[str, Any] | None  # None once finished
    finished: bool = False
    rejected: bool = False  # Accepted=False: never admitted
    admitted: bool = False  # may start: its Job is being (or was) created, or it was resumed
    written: models.CompositionJobStatus | None = None  # what this process last wrote
    parsed: models.CompositionJobStatus | None = None  # the body's status, parsed on demand
    revision: int = 0  # bumped on every change the queue reads (its entry is cached by it)


class Inventory:
    """Latest known objects, keyed by the CompositionJob's uid."""

    def __init__(self) -> None:
        self.tracked: dict[str, Tracked] = {}
        self.jobs: dict[str, dict[str, observed.JobView]] = collections.defaultdict(dict)
        self.pods: dict[str, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        # Per namespace, the jobs the queue must look at: not finished, or a Job still running.
        self._active: dict[str, set[str]] = collections.defaultdict(set)
        # Jobs this process unsuspended on resume, until the watch shows it: an event from before
        # the patch must not make them look held (and free their slot) in the meantime.
        self.unsuspended: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        # uid -> ((revision, unsuspended), its queue entry): an admission decision reads
        # cached entries, and only jobs that changed are looked at again.
        self._entries: dict[str, tuple[tuple[int, bool], queueing.Entry | None]] = {}

    # -- CompositionJobs --------------------------------------------------------------------

    def put(self, body: Mapping[str, Any]) -> str:
        uid = _uid(body)
        fields = observed.queue_fields(body)
        found = self.tracked.get(uid)
        if found is not None and found.finished:
            found.fields = fields
            found.revision += 1
            return uid  # terminal stays terminal: nothing more is kept or decided
        phase = (body.get("status") or {}).get("phase")
        if found is None:
            found = Tracked(uid=uid, fields=fields, body=dict(body))
            self.tracked[uid] = found
            conditions = (body.get("status") or {}).get("conditions") or []
            found.admitted = any(
                c.get("type") == models.ConditionType.QUEUED and c.get("status") == "False"
                for c in conditions
            )
        else:
            found.fields, found.body, found.parsed = fields, dict(body), None
            found.revision += 1
        if found.written is None and phase in _TERMINAL:
            self.finish(uid)  # finished before this process saw it (a restart)
            return uid
        self._active[fields.namespace].add(uid)
        return uid

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
        old_meta, new_meta = stored.get("metadata") or {}, body.get("metadata") or {}
        keys = (set(old_meta) | set(new_meta)) - _VOLATILE_METADATA
        if any(old_meta.get(key) != new_meta.get(key) for key in keys):
            return False
        others = (set(stored) | set(body)) - {"spec", "metadata", "status"}
        return all(stored.get(key) == body.get(key) for key in others)

    def forget(self, uid: str) -> None:
        found = self.tracked.pop(uid, None)
        self._entries.pop(uid, None)
        if found is not None:
            self._active[found.fields.namespace].discard(uid)
        self.jobs.pop(uid, None)
        self.pods.pop(uid, None)
        self.unsuspended.discard(uid)
        self._locks.pop(uid, None)

    def finish(self, uid: str) -> None:
        """The job reached a terminal phase: drop its body, status and pods; keep only its Jobs
        that the Job controller has not finished, as long as they hold a slot."""
        found = self.tracked.get(uid)
        if found is None:
            return
        found.finished, found.body, found.written, found.parsed = True, None, None, None
        found.admitted = False
        found.revision += 1
        self.pods.pop(uid, None)
        self._prune(uid)

    def _prune(self, uid: str) -> None:
        found = self.tracked.get(uid)
        if found is None or not found.finished:
            return
        found.revision += 1
        jobs = {name: job for name, job in self.jobs.get(uid, {}).items() if job.live}
        if jobs:
            self.jobs[uid] = jobs
        else:
            self.jobs.pop(uid, None)
            self._active[found.fields.namespace].discard(uid)
            self._entries.pop(uid, None)

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

    def record_write(self, uid: str, written: models.CompositionJobStatus) -> None:
        found = self.tracked.get(uid)
        if found is None or found.finished:
            return
        found.written = written
        found.revision += 1
        found.rejected = any(
            c.type == models.ConditionType.ACCEPTED and c.status == status.FALSE
            for c in written.conditions
        )
        if written.phase in models.TERMINAL_PHASES:
            self.finish(uid)

    def admit(self, uid: str) -> None:
        """The job takes a slot now (before any await), so that no other admission sees it
        free while its Job is being created."""
        found = self.tracked.get(uid)
        if found is not None:
            found.admitted = True
            found.revision += 1

    def release(self, uid: str) -> None:
        """An admission that did not lead to a Job (its write failed): the slot is free."""
        found = self.tracked.get(uid)
        if found is not None and not self.jobs.get(uid):
            found.admitted = False
            found.revision += 1

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    # -- children ---------------------------------------------------------------------------

    def put_child(self, kind: str, body: Mapping[str, Any], *, deleted: bool) -> str | None:
        """Record a Job or Pod event; returns the owning CompositionJob's uid."""
        owner = observed.owner_uid(body)
        if owner is None:
            return None
        name = str((body.get("metadata") or {}).get("name") or "")
        found = self.tracked.get(owner)
        if kind != "job":
            if deleted:
                self.pods.get(owner, {}).pop(name, None)
            elif found is None or not found.finished:
                self.pods[owner][name] = observed.slim(body)
            return owner
        view = observed.view_job(body)
        if found is not None:
            found.revision += 1
        if not deleted and not view.held_by_operator:
            self.unsuspended.discard(owner)  # the watch has caught up
        if deleted or (found is not None and found.finished and not view.live):
            self.jobs.get(owner, {}).pop(name, None)  # gone, or finished and of no more use
        else:
            self.jobs[owner][name] = view
        if found is not None and found.finished:
            self._prune(owner)
        return owner

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
        """A slot is held by a live Job (one the Job controller has not finished), or by an
        admission whose Job is being created. A Job the user suspended holds none."""
        jobs = self.jobs.get(found.uid) or {}
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
        idle = not jobs and not found.admitted
        waiting = (
            not (found.finished or found.rejected or found.fields.suspend)
            and not running
            and (parked or idle)
        )
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
            if cached is not None and cached[0] == key:
                entry = cached[1]
            else:
                entry = self._entry(found)
                self._entries[uid] = (key, entry)
            if entry is not None:
                entries.append(entry)
        return entries

    def active_uids(self) -> list[str]:
        """Jobs not finished (the sweep's candidates)."""
        return [uid for uid, found in self.tracked.items() if not found.finished]
