"""The HTTP routes, thin, over ``jobs.JobService``: authentication, ``POST /generate``,
``GET /jobs``, ``GET /jobs/{id}``, ``GET /jobs/{id}/events`` (``events``), ``DELETE /jobs/{id}``,
``/healthz`` and ``/readyz``. The studio page has routes of its own (``studio``).

``app.create_app`` builds one :class:`Services` and includes :func:`build_router`. Authentication
(API keys, the per-key rate limit, the failed-attempt limit per address) is the
:func:`authenticate` dependency; bodies are parsed by ``bodies`` (JSON) and streamed by
``uploads`` (multipart).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re

import fastapi
from fastapi import responses, security

from compose_api import kube, models
from compose_gateway import (
    auth,
    bodies,
    callbacks,
    errors,
    events,
    jobs,
    kubeapi,
    metrics,
    openapi,
    ratelimit,
    storage,
    translate,
    uploads,
    views,
)
from compose_gateway import (
    settings as settings_module,
)

logger = logging.getLogger(__name__)

PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
JSON_TYPES = ("application/json",)
MULTIPART = openapi.MULTIPART
ApiError = errors.ApiError


@dataclasses.dataclass
class Services:
    """What the handlers use; one per app, on ``app.state.services``."""

    settings: settings_module.Settings
    kube: kubeapi.KubeClient
    store: storage.Storage
    keys: auth.KeyRing
    limiter: ratelimit.RateLimiter | ratelimit.SharedRateLimiter
    failures: ratelimit.RateLimiter
    uploads: uploads.Admission
    metrics: metrics.Metrics
    jobs: jobs.JobService
    callback_loop: callbacks.CallbackLoop | None
    sender: callbacks.Sender | None


def services(request: fastapi.Request) -> Services:
    found: Services = request.app.state.services
    return found


_bearer = security.HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_api_key = security.APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The API key in `X-API-Key`."
)


async def authenticate(
    request: fastapi.Request,
    bearer: security.HTTPAuthorizationCredentials | None = fastapi.Security(_bearer),
    api_key: str | None = fastapi.Security(_api_key),
) -> str:
    """The caller's key id (the owner of the jobs it creates); 401 or 429 otherwise."""
    svc = services(request)
    presented = bearer.credentials if bearer is not None else api_key
    challenge = {"WWW-Authenticate": 'Bearer realm="compose"'}
    if not presented:
        svc.metrics.refusals.labels(reason="unauthenticated").inc()
        raise ApiError(
            401,
            "Unauthorized",
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers=challenge,
        )
    owner = svc.keys.cached(presented)
    if owner is None:
        # Keys not verified yet cost hashing: refused at once for an address that failed too
        # often (a key verified before still passes, through the cache above).
        address = request.client.host if request.client else "unknown"
        blocked = svc.failures.wait(address)
        if blocked > 0:
            svc.metrics.refusals.labels(reason="too-many-failures").inc()
            raise ApiError(
                429,
                "TooManyFailedAttempts",
                "too many requests with invalid API keys from this address; retry later",
                headers={"Retry-After": str(max(1, math.ceil(blocked)))},
            )
        try:
            owner = await svc.keys.identify(presented)
        except auth.Busy:
            svc.metrics.refusals.labels(reason="auth-busy").inc()
            raise ApiError(
                503,
                "AuthenticationBusy",
                "too many API key checks in progress; retry in a moment",
                headers={"Retry-After": "1"},
            ) from None
        if owner is None:
            svc.failures.take(address)
            svc.metrics.refusals.labels(reason="bad-key").inc()
            raise ApiError(401, "Unauthorized", "the API key is not valid", headers=challenge)
    retry_after = await svc.limiter.acquire(owner)
    if retry_after > 0:
        svc.metrics.refusals.labels(reason="rate-limited").inc()
        raise ApiError(
            429,
            "RateLimited",
            "too many requests for this API key; retry later",
            headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
        )
    return owner


def wait_seconds(query: float | None, prefer: str | None, cap: float) -> tuple[float, bool]:
    """How long to hold the request (query first, then ``Prefer: wait=N``), capped; and whether
    the Prefer header asked for it (answered with ``Preference-Applied``)."""
    if query is not None:
        return min(query, cap), False
    if prefer:
        match = PREFER_WAIT.search(prefer)
        if match:
            return min(float(match.group(1)), cap), True
    return 0.0, False


