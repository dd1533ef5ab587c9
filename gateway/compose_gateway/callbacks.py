"""Callback delivery: when a job with a ``callbackUrl`` ends, POST its result there, signed.

The app's lifespan runs :class:`CallbackLoop` as a background task. It learns that jobs ended by
listing, every ``callback_poll_seconds``, the jobs still labelled ``callback=pending`` (a label
selector, so the cost does not grow with history) and delivers for those that are terminal:

- **Signed per key**: HMAC-SHA256 over ``<timestamp>.<key id>.<body>`` with the secret of the
  job's owner key (``signing``), the job uid as ``X-Compose-Delivery`` so receivers can drop
  duplicates.
- **Never to private or metadata addresses**: every attempt resolves the host through
  ``compose_api.netguard`` and connects to the checked address (no second resolution, no DNS
  rebinding); redirects are not followed.
- **Retried with backoff**: a failed attempt records the attempt count and the time of the next
  one in annotations; after ``callback_max_attempts`` the label becomes ``failed``.
- **At least once, not duplicated**: before sending, a replica claims the job with a merge patch
  conditional on ``resourceVersion`` (a second replica gets 409 and skips it); after a 2xx the
  label becomes ``delivered``. A crash between the POST and that patch means one more delivery
  once the claim expires, never none.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pydantic

from compose_api import kube, models, netguard
from compose_gateway import kubeapi, metrics, naming, signing, storage, views

logger = logging.getLogger(__name__)

CLAIM_ANNOTATION = f"{naming.PREFIX}/callback-claim"
USER_AGENT = "compose-gateway-callback/1"


class DeliveryError(Exception):
    """One attempt failed; ``permanent`` means retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        self.permanent = permanent
        super().__init__(message)


