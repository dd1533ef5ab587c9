"""The HTTP API: FastAPI routes, thin, over ``jobs.JobService``.

``create_app`` is the only entry: ``__main__`` calls it with settings from the environment, and
tests call it with settings, an API client on the emulated cluster, and clocks of their own. It
wires authentication (API keys, per-key rate limit), body limits, CORS, metrics, and the callback
loop (started and stopped by the app's lifespan). Errors of every kind leave as one JSON shape
(``views.ErrorBody``: ``status: "error"``, a stable ``reason``, a ``message``, and for bad input
``errors`` naming each field as the client spelled it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http
import logging
import math
import pathlib
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import fastapi
import prometheus_client
import pydantic
from fastapi import exceptions as fastapi_exceptions
from fastapi import responses, security
from fastapi.middleware import cors
from starlette import exceptions as starlette_exceptions

from compose_api import models, netguard
from compose_gateway import (
    auth,
    bodies,
    callbacks,
    jobs,
    kube,
    metrics,
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
MULTIPART = "multipart/form-data"
# Beside its part buffer, an upload holds one received chunk and the parser's state.
UPLOAD_CHUNK_ALLOWANCE = 256 * 1024


class ApiError(Exception):
    """An error answer: HTTP status, stable reason, message, optional headers."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        job_id: str | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}
        self.job_id = job_id
        super().__init__(message)


@dataclasses.dataclass
class Services:
    """What the handlers use; one per app, on ``app.state.services``."""

    settings: settings_module.Settings
    kube: kube.KubeClient
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