def build_router() -> fastapi.APIRouter:
    router = fastapi.APIRouter()

    @router.post(
        "/generate",
        status_code=202,
        response_model=views.Accepted,
        responses={
            200: {"model": views.Success, "description": "Waited: the job succeeded."},
            409: {"model": views.ErrorBody, "description": "Idempotency-Key reused."},
            410: {"model": views.ErrorBody, "description": "Waited: the job was deleted."},
            415: {"model": views.ErrorBody, "description": "Neither JSON nor multipart."},
            502: {"model": views.ErrorBody, "description": "Waited: the job failed."},
            504: {"model": views.ErrorBody, "description": "Waited: the job ran out of time."},
            **openapi.ERRORS,
        },
        openapi_extra={"requestBody": openapi.GENERATE_BODY},
        summary="Compose an image of a person wearing clothing in a place",
    )
    async def generate(
        request: fastapi.Request,
        owner: str = fastapi.Depends(authenticate),
        wait: float | None = fastapi.Query(
            default=None, ge=0, le=3600, description="Hold the request up to this many seconds."
        ),
        prefer: str | None = fastapi.Header(
            default=None, max_length=256, description="`wait=<seconds>`, as ?wait=."
        ),
        idempotency_key: str | None = fastapi.Header(
            default=None,
            min_length=1,
            max_length=255,
            description="The same key with the same body returns the same job.",
        ),
    ) -> responses.JSONResponse:
        svc = services(request)
        job = await _submit(request, svc, owner=owner, idempotency_key=idempotency_key)
        seconds, from_prefer = wait_seconds(wait, prefer, svc.settings.max_wait_seconds)
        headers = {"Location": views.status_url(job.metadata.name, base=request.scope["root_path"])}
        if from_prefer:
            headers["Preference-Applied"] = f"wait={seconds:g}"
        if seconds > 0:
            waited = await svc.jobs.wait(
                job.metadata.name, seconds=seconds, gone=request.is_disconnected
            )
            if waited is None:
                raise ApiError(
                    410, "Cancelled", "the job was deleted while waiting", job_id=job.metadata.name
                )
            job = waited
            if views.is_terminal(job):
                result = views.outcome(job, image_url=svc.jobs.image_url(job))
                return responses.JSONResponse(
                    result.body, status_code=result.http_status, headers=headers
                )
        accepted = views.accepted(job, base=request.scope["root_path"])
        return responses.JSONResponse(accepted.body(), status_code=202, headers=headers)

    @router.get("/jobs/{job_id}", response_model=views.JobView, responses=openapi.ERRORS)
    async def get_job(
        job_id: str, request: fastapi.Request, owner: str = fastapi.Depends(authenticate)
    ) -> responses.JSONResponse:
        svc = services(request)
        job = await svc.jobs.get(owner, job_id)
        return responses.JSONResponse(svc.jobs.view(job, base=request.scope["root_path"]).body())

    @router.get(
        "/jobs/{job_id}/events",
        response_class=responses.StreamingResponse,
        responses={200: openapi.EVENTS, **openapi.ERRORS},
        summary="Follow a job: Server-Sent Events of its status until it ends",
    )
    async def job_events(
        job_id: str, request: fastapi.Request, owner: str = fastapi.Depends(authenticate)
    ) -> responses.StreamingResponse:
        svc = services(request)
        job = await svc.jobs.get(owner, job_id)  # an unknown job: 404 before the stream
        base = request.scope["root_path"]
        stream = events.stream(
            job,
            read=lambda: svc.jobs.get(owner, job_id),
            view=lambda found: svc.jobs.view(found, base=base).body(),
            poll_seconds=svc.settings.job_poll_seconds,
            max_seconds=svc.settings.events_max_seconds,
        )
        return responses.StreamingResponse(
            stream, media_type=events.MEDIA_TYPE, headers=events.HEADERS
        )

    @router.get("/jobs", response_model=views.JobList, responses=openapi.ERRORS)
    async def list_jobs(
        request: fastapi.Request,
        owner: str = fastapi.Depends(authenticate),
        limit: int = fastapi.Query(default=20, ge=1, le=100, description="Jobs per page."),
        continue_: str | None = fastapi.Query(
            default=None, alias="continue", max_length=1024, description="From the last page."
        ),
    ) -> responses.JSONResponse:
        svc = services(request)
        page, token = await svc.jobs.list(owner, limit=limit, cursor=continue_)
        base = request.scope["root_path"]
        items = [svc.jobs.view(j, base=base) for j in page]
        return responses.JSONResponse(views.JobList(items=items, continue_=token).body())

    @router.delete("/jobs/{job_id}", response_model=views.Cancelled, responses=openapi.ERRORS)
    async def cancel_job(
        job_id: str, request: fastapi.Request, owner: str = fastapi.Depends(authenticate)
    ) -> responses.JSONResponse:
        await services(request).jobs.cancel(owner, job_id)
        return responses.JSONResponse(views.Cancelled(job_id=job_id).body())

    @router.get("/healthz", include_in_schema=True, summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: the Kubernetes API answers and the key file is readable",
        responses={503: {"model": views.ErrorBody}},
    )
    async def readyz(request: fastapi.Request) -> responses.JSONResponse:
        svc = services(request)
        try:
            await svc.kube.ping()
        except kube.KubeError as error:
            logger.warning("not ready: Kubernetes API: %s", error)
            return errors.error_response(503, "NotReady", "the Kubernetes API does not answer")
        if not svc.keys.loaded:
            # The details (path, entry, hash) go to the log and the metric, never to clients.
            return errors.error_response(503, "NotReady", "the API keys are not loaded")
        return responses.JSONResponse({"status": "ok"})

    return router


