"""Retention of finished CompositionJobs: each is deleted ``ttlSecondsAfterFinished`` after it
finished, and its result object with it when the operator is set to remove results.

Without this nothing ever deletes a CompositionJob, so a gateway's history (its ``GET /jobs``)
and the operator's inventory grow without bound. Two parts:

- :func:`plan`, pure: ``(job, now, settings) -> Plan`` says when the job is due (its own
  ``spec.ttlSecondsAfterFinished``, else the operator's default; unset both: kept), whether it
  is due now, and which result object goes first.
- :class:`Retention`, the executor: :meth:`Retention.enforce` carries a plan out through two
  injected callables (the CompositionJob delete of the operator's Kubernetes client, with a uid
  precondition; an S3 object delete) and returns how long until the job is due, for a deferred
  reconcile.

The reconciler calls it for jobs already terminal (the hook, one statement, at the top of
``Reconciler._reconcile`` where ``previous.phase in models.TERMINAL_PHASES`` returns)::

    if previous.phase in models.TERMINAL_PHASES:
        self.inventory.finish(uid)
        cj = models.CompositionJob.model_validate(body)
        wait = await self.retention.enforce(cj, now=now)
        if wait is not None:
            self._later(uid, wait)
        return

Order of deletion: the result object first, then the CompositionJob, so an operator that dies in
between finds the job again and finishes (deleting an absent object is not an error). The result
is removed only when its key lies in the job's own output folder (``.../<namespace>/<name>/<uid>/``
as ``builders.output_key_prefix`` makes it), so a status that names another object can never make
the operator delete it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import boto3
import pydantic

from compose_api import models

TTL_VARIABLE = "COMPOSE_RETENTION_TTL_SECONDS_AFTER_FINISHED"
DELETE_RESULTS_VARIABLE = "COMPOSE_RETENTION_DELETE_RESULTS"
DEFAULT_TTL_SECONDS = 7 * 24 * 3600

# (namespace, name, uid) -> None; must treat 404 (already gone) and 409 (the uid precondition
# failed: a new job of the same name) as done.
DeleteJob = Callable[[str, str, str], Awaitable[None]]
# (bucket, key) -> None; deleting an absent object must not fail (S3's own behaviour).
DeleteObject = Callable[[str, str], Awaitable[None]]


class RetentionSettings(pydantic.BaseModel):
    """The operator's retention settings (``COMPOSE_RETENTION_*``)."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    default_ttl_seconds_after_finished: int | None = pydantic.Field(
        default=DEFAULT_TTL_SECONDS,
        ge=0,
        le=models.MAX_TTL_SECONDS_AFTER_FINISHED,
        description="For jobs without spec.ttlSecondsAfterFinished; None: kept until deleted.",
    )
    delete_results: bool = pydantic.Field(
        default=False, description="Remove the result object when the job is deleted."
    )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> RetentionSettings:
        """From ``COMPOSE_RETENTION_TTL_SECONDS_AFTER_FINISHED`` (seconds; empty or ``none``:
        keep) and ``COMPOSE_RETENTION_DELETE_RESULTS`` (true/false); ValueError naming the
        variable otherwise."""
        values: dict[str, Any] = {}
        ttl = environ.get(TTL_VARIABLE)
        if ttl is not None:
            text = ttl.strip().lower()
            values["default_ttl_seconds_after_finished"] = None if text in ("", "none") else text
        if DELETE_RESULTS_VARIABLE in environ:
            values["delete_results"] = environ[DELETE_RESULTS_VARIABLE].strip()
        try:
            return cls.model_validate(values)
        except pydantic.ValidationError as error:
            names = {
                "default_ttl_seconds_after_finished": TTL_VARIABLE,
                "delete_results": DELETE_RESULTS_VARIABLE,
            }
            lines = [
                f"{names.get(str(item['loc'][0]), str(item['loc'][0]))}: {item['msg']}"
                for item in error.errors()
            ]
            raise ValueError("; ".join(lines)) from None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What retention does with one job."""

    finished_at: datetime.datetime | None  # None: not finished (or no time to count from)
    delete_at: datetime.datetime | None  # None: kept
    due: bool
    result: tuple[str, str] | None  # (bucket, key) removed first, when due and configured

    def wait_seconds(self, now: datetime.datetime) -> float | None:
        """Seconds until the job is due; 0 when due; None when it is kept."""
        if self.delete_at is None:
            return None
        return max(0.0, (self.delete_at - now).total_seconds())


def finished_at(job: models.CompositionJob) -> datetime.datetime | None:
    """When a terminal job finished: ``status.completionTime``, else the latest transition of
    its Succeeded or Failed condition; None for a job not terminal."""
    status = job.status
    if status.phase not in models.TERMINAL_PHASES:
        return None
    if status.completion_time is not None:
        return status.completion_time
    ends = {models.ConditionType.SUCCEEDED, models.ConditionType.FAILED}
    times = [c.last_transition_time for c in status.conditions if c.type in ends]
    return max(times) if times else None


def plan(
    job: models.CompositionJob, *, now: datetime.datetime, settings: RetentionSettings
) -> Plan:
    """When ``job`` is deleted, whether that is now, and what goes with it."""
    done = finished_at(job)
    ttl = job.spec.ttl_seconds_after_finished
    if ttl is None:
        ttl = settings.default_ttl_seconds_after_finished
    if done is None or ttl is None:
        return Plan(finished_at=done, delete_at=None, due=False, result=None)
    delete_at = done + datetime.timedelta(seconds=ttl)
    due = now >= delete_at
    result = None
    if due and settings.delete_results and job.status.result is not None:
        result = owned_result(job, job.status.result.s3_uri)
    return Plan(finished_at=done, delete_at=delete_at, due=due, result=result)


def owned_result(job: models.CompositionJob, uri: str) -> tuple[str, str] | None:
    """(bucket, key) of ``uri`` when it lies in the job's own output folder, else None."""
    parts = urllib.parse.urlsplit(uri)
    key = parts.path.lstrip("/")
    meta = job.metadata
    if parts.scheme != "s3" or not parts.netloc or not key or not meta.uid or not meta.name:
        return None
    segments = key.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return None
    folder = [meta.namespace or "default", meta.name, meta.uid]
    for index in range(len(segments) - len(folder)):
        if segments[index : index + len(folder)] == folder:
            return parts.netloc, key
    return None