def _error_response(
    status: int,
    reason: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    job_id: str | None = None,
    errors: list[dict[str, str]] | None = None,
) -> responses.JSONResponse:
    body = views.ErrorBody(reason=reason, message=message, job_id=job_id, errors=errors)
    return responses.JSONResponse(body.body(), status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str:
    """A FastAPI parameter location as the client names it: ``wait``, ``Idempotency-Key``."""
    if not loc:
        return "body"
    where, rest = loc[0], loc[1:]
    if where == "header" and rest:
        return "-".join(part.capitalize() for part in str(rest[0]).split("-"))
    text = ""
    for part in rest:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or str(where)


def _install_error_handlers(app: fastapi.FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: fastapi.Request, error: ApiError) -> responses.JSONResponse:
        return _error_response(
            error.status, error.reason, error.message, headers=error.headers, job_id=error.job_id
        )

    @app.exception_handler(translate.RequestError)
    async def _request_error(
        _: fastapi.Request, error: translate.RequestError
    ) -> responses.JSONResponse:
        fields = [{"field": e.field, "message": e.message} for e in error.errors]
        return _error_response(422, "InvalidRequest", str(error), errors=fields)

    @app.exception_handler(fastapi_exceptions.RequestValidationError)
    async def _validation_error(
        _: fastapi.Request, error: fastapi_exceptions.RequestValidationError
    ) -> responses.JSONResponse:
        found = [
            translate.FieldError(_field_of(tuple(item.get("loc", ()))), str(item.get("msg", "")))
            for item in error.errors()
        ]
        fields = [{"field": e.field, "message": e.message} for e in found]
        return _error_response(422, "InvalidRequest", translate.describe(found), errors=fields)

    @app.exception_handler(bodies.BodyTooLarge)
    async def _too_large(_: fastapi.Request, error: bodies.BodyTooLarge) -> responses.JSONResponse:
        return _error_response(413, "PayloadTooLarge", str(error))

    @app.exception_handler(uploads.UploadsBusy)
    async def _busy(_: fastapi.Request, error: uploads.UploadsBusy) -> responses.JSONResponse:
        headers = {"Retry-After": str(error.retry_after)}
        return _error_response(503, "UploadCapacity", str(error), headers=headers)

    @app.exception_handler(uploads.TooManyUploads)
    async def _too_many_uploads(
        _: fastapi.Request, error: uploads.TooManyUploads
    ) -> responses.JSONResponse:
        headers = {"Retry-After": str(error.retry_after)}
        return _error_response(429, "TooManyUploads", str(error), headers=headers)

    @app.exception_handler(storage.StorageError)
    async def _storage(_: fastapi.Request, error: storage.StorageError) -> responses.JSONResponse:
        logger.warning("upload failed: %s", error)
        return _error_response(502, "StorageError", "the upload could not be stored; retry")

    @app.exception_handler(jobs.JobNotFound)
    async def _not_found(_: fastapi.Request, error: jobs.JobNotFound) -> responses.JSONResponse:
        return _error_response(404, "NotFound", f"no job {error.args[0]!r} for this API key")

    @app.exception_handler(jobs.IdempotencyConflict)
    async def _conflict(
        _: fastapi.Request, error: jobs.IdempotencyConflict
    ) -> responses.JSONResponse:
        return _error_response(409, "IdempotencyConflict", str(error))

    @app.exception_handler(jobs.BadCursor)
    async def _cursor(_: fastapi.Request, error: jobs.BadCursor) -> responses.JSONResponse:
        message = f"continue: {error}"
        fields = [{"field": "continue", "message": str(error)}]
        return _error_response(422, "InvalidRequest", message, errors=fields)

    @app.exception_handler(jobs.CursorExpired)
    async def _expired(_: fastapi.Request, error: jobs.CursorExpired) -> responses.JSONResponse:
        message = "continue: the token has expired; list again from the first page"
        fields = [{"field": "continue", "message": "has expired"}]
        return _error_response(410, "ContinueExpired", message, errors=fields)

    @app.exception_handler(jobs.QuotaExceeded)
    async def _quota(_: fastapi.Request, error: jobs.QuotaExceeded) -> responses.JSONResponse:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        return _error_response(429, "QuotaExceeded", str(error), headers=headers)

    @app.exception_handler(kube.KubeError)
    async def _kube_error(_: fastapi.Request, error: kube.KubeError) -> responses.JSONResponse:
        logger.warning("Kubernetes API error: %s", error)
        if error.status == 0:
            return _error_response(503, "KubernetesUnavailable", "the cluster did not answer")
        if error.status == 422:
            return _error_response(422, "InvalidSpec", error.message)
        return _error_response(502, "KubernetesError", f"the cluster refused: {error.reason}")

    @app.exception_handler(pydantic.ValidationError)
    async def _unreadable(
        _: fastapi.Request, error: pydantic.ValidationError
    ) -> responses.JSONResponse:
        # A CompositionJob in the cluster that the models refuse (written by something else).
        logger.warning("unreadable CompositionJob: %s", error)
        return _error_response(502, "UnreadableJob", "the job's object in the cluster is invalid")

    @app.exception_handler(starlette_exceptions.HTTPException)
    async def _http_error(
        _: fastapi.Request, error: starlette_exceptions.HTTPException
    ) -> responses.JSONResponse:
        phrase = http.HTTPStatus(error.status_code).phrase
        return _error_response(
            error.status_code,
            phrase.replace(" ", ""),
            str(error.detail),
            headers=dict(error.headers or {}),
        )


class _MetricsMiddleware:
    """Counts and times every HTTP request by route template (not by raw path)."""

    def __init__(self, app: Any, metrics_: metrics.Metrics) -> None:
        self.app = app
        self.metrics = metrics_

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route=route, method=scope["method"], code=status).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": views.ErrorBody, "description": description}
    for code, description in {
        401: "No API key, or not a valid one.",
        404: "No such job for this API key.",
        413: "The body or a file is over its size limit.",
        422: "The request is invalid (each field named), or the job failed because of its input.",
        429: "Rate limited: see Retry-After.",
    }.items()
}

_GENERATE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": translate.GenerateRequest.model_json_schema()},
        MULTIPART: {
            "schema": {
                "type": "object",
                "description": "Image files (or URL strings) in personImage, clothingImages "
                "(repeated) and placeImage; any optional parameter as a text field.",
                "properties": {
                    "personImage": {"type": "string", "format": "binary"},
                    "clothingImages": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "minItems": 1,
                        "maxItems": 8,
                    },
                    "placeImage": {"type": "string", "format": "binary"},
                    "prompt": {"type": "string"},
                    "seed": {"type": "integer"},
                    "steps": {"type": "integer"},
                    "format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
                    "callbackUrl": {"type": "string"},
                },
                "required": ["personImage", "clothingImages", "placeImage"],
            }
        },
    },
}


