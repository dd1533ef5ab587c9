"""Submitting, waiting for, reading, listing and cancelling one key's CompositionJobs.

The HTTP handlers (``app``) call :class:`JobService` after authentication and body parsing; it
combines the pure translation (``translate``) and views (``views``) with the API client
(``kube``) and S3 (``storage``). Ownership is enforced here: a job whose owner label is not the
caller's key reads as absent (404), so another key can neither see nor cancel it.

Lists are paged by the API server (the owner's label selector, ``limit`` and ``continue``), so a
page costs one page of objects however many jobs a key has; the order is the API server's name
order, which ``naming`` makes newest first. Before creating, the key's quotas are checked: jobs
not yet finished (outstanding, one label selector: ``naming.OUTSTANDING_LABEL``) and jobs kept
in the cluster (retained, counted now and then, see :meth:`JobService.check_quotas`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pydantic

from compose_api import kube, models, netguard, tracing
from compose_gateway import kubeapi, naming, storage, translate, views

# Pages of the retained count, and how long a count serves before the key's jobs are counted
# again (meanwhile this replica adds its own creations and removes its own cancellations).
RETAINED_PAGE = 100
RETAINED_RECOUNT_SECONDS = 60.0


class JobNotFound(Exception):
    """No job of that id belongs to the caller."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""


class BadCursor(ValueError):
    """The ``continue`` token is not one this gateway issued."""


class CursorExpired(Exception):
    """The ``continue`` token is too old (the API server compacted its history)."""


