"""Submitting, waiting for, reading, listing and cancelling one key's CompositionJobs.

The HTTP handlers (``app``) call :class:`JobService` after authentication and body parsing; it
combines the pure translation (``translate``) and views (``views``) with the API client
(``kube``) and S3 (``storage``). Ownership is enforced here: a job whose owner label is not the
caller's key reads as absent (404), so another key can neither see nor cancel it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic

from compose_api import models, netguard
from compose_gateway import kube, naming, storage, translate, views

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class JobNotFound(Exception):
    """No job of that id belongs to the caller."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""


class BadCursor(ValueError):
    """The ``continue`` token is not one this gateway issued."""


class JobService:
    """One key's jobs, in the gateway's namespace."""

    def __init__(
        self,
        *,
        kube_client: kube.KubeClient,
        store: storage.Storage,
        target: translate.JobTarget,
        callback_policy: netguard.Policy | None,
        poll_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._kube = kube_client
        self._store = store
        self._target = target
        self._callback_policy = callback_policy
        self._poll = poll_seconds
        self._monotonic = monotonic
        self._sleep = sleep

    @staticmethod
    def name_for(owner: str, idempotency_key: str | None) -> str:
        if idempotency_key is None:
            return naming.random_job_name()
        return naming.idempotent_job_name(owner, idempotency_key)

    def target_for(self, owner: str) -> translate.JobTarget:
        return translate.JobTarget(
            namespace=self._target.namespace,
            profile=self._target.profile,
            output_bucket=self._target.output_bucket,
            output_prefix=self._target.output_prefix,
            allowed_s3_prefix=self._store.owner_prefix(owner),
        )

    def build(
        self,
        request: translate.GenerateRequest,
        *,
        owner: str,
        name: str,
        idempotency_key: str | None,
        raw_clothing: Any = None,
    ) -> dict[str, Any]:
        """The CompositionJob for ``request``; RequestError names each bad field."""
        return translate.build_job(
            request,
            name=name,
            owner=owner,
            target=self.target_for(owner),
            request_hash=translate.request_sha256(request),
            idempotency_key=idempotency_key,
            callback_policy=self._callback_policy,
            raw_clothing=raw_clothing,
        )

    async def create(
        self, body: dict[str, Any], *, owner: str, idempotent: bool
    ) -> tuple[models.CompositionJob, bool]:
        """Create the job, or find the one an earlier request with this Idempotency-Key made;
        returns (job, created). IdempotencyConflict when that request was a different one."""
        try:
            return views.parse(await self._kube.create(body)), True
        except kube.Conflict:
            if not idempotent:
                raise
        metadata = body["metadata"]
        existing = views.parse(await self._kube.get(metadata["name"]))
        same_owner = existing.metadata.labels.get(naming.OWNER_LABEL) == owner
        wanted = metadata["annotations"][naming.REQUEST_HASH_ANNOTATION]
        same_request = existing.metadata.annotations.get(naming.REQUEST_HASH_ANNOTATION) == wanted
        if not (same_owner and same_request):
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request"
            )
        return existing, False

    async def wait(
        self,
        name: str,
        *,
        seconds: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> models.CompositionJob | None:
        """Re-read the job until it ends or ``seconds`` pass; None when it was deleted.

        ``gone`` (the client disconnected) stops the wait early.
        """
        deadline = self._monotonic() + seconds
        while True:
            try:
                job = views.parse(await self._kube.get(name))
            except kube.NotFound:
                return None
            remaining = deadline - self._monotonic()
            if views.is_terminal(job) or remaining <= 0:
                return job
            if gone is not None and await gone():
                return job
            await self._sleep(min(self._poll, remaining))

    async def get(self, owner: str, name: str) -> models.CompositionJob:
        if not naming.is_job_name(name):
            raise JobNotFound(name)
        try:
            obj = await self._kube.get(name)
        except kube.NotFound:
            raise JobNotFound(name) from None
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(naming.OWNER_LABEL) != owner:
            raise JobNotFound(name)
        # pydantic.ValidationError here (an object the models refuse) becomes a 502 in the app.
        return views.parse(obj)

    async def list(
        self, owner: str, *, limit: int, cursor: str | None
    ) -> tuple[list[models.CompositionJob], str | None]:
        """The caller's jobs, newest first, one page; and the cursor of the next page."""
        items = await self._kube.list_all(label_selector=naming.owner_selector(owner))
        jobs = []
        for item in items:
            try:
                job = views.parse(item)
            except pydantic.ValidationError:
                continue
            if job.metadata.labels.get(naming.OWNER_LABEL) == owner:
                jobs.append(job)
        jobs.sort(key=_order, reverse=True)
        if cursor is not None:
            after = decode_cursor(cursor)
            jobs = [job for job in jobs if _order(job) < after]
        page = jobs[:limit]
        more = len(jobs) > limit
        return page, encode_cursor(_order(page[-1])) if more and page else None

    async def cancel(self, owner: str, name: str) -> None:
        await self.get(owner, name)
        try:
            await self._kube.delete(name)
        except kube.NotFound:
            raise JobNotFound(name) from None

    def image_url(self, job: models.CompositionJob) -> str | None:
        if job.status.result is None:
            return None
        try:
            return self._store.result_url(job.status.result.s3_uri)
        except ValueError:
            return None


def _order(job: models.CompositionJob) -> tuple[str, str]:
    created = job.metadata.creation_timestamp or EPOCH
    return created.astimezone(datetime.UTC).isoformat(), job.metadata.name


def encode_cursor(order: tuple[str, str]) -> str:
    raw = json.dumps(list(order), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (ValueError, binascii.Error):
        raise BadCursor("not a continue token from a previous page") from None
    if not (isinstance(data, list) and len(data) == 2 and all(isinstance(x, str) for x in data)):
        raise BadCursor("not a continue token from a previous page")
    return data[0], data[1]