def _build_router() -> fastapi.APIRouter:
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
            **_ERRORS,
        },
        openapi_extra={"requestBody": _GENERATE_BODY},
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

    @router.get("/jobs/{job_id}", response_model=views.JobView, responses=_ERRORS)
    async def get_job(
        job_id: str, request: fastapi.Request, owner: str = fastapi.Depends(authenticate)
    ) -> responses.JSONResponse:
        svc = services(request)
        job = await svc.jobs.get(owner, job_id)
        view = views.job_view(
            job, image_url=svc.jobs.image_url(job), base=request.scope["root_path"]
        )
        return responses.JSONResponse(view.body())

    @router.get("/jobs", response_model=views.JobList, responses=_ERRORS)
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
        items = [views.job_view(j, image_url=svc.jobs.image_url(j), base=base) for j in page]
        return responses.JSONResponse(views.JobList(items=items, continue_=token).body())

    @router.delete("/jobs/{job_id}", response_model=views.Cancelled, responses=_ERRORS)
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
            return _error_response(503, "NotReady", "the Kubernetes API does not answer")
        if not svc.keys.loaded:
            # The details (path, entry, hash) go to the log and the metric, never to clients.
            return _error_response(503, "NotReady", "the API keys are not loaded")
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
        with svc.uploads.admit(owner):
            sink = svc.store.upload_sink(owner=owner, job_name=name)
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
        try:
            parsed = translate.parse_request(received.payload)
            body = svc.jobs.build(parsed, owner=owner, name=name, idempotency_key=idempotency_key)
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