async def _submit(
    request: fastapi.Request, svc: Services, *, owner: str, idempotency_key: str | None
) -> models.CompositionJob:
    """Parse the body (JSON or multipart), store uploads, create (or replay) the job."""
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    name = svc.jobs.name_for(owner, idempotency_key)
    idempotent = idempotency_key is not None
    if media == MULTIPART:
        if not svc.store.inputs_bucket:
            raise ApiError(415, "UploadsDisabled", "this gateway takes image URLs only (JSON)")
        if not idempotent:
            # Refused before any byte is stored (a replay of an idempotent request is never).
            await svc.jobs.check_quotas(owner)
        with svc.uploads.admit(owner):
            sink = svc.store.upload_sink(owner=owner, job_name=name)
            try:
                async with asyncio.timeout(svc.settings.upload_timeout_seconds):
                    received = await uploads.receive(
                        request.stream(),
                        content_type=content_type,
                        declared_length=request.headers.get("content-length"),
                        limits=uploads.Limits(
                            max_request_bytes=svc.settings.max_request_bytes,
                            max_file_bytes=svc.settings.max_upload_bytes,
                        ),
                        sink=sink,
                        remove_on_error=not idempotent,
                    )
            except TimeoutError:
                raise ApiError(
                    408,
                    "RequestTimeout",
                    f"the upload took longer than {svc.settings.upload_timeout_seconds:g} s; "
                    "nothing was kept",
                ) from None
        try:
            payload = translate.attach_categories(received.payload)
            parsed = translate.parse_request(payload)
            body = svc.jobs.build(
                parsed,
                owner=owner,
                name=name,
                idempotency_key=idempotency_key,
                digests=received.digests(),
            )
            await svc.jobs.check_callback(parsed)
        except translate.RequestError:
            if not idempotent:
                await uploads.remove(sink, received.stored)
            raise
        kind = "multipart"
    elif media in JSON_TYPES or media.endswith("+json"):
        payload = bodies.parse_json(await bodies.read_limited(request, svc.settings.max_json_bytes))
        parsed = translate.parse_request(payload)
        body = svc.jobs.build(
            parsed,
            owner=owner,
            name=name,
            idempotency_key=idempotency_key,
            raw_clothing=payload.get("clothingImages"),
        )
        await svc.jobs.check_callback(parsed)
        kind = "json"
    else:
        raise ApiError(415, "UnsupportedMediaType", "send application/json or multipart/form-data")
    job, created = await svc.jobs.create(body, owner=owner, idempotent=idempotent)
    if created:
        svc.metrics.jobs_created.labels(input=kind).inc()
    return job