class Retention:
    """Carries out :func:`plan` for terminal jobs."""

    def __init__(
        self,
        settings: RetentionSettings,
        *,
        delete_job: DeleteJob,
        delete_object: DeleteObject | None = None,
    ) -> None:
        if settings.delete_results and delete_object is None:
            raise ValueError(f"{DELETE_RESULTS_VARIABLE}: results cannot be removed without S3")
        self.settings = settings
        self._delete_job = delete_job
        self._delete_object = delete_object

    async def enforce(self, job: models.CompositionJob, *, now: datetime.datetime) -> float | None:
        """Delete ``job`` (its result first) when due; else seconds until due (None: kept)."""
        decided = plan(job, now=now, settings=self.settings)
        if not decided.due:
            return decided.wait_seconds(now)
        if decided.result is not None and self._delete_object is not None:
            await self._delete_object(*decided.result)
        meta = job.metadata
        await self._delete_job(meta.namespace or "default", meta.name, meta.uid or "")
        return None


def s3_object_deleter(*, region: str, endpoint_url: str | None = None) -> DeleteObject:
    """A DeleteObject over boto3 (blocking, so it runs in a worker thread)."""
    client = boto3.client("s3", region_name=region, endpoint_url=endpoint_url)

    async def delete(bucket: str, key: str) -> None:
        await asyncio.to_thread(client.delete_object, Bucket=bucket, Key=key)

    return delete
