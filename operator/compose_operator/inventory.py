"""The operator's in-memory view of CompositionJobs, their child Jobs and pods.

Fed by the watch handlers in :mod:`compose_operator.handlers` (kopf streams every change), read
by :mod:`compose_operator.reconciler`, so that reconciling a job costs no API reads. It also
remembers the status this process last wrote for each job (the operator is the only writer of
status, so that is the newest one even before the watch echoes it back) and holds the locks
that keep two reconciliations of one job, or two admissions in one namespace, from overlapping.
Plain data and no I/O.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from typing import Any

import pydantic

from compose_api import models
from compose_operator import names, queueing, status

_VOLATILE_METADATA = frozenset({"resourceVersion", "managedFields"})


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


_KEPT_SPEC = ("suspend", "nodeName")  # all the reconciler reads of a Job's or Pod's spec


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A child as the reconciler reads it: without managedFields and without its pod template
    (which carries the job document), so that thousands of them stay small in memory."""
    kept = dict(obj)
    meta = kept.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        kept["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    spec = kept.get("spec")
    if isinstance(spec, Mapping):
        kept["spec"] = {k: spec[k] for k in _KEPT_SPEC if k in spec}
    return kept


def owner_uid(obj: Mapping[str, Any]) -> str | None:
    """The CompositionJob a child belongs to, from its label."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    value = labels.get(names.UID_LABEL)
    return str(value) if value else None


def job_attempt(job: Mapping[str, Any]) -> int:
    """The attempt number a child Job was built for (from its label)."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels.get(names.ATTEMPT_LABEL, 0))
    except (TypeError, ValueError):
        return 0


def _held_by_operator(job: Mapping[str, Any]) -> bool:
    """A Job the operator suspended for the user and has not unsuspended yet."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    suspended = bool((job.get("spec") or {}).get("suspend"))
    return suspended and names.SUSPENDED_ANNOTATION in annotations


class Inventory:
    """Latest known objects, keyed by the CompositionJob's uid."""

    def __init__(self) -> None:
        self.jobs_by_uid: dict[str, dict[str, Any]] = {}
        self.children: dict[str, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        self.pods: dict[str, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        self.written: dict[str, models.CompositionJobStatus] = {}
        self.finished: set[str] = set()  # terminal: their children are no longer kept
        # Jobs this process unsuspended on resume, until the watch shows it: an event from before
        # the patch must not make them look held (and free their slot) in the meantime.
        self.unsuspended: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._namespace_locks: dict[str, asyncio.Lock] = {}

    # -- CompositionJobs --------------------------------------------------------------------

    def put(self, body: Mapping[str, Any]) -> str:
        uid = _uid(body)
        self.jobs_by_uid[uid] = dict(body)
        return uid

    def is_status_echo(self, body: Mapping[str, Any]) -> bool:
        """Whether ``body`` differs from the stored one in its status (and resourceVersion or
        managedFields) only, and this process has written that job's status.

        Such an event is the echo of our own status patch: the reconciler reads the status it
        wrote, not the one in the body, so reconciling again would only recompute the same.
        """
        uid = _uid(body)
        stored = self.jobs_by_uid.get(uid)
        if stored is None or uid not in self.written:
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
        self.jobs_by_uid.pop(uid, None)
        self.children.pop(uid, None)
        self.pods.pop(uid, None)
        self.written.pop(uid, None)
        self.finished.discard(uid)
        self.unsuspended.discard(uid)
        self._locks.pop(uid, None)

    def finish(self, uid: str) -> None:
        """The job reached a terminal phase: drop its children, and keep none from now on."""
        self.finished.add(uid)
        self.children.pop(uid, None)
        self.pods.pop(uid, None)

    def body(self, uid: str) -> dict[str, Any] | None:
        return self.jobs_by_uid.get(uid)

    def status_of(self, uid: str) -> models.CompositionJobStatus:
        """What this process last wrote, else what the API server last showed."""
        if uid in self.written:
            return self.written[uid]
        body = self.jobs_by_uid.get(uid) or {}
        try:
            return models.CompositionJobStatus.model_validate(body.get("status") or {})
        except pydantic.ValidationError:
            return models.CompositionJobStatus()

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def namespace_lock(self, namespace: str) -> asyncio.Lock:
        return self._namespace_locks.setdefault(namespace, asyncio.Lock())

    # -- children ---------------------------------------------------------------------------

    def put_child(self, kind: str, body: Mapping[str, Any], *, deleted: bool) -> str | None:
        """Record a Job or Pod event; returns the owning CompositionJob's uid."""
        owner = owner_uid(body)
        if owner is None:
            return None
        store = self.children if kind == "job" else self.pods
        name = str((body.get("metadata") or {}).get("name") or "")
        if kind == "job" and not deleted and not _held_by_operator(body):
            self.unsuspended.discard(owner)  # the watch has caught up
        if deleted:
            store[owner].pop(name, None)
        elif owner in self.finished:
            pass  # a finished job is never reconciled again: its children need not be kept
        else:
            store[owner][name] = slim(body)
        return owner

    def job(self, uid: str, name: str) -> dict[str, Any] | None:
        return self.children.get(uid, {}).get(name)

    def jobs_of(self, uid: str) -> list[dict[str, Any]]:
        """The CompositionJob's child Jobs, latest attempt first."""
        return sorted(self.children.get(uid, {}).values(), key=job_attempt, reverse=True)

    def pods_of(self, uid: str, job_name: str) -> list[dict[str, Any]]:
        return [
            pod
            for pod in self.pods.get(uid, {}).values()
            if ((pod.get("metadata") or {}).get("labels") or {}).get("job-name") in (None, job_name)
        ]

    # -- queueing ---------------------------------------------------------------------------

    def queue_entries(self, namespace: str) -> list[queueing.Entry]:
        """The namespace's jobs under the operator's cap (Kueue-queued ones are not)."""
        entries = []
        for uid, body in self.jobs_by_uid.items():
            meta = body.get("metadata") or {}
            if meta.get("namespace") != namespace or meta.get("deletionTimestamp"):
                continue
            spec = body.get("spec") or {}
            execution = spec.get("execution") or {}
            if execution.get("queueName"):
                continue
            current = self.status_of(uid)
            finished = current.phase in models.TERMINAL_PHASES
            rejected = any(
                c.type == models.ConditionType.ACCEPTED and c.status == status.FALSE
                for c in current.conditions
            )
            admitted = any(
                c.type == models.ConditionType.QUEUED and c.status == status.FALSE
                for c in current.conditions
            )
            children = self.children.get(uid) or {}
            holds = bool(children) or admitted
            suspended = bool(spec.get("suspend"))
            # A resumed job whose Job the operator still holds suspended waits for a slot again.
            parked = uid not in self.unsuspended and any(
                _held_by_operator(job) for job in children.values()
            )
            entries.append(
                queueing.Entry(
                    uid=uid,
                    name=str(meta.get("name") or ""),
                    priority=int(execution.get("priority") or 0),
                    created=status.parse_time(meta.get("creationTimestamp")),
                    running=holds and not (finished or suspended or parked),
                    waiting=not (finished or rejected or suspended) and (parked or not holds),
                )
            )
        return entries