class QuotaExceeded(Exception):
    """The key already has as many jobs of one kind as it may; ``retry_after`` when waiting
    helps."""

    def __init__(self, message: str, *, retry_after: int | None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class Quotas:
    """Per-key limits; 0 means none."""

    max_outstanding: int = 0
    max_retained: int = 0
    # When an outstanding quota is full, how long a client is told to wait.
    outstanding_retry_after_seconds: int = 30


# A waiting request watches its job in segments this long, asking between them whether its
# client is still there.
WATCH_SEGMENT_SECONDS = 10.0


class JobService:
    """One key's jobs, in the gateway's namespace."""

    def __init__(
        self,
        *,
        kube_client: kubeapi.KubeClient,
        store: storage.Storage,
        target: translate.JobTarget,
        callback_policy: netguard.Policy | None,
        poll_seconds: float,
        quotas: Quotas = Quotas(),
        ttl_seconds_after_finished: int | None = None,
        resolver: netguard.Resolver = netguard.system_resolver,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._kube = kube_client
        self._store = store
        self._target = target
        self._callback_policy = callback_policy
        self._poll = poll_seconds
        self._quotas = quotas
        # owner -> (retained jobs, monotonic time of the next recount)
        self._retained_counts: dict[str, tuple[int, float]] = {}
        self._count_locks: dict[str, asyncio.Lock] = {}
        self._ttl = ttl_seconds_after_finished
        self._resolver = resolver
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep

    def name_for(self, owner: str, idempotency_key: str | None) -> str:
        if idempotency_key is None:
            return naming.random_job_name(self._clock())
        return naming.idempotent_job_name(owner, idempotency_key)

    def target_for(self, owner: str) -> translate.JobTarget:
        return dataclasses.replace(self._target, allowed_s3_prefix=self._store.owner_prefix(owner))

    def build(
        self,
        request: translate.GenerateRequest,
        *,
        owner: str,
        name: str,
        idempotency_key: str | None,
        raw_clothing: Any = None,
        digests: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The CompositionJob for ``request`` (``digests``: the SHA-256 of the files this
        request uploaded, by URI); RequestError names each bad field."""
        body = translate.build_job(
            request,
            name=name,
            owner=owner,
            target=self.target_for(owner),
            request_hash=translate.request_sha256(request),
            idempotency_key=idempotency_key,
            callback_policy=self._callback_policy,
            raw_clothing=raw_clothing,
            digests=digests,
        )
        if self._ttl is not None:
            body["spec"]["ttlSecondsAfterFinished"] = self._ttl
        return body

    async def check_callback(self, request: translate.GenerateRequest) -> None:
        """Refuse a ``callbackUrl`` the sender would refuse: the same guard, the same resolver
        (any spelling of loopback or metadata, a name resolving to a private address, a host
        name IDNA refuses). RequestError naming ``callbackUrl``."""
        url = request.callback_url
        if url is None or self._callback_policy is None:
            return  # absent, or refused already by build() (callbacks are off)
        try:
            await asyncio.to_thread(
                netguard.check_url, url, self._callback_policy, resolver=self._resolver
            )
        except netguard.ForbiddenAddressError as error:
            problem = f"is refused: {error}"
        except (OSError, ValueError) as error:
            problem = f"does not resolve: {error}"
        else:
            return
        raise translate.RequestError([translate.FieldError("callbackUrl", problem)])

    async def create(
        self, body: dict[str, Any], *, owner: str, idempotent: bool
    ) -> tuple[models.CompositionJob, bool]:
        """Create the job, or find the one an earlier request with this Idempotency-Key made;
        returns (job, created). IdempotencyConflict when that request was a different one;
        QuotaExceeded when the key may not have another job (a replay is never refused)."""
        try:
            await self.check_quotas(owner)
        except QuotaExceeded as refused:
            if not idempotent:
                raise
            try:
                return await self._replayed(body, owner=owner), False
            except kube.NotFound:
                raise refused from None
        tracing.annotate(body["metadata"].setdefault("annotations", {}))  # the request's span
        try:
            created = views.parse(await self._kube.create(body))
        except kube.Conflict:
            if not idempotent:
                raise
        else:
            self._counted(owner, +1)
            return created, True
        return await self._replayed(body, owner=owner), False

    async def _replayed(self, body: dict[str, Any], *, owner: str) -> models.CompositionJob:
        metadata = body["metadata"]
        existing = views.parse(await self._kube.get(metadata["name"]))
        same_owner = existing.metadata.labels.get(naming.OWNER_LABEL) == owner
        wanted = metadata["annotations"][naming.REQUEST_HASH_ANNOTATION]
        same_request = existing.metadata.annotations.get(naming.REQUEST_HASH_ANNOTATION) == wanted
        if not (same_owner and same_request):
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request"
            )
        return existing

    async def check_quotas(self, owner: str) -> None:
        """QuotaExceeded when ``owner`` has as many outstanding or retained jobs as it may.

        Outstanding: the key's jobs still labelled outstanding, at most ``max_outstanding + 1``
        of them read; those found finished lose the label on the way (so the count is exact
        and the list stays short). Retained: counted in pages of the key's jobs, at most
        ``max_retained + 1``, once per RETAINED_RECOUNT_SECONDS per key and replica, and kept
        up to date in between by this replica's own creations and cancellations. Requests in
        flight at the same moment (and other replicas, until the next count) may pass together.
        """
        quotas = self._quotas
        if quotas.max_outstanding:
            outstanding = await self._count_outstanding(owner, quotas.max_outstanding + 1)
            if outstanding >= quotas.max_outstanding:
                raise QuotaExceeded(
                    f"this API key has {outstanding} jobs queued or running, the most it may: "
                    "wait for one to finish",
                    retry_after=quotas.outstanding_retry_after_seconds,
                )
        if quotas.max_retained:
            retained = await self._retained(owner, quotas.max_retained + 1)
            if retained >= quotas.max_retained:
                raise QuotaExceeded(
                    f"this API key keeps {quotas.max_retained} jobs, the most it may: delete "
                    "finished ones (DELETE /jobs/{id}) or wait until they expire",
                    retry_after=None,
                )

    async def _count_outstanding(self, owner: str, limit: int) -> int:
        items, _ = await self._kube.list_page(
            label_selector=naming.outstanding_selector(owner), limit=limit
        )
        count = 0
        for item in items:
            if (item.get("status") or {}).get("phase") not in models.TERMINAL_PHASES:
                count += 1
                continue
            name = str((item.get("metadata") or {}).get("name", ""))
            patch = {"metadata": {"labels": {naming.OUTSTANDING_LABEL: None}}}
            with contextlib.suppress(kube.KubeError):  # else settled next time
                await self._kube.patch(name, patch)
        return count

    async def _retained(self, owner: str, limit: int) -> int:
        # One count at a time per key: concurrent submissions wait for it instead of each
        # paging through the same jobs.
        async with self._count_locks.setdefault(owner, asyncio.Lock()):
            now = self._monotonic()
            cached = self._retained_counts.get(owner)
            if cached is not None and now < cached[1]:
                return cached[0]
            count = 0
            token: str | None = None
            while count < limit:
                items, token = await self._kube.list_page(
                    label_selector=naming.owner_selector(owner),
                    limit=min(RETAINED_PAGE, limit - count),
                    continue_=token,
                )
                count += len(items)
                if not token:
                    break
            self._retained_counts[owner] = (count, now + RETAINED_RECOUNT_SECONDS)
            return count

    def _counted(self, owner: str, change: int) -> None:
        cached = self._retained_counts.get(owner)
        if cached is not None:
            self._retained_counts[owner] = (max(0, cached[0] + change), cached[1])

    async def wait(
        self,
        name: str,
        *,
        seconds: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> models.CompositionJob | None:
        """Follow the job until it ends or ``seconds`` pass; None when it was deleted.

        A watch of the one job (so a warm pool's result is answered the moment the operator
        writes it), in segments of at most :data:`WATCH_SEGMENT_SECONDS` between which ``gone``
        (the client disconnected) is asked; where the watch cannot be had, the job is re-read
        every ``poll_seconds``.
        """
        deadline = self._monotonic() + seconds
        try:
            obj = await self._kube.get(name)
        except kube.NotFound:
            return None
        job = views.parse(obj)
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        watching = True
        while not views.is_terminal(job):
            remaining = deadline - self._monotonic()
            if remaining <= 0 or (gone is not None and await gone()):
                return job
            if watching:
                try:
                    segment = max(1, math.ceil(min(remaining, WATCH_SEGMENT_SECONDS)))
                    async for kind, changed in self._kube.watch_one(
                        name, resource_version=version, seconds=segment
                    ):
                        if kind == "DELETED":
                            return None
                        if kind in ("ADDED", "MODIFIED"):
                            job = views.parse(changed)
                        version = str(
                            (changed.get("metadata") or {}).get("resourceVersion") or version
                        )
                        if views.is_terminal(job):
                            return job
                    continue
                except kube.KubeError:
                    watching = False  # too old a version, or no watch granted: read again
            await self._sleep(min(self._poll, max(0.0, deadline - self._monotonic())))
            try:
                obj = await self._kube.get(name)
            except kube.NotFound:
                return None
            job = views.parse(obj)
        return job

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
        """One page of the caller's jobs in id order (newest first, see ``naming``), and the
        cursor of the next page: the API server's own ``continue`` token."""
        try:
            items, token = await self._kube.list_page(
                label_selector=naming.owner_selector(owner), limit=limit, continue_=cursor
            )
        except kube.KubeError as error:
            if cursor is not None and error.status == 410:
                raise CursorExpired(cursor) from None
            if cursor is not None and error.status == 400:
                raise BadCursor("not a continue token from a previous page") from None
            raise
        jobs = []
        for item in items:
            try:
                job = views.parse(item)
            except pydantic.ValidationError:
                continue  # an object the models refuse (written by something else): skipped
            if job.metadata.labels.get(naming.OWNER_LABEL) == owner:
                jobs.append(job)
        return jobs, token

    async def cancel(self, owner: str, name: str) -> None:
        await self.get(owner, name)
        try:
            await self._kube.delete(name)
        except kube.NotFound:
            raise JobNotFound(name) from None
        self._counted(owner, -1)

    def image_url(self, job: models.CompositionJob) -> str | None:
        if job.status.result is None:
            return None
        try:
            return self._store.result_url(job.status.result.s3_uri)
        except ValueError:
            return None

    def download_url(self, job: models.CompositionJob) -> str | None:
        """The result's URL that browsers save as ``<job id>.<format>`` (None with a CDN)."""
        result = job.status.result
        if result is None:
            return None
        kind = str(result.format or models.ImageFormat.PNG)
        extension = "jpg" if kind == models.ImageFormat.JPEG else kind
        try:
            return self._store.download_url(result.s3_uri, f"{job.metadata.name}.{extension}")
        except ValueError:
            return None

    def view(self, job: models.CompositionJob, *, base: str = "") -> views.JobView:
        """What ``GET /jobs/{id}`` answers for ``job``, result URLs included."""
        return views.job_view(
            job, image_url=self.image_url(job), download_url=self.download_url(job), base=base
        )