def create_app(
    settings: settings_module.Settings,
    *,
    kube_client: kube.KubeClient | None = None,
    store: storage.Storage | None = None,
    keys: auth.KeyRing | None = None,
    callback_secret: bytes | None = None,
    resolver: netguard.Resolver = netguard.system_resolver,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> fastapi.FastAPI:
    """The gateway app. Anything left None is built from ``settings``."""
    kube_client = kube_client or kube.KubeClient.from_settings(settings)
    store = store or storage.Storage.from_settings(settings)
    metrics_ = metrics.Metrics()
    keys = keys or auth.KeyRing(
        settings.api_keys_file,
        on_reload_error=lambda _: metrics_.key_file_errors.inc(),
    )
    if callback_secret is None and settings.callback_secret_file is not None:
        callback_secret = read_secret(settings.callback_secret_file)
    policy = netguard.Policy(
        allow=netguard.parse_networks(settings.callback_allow_cidrs, field="callback_allow_cidrs"),
        allow_http=settings.callback_allow_http,
    )
    target = translate.JobTarget(
        namespace=settings.namespace,
        profile=settings.profile,
        output_bucket=settings.output_bucket,
        output_prefix=settings.output_prefix,
    )
    check_target(target)
    job_service = jobs.JobService(
        kube_client=kube_client,
        store=store,
        target=target,
        callback_policy=policy if callback_secret else None,
        poll_seconds=settings.job_poll_seconds,
        quotas=jobs.Quotas(
            max_outstanding=settings.max_outstanding_jobs_per_key,
            max_retained=settings.max_retained_jobs_per_key,
        ),
        ttl_seconds_after_finished=settings.job_ttl_seconds_after_finished,
        resolver=resolver,
        clock=clock,
        monotonic=monotonic,
    )
    sender = loop = None
    if callback_secret and settings.callbacks_enabled:
        sender = callbacks.Sender(
            policy=policy, timeout_seconds=settings.callback_timeout_seconds, resolver=resolver
        )
        loop = callbacks.CallbackLoop(
            kube_client=kube_client,
            store=store,
            sender=sender,
            secret=callback_secret,
            max_attempts=settings.callback_max_attempts,
            backoff_seconds=settings.callback_backoff_seconds,
            backoff_max_seconds=settings.callback_backoff_max_seconds,
            claim_seconds=settings.callback_timeout_seconds * 3 + 30,
            metrics_=metrics_,
            clock=clock,
        )
    local = ratelimit.RateLimiter(
        per_minute=settings.rate_limit_per_minute,
        burst=settings.rate_limit_burst,
        clock=monotonic,
    )
    limiter: ratelimit.RateLimiter | ratelimit.SharedRateLimiter = local
    if settings.rate_limit_redis_url:
        limiter = ratelimit.SharedRateLimiter(
            url=settings.rate_limit_redis_url,
            per_minute=settings.rate_limit_per_minute,
            burst=settings.rate_limit_burst,
            fallback=local,
            on_fallback=metrics_.rate_limit_fallbacks.inc,
        )
    svc = Services(
        settings=settings,
        kube=kube_client,
        store=store,
        keys=keys,
        limiter=limiter,
        uploads=uploads.Admission(
            budget_bytes=settings.upload_buffer_bytes,
            per_upload_bytes=storage.PART_BYTES + UPLOAD_CHUNK_ALLOWANCE,
            per_key=settings.max_concurrent_uploads_per_key,
        ),
        failures=ratelimit.RateLimiter(
            per_minute=settings.auth_failures_per_minute,
            burst=settings.auth_failure_burst,
            clock=monotonic,
        ),
        metrics=metrics_,
        jobs=job_service,
        callback_loop=loop,
        sender=sender,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: fastapi.FastAPI) -> AsyncIterator[None]:
        await svc.kube.start()
        task = None
        if svc.callback_loop is not None:
            task = asyncio.create_task(
                svc.callback_loop.run(interval=settings.callback_poll_seconds),
                name="compose-gateway-callbacks",
            )
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if svc.sender is not None:
                await svc.sender.close()
            await svc.kube.close()
            svc.keys.close()
            if isinstance(svc.limiter, ratelimit.SharedRateLimiter):
                await svc.limiter.close()

    app = fastapi.FastAPI(
        title="Image composition API",
        version="1",
        description="Compose a photorealistic image of a person wearing the given clothing in "
        "the given place. Each request becomes a CompositionJob in Kubernetes.",
        root_path=settings.root_path,
        lifespan=lifespan,
    )
    app.state.services = svc
    _install_error_handlers(app)
    app.include_router(_build_router())
    if settings.cors_origins:
        app.add_middleware(
            cors.CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "Idempotency-Key",
                "Prefer",
            ],
            expose_headers=["Location", "Retry-After", "Preference-Applied"],
            max_age=600,
        )
    app.add_middleware(_MetricsMiddleware, metrics_=metrics_)
    return app


def metrics_app(application: fastapi.FastAPI) -> Any:
    """The ASGI app of ``/metrics`` for ``application``'s registry, served on its own port
    (``__main__`` serves the same registry with prometheus-client's server)."""
    registry = application.state.services.metrics.registry
    return prometheus_client.make_asgi_app(registry=registry)


def check_target(target: translate.JobTarget) -> None:
    """Refuse settings that would make every job invalid (bad output bucket, prefix, profile)."""
    probe = translate.GenerateRequest.model_validate(
        {
            "personImage": "https://example.com/p.jpg",
            "clothingImages": ["https://example.com/c.jpg"],
            "placeImage": "https://example.com/b.jpg",
        }
    )
    try:
        translate.build_job(probe, name="gw-probe", owner="probe", target=target, request_hash="0")
    except translate.RequestError as error:
        raise ValueError(f"invalid gateway settings: {error}") from None


def read_secret(path: pathlib.Path) -> bytes | None:
    """The callback signing key from its mounted file; None (callbacks off) when absent."""
    try:
        data: bytes = path.read_bytes().strip()
    except OSError as error:
        logger.warning("callbacks disabled: cannot read %s: %s", path, error.strerror)
        return None
    return data or None
