"""Server-Sent Events of one job: ``GET /jobs/{id}/events`` sends the job's view each time it
changes, until the job ends.

The route (``routes``) authenticates and reads the job once (so an unknown job is a plain 404
before any byte is streamed), then returns :func:`stream` over the same reads as
``GET /jobs/{id}`` (``jobs.JobService.get``): one read of the CompositionJob every
``poll_seconds`` per open stream. Events:

- ``status``: the job view (the body of ``GET /jobs/{id}``), first at once, then on each change;
- ``end``: the job has ended (``{jobId, status}``); the stream closes;
- ``gone``: the job was deleted (``reason: Cancelled``); the stream closes;
- ``error``: the cluster did not answer; the stream closes, reconnect to go on.

A comment line is sent every ``heartbeat_seconds`` without a change, so proxies keep the
connection open. A stream lasts at most ``max_seconds``, then closes without ``end``: the client
reconnects (after the ``retry`` it was given) and gets the current status first, as a fresh one
does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pydantic

from compose_api import kube, models
from compose_gateway import jobs, views

logger = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
HEARTBEAT = b": keep-alive\n\n"
RETRY_MILLISECONDS = 2000
# Sent with the stream: no caching, and no buffering by nginx-style proxies.
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def frame(event: str, data: Any) -> bytes:
    """One event: its name and its data as one line of JSON."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {text}\n\n".encode()


def _unchanged_part(body: dict[str, Any]) -> str:
    """The view without its result URLs, which a presigned URL changes on every read."""
    result = body.get("result")
    if isinstance(result, dict):
        body = {**body, "result": {k: v for k, v in result.items() if not k.endswith("Url")}}
    return json.dumps(body, sort_keys=True)


async def stream(
    job: models.CompositionJob,
    *,
    read: Callable[[], Awaitable[models.CompositionJob]],
    view: Callable[[models.CompositionJob], dict[str, Any]],
    poll_seconds: float,
    max_seconds: float,
    heartbeat_seconds: float = 15.0,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[bytes]:
    """The events of ``job`` (as read first), then of each re-read by ``read`` (which raises
    ``jobs.JobNotFound`` once the job is gone)."""
    name = job.metadata.name
    started = quiet_since = monotonic()
    yield f"retry: {RETRY_MILLISECONDS}\n\n".encode()
    last = None
    while True:
        body = view(job)
        current = _unchanged_part(body)
        now = monotonic()
        if current != last:
            yield frame("status", body)
            last, quiet_since = current, now
        elif now - quiet_since >= heartbeat_seconds:
            yield HEARTBEAT
            quiet_since = now
        if views.is_terminal(job):
            yield frame("end", {"jobId": name, "status": body["status"]})
            return
        remaining = started + max_seconds - now
        if remaining <= 0:
            return  # the client reconnects
        await sleep(min(poll_seconds, remaining))
        try:
            job = await read()
        except jobs.JobNotFound:
            gone = {"jobId": name, "reason": "Cancelled", "message": "the job was deleted"}
            yield frame("gone", gone)
            return
        except (kube.KubeError, pydantic.ValidationError) as error:
            logger.warning("event stream of %s: cannot read the job: %s", name, error)
            problem = {
                "jobId": name,
                "reason": "KubernetesUnavailable",
                "message": "the job could not be read; reconnect to go on following it",
            }
            yield frame("error", problem)
            return