class Sender:
    """POSTs one body to one URL, pinned to the address netguard checked."""

    def __init__(
        self,
        *,
        policy: netguard.Policy,
        timeout_seconds: float,
        resolver: netguard.Resolver = netguard.system_resolver,
    ) -> None:
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The response status of a 2xx answer; DeliveryError otherwise."""
        try:
            destination = await asyncio.to_thread(
                netguard.check_url, url, self._policy, resolver=self._resolver
            )
        except netguard.ForbiddenAddressError as error:
            raise DeliveryError(f"refused: {error}", permanent=True) from None
        except OSError as error:
            raise DeliveryError(f"cannot resolve: {error}") from None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        default_port = 443 if destination.scheme == "https" else 80
        host = destination.host if ":" not in destination.host else f"[{destination.host}]"
        if destination.port != default_port:
            host = f"{host}:{destination.port}"
        pinned = (
            f"{destination.scheme}://{destination.ip_literal}:{destination.port}"
            f"{destination.target}"
        )
        extra: dict[str, Any] = {}
        if destination.scheme == "https":
            extra["server_hostname"] = destination.host
        try:
            async with self._session.post(
                pinned,
                data=body,
                headers={**headers, "Host": host, "User-Agent": USER_AGENT},
                allow_redirects=False,
                **extra,
            ) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DeliveryError(f"no answer: {error!r}") from None
        if 200 <= status < 300:
            return status
        raise DeliveryError(f"HTTP {status}", permanent=status == 410)


def backoff(attempt: int, *, first: float, cap: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
    delay: float = first * 2 ** max(0, attempt - 1)
    return min(cap, delay)


class CallbackLoop:
    """Finds ended jobs that owe a callback and delivers, one pass per :meth:`run_once`."""

    def __init__(
        self,
        *,
        kube_client: kubeapi.KubeClient,
        store: storage.Storage,
        sender: Sender,
        secret: bytes,
        max_attempts: int,
        backoff_seconds: float,
        backoff_max_seconds: float,
        claim_seconds: float,
        metrics_: metrics.Metrics,
        clock: Callable[[], float] = time.time,
        concurrency: int = 8,
        replica: str | None = None,
    ) -> None:
        self._kube = kube_client
        self._store = store
        self._sender = sender
        self._secret = secret
        self._max_attempts = max_attempts
        self._backoff = backoff_seconds
        self._backoff_max = backoff_max_seconds
        self._claim_seconds = claim_seconds
        self._metrics = metrics_
        self._clock = clock
        self._limit = asyncio.Semaphore(concurrency)
        self.replica = replica or secrets.token_hex(6)

    async def run(self, *, interval: float) -> None:
        """Pass after pass until cancelled; a failed pass is logged and retried."""
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("callback pass failed")
            await asyncio.sleep(interval)

    async def run_once(self) -> int:
        """One pass; returns how many callbacks were attempted."""
        items = await self._kube.list_all(label_selector=naming.pending_callbacks_selector())
        due = [obj for obj in items if self._due(obj)]
        results = await asyncio.gather(*(self._deliver(obj) for obj in due))
        return sum(results)

    def _due(self, obj: dict[str, Any]) -> bool:
        try:
            job = views.parse(obj)
        except pydantic.ValidationError:
            return False
        if not views.is_terminal(job):
            return False
        annotations = job.metadata.annotations
        now = self._clock()
        if _number(annotations.get(naming.CALLBACK_NEXT_ANNOTATION)) > now:
            return False
        claim = annotations.get(CLAIM_ANNOTATION, "")
        holder, _, until = claim.partition(" ")
        return not (claim and holder != self.replica and _number(until) > now)

    async def _deliver(self, obj: dict[str, Any]) -> int:
        async with self._limit:
            job = views.parse(obj)
            name = job.metadata.name
            now = self._clock()
            try:
                await self._kube.patch(
                    name,
                    {
                        "metadata": {
                            "resourceVersion": job.metadata.resource_version,
                            "annotations": {
                                CLAIM_ANNOTATION: f"{self.replica} {now + self._claim_seconds:.0f}"
                            },
                        }
                    },
                )
            except (kube.Conflict, kube.NotFound):
                return 0
            await self._attempt(job)
            return 1

    async def _attempt(self, job: models.CompositionJob) -> None:
        annotations = job.metadata.annotations
        url = annotations.get(naming.CALLBACK_URL_ANNOTATION, "")
        attempts = int(_number(annotations.get(naming.CALLBACK_ATTEMPTS_ANNOTATION))) + 1
        image_url = None
        if job.status.result is not None:
            try:
                image_url = self._store.result_url(job.status.result.s3_uri)
            except ValueError:
                image_url = None
        payload = views.callback_payload(job, image_url=image_url)
        owner = job.metadata.labels.get(naming.OWNER_LABEL, "")
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            signing.SIGNATURE_HEADER: signing.header(
                signing.key_secret(self._secret, owner), owner, body, timestamp
            ),
            signing.DELIVERY_HEADER: job.metadata.uid or job.metadata.name,
            signing.EVENT_HEADER: str(payload["event"]),
        }
        stamp = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC).isoformat()
        label: str | None
        try:
            status = await self._sender.post(url, body, headers)
        except DeliveryError as error:
            give_up = error.permanent or attempts >= self._max_attempts
            label = naming.CALLBACK_FAILED if give_up else None
            outcome = ("refused" if error.permanent else "failed") if give_up else "retry"
            result = f"{outcome} at {stamp} after {attempts} attempt(s): {error}"
            delay = backoff(attempts, first=self._backoff, cap=self._backoff_max)
            next_attempt: str | None = None if give_up else f"{self._clock() + delay:.3f}"
            self._metrics.callbacks.labels(outcome=outcome).inc()
            logger.info("callback of %s: %s", job.metadata.name, result)
        else:
            label = naming.CALLBACK_DELIVERED
            result = f"delivered at {stamp} after {attempts} attempt(s): HTTP {status}"
            next_attempt = None
            self._metrics.callbacks.labels(outcome="delivered").inc()
        metadata: dict[str, Any] = {
            "annotations": {
                naming.CALLBACK_ATTEMPTS_ANNOTATION: str(attempts),
                naming.CALLBACK_RESULT_ANNOTATION: result,
                naming.CALLBACK_NEXT_ANNOTATION: next_attempt,
                CLAIM_ANNOTATION: None,
            }
        }
        if label is not None:
            metadata["labels"] = {naming.CALLBACK_LABEL: label}
        with contextlib.suppress(kube.NotFound):
            await self._kube.patch(job.metadata.name, {"metadata": metadata})


def _number(text: str | None) -> float:
    try:
        return float(text) if text else 0.0
    except ValueError:
        return 0.0
