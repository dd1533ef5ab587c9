"""Wiring of the HTTP gateway: settings in, one FastAPI app out.

``create_app`` is the only entry: ``__main__`` calls it with settings from the environment, and
tests call it with settings, an API client on the test cluster, and clocks of their own. It
builds the services (``routes.Services``), installs the routes (``routes``; the studio page's,
``studio``), the error handlers (``errors``), CORS and the metrics middleware, and runs the
callback loop in the app's lifespan.
``/metrics`` is a separate ASGI app (:func:`metrics_app`), served on its own port. Each API
request is a span of FastAPI's own when tracing is on (``compose_api.tracing``, set up by
``__main__``); the jobs it creates carry its traceparent (``jobs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import fastapi
import prometheus_client
from fastapi.middleware import cors

from compose_api import netguard
from compose_gateway import (
    auth,
    callbacks,
    errors,
    jobs,
    kubeapi,
    metrics,
    ratelimit,
    routes,
    storage,
    studio,
    translate,
    uploads,
)
from compose_gateway import (
    settings as settings_module,
)

logger = logging.getLogger(__name__)

# Beside its part buffer, an upload holds one received chunk and the parser's state.
UPLOAD_CHUNK_ALLOWANCE = 256 * 1024


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


def create_app(
    settings: settings_module.Settings,
    *,
    kube_client: kubeapi.KubeClient | None = None,
    store: storage.Storage | None = None,
    keys: auth.KeyRing | None = None,
    callback_secret: bytes | None = None,
    resolver: netguard.Resolver = netguard.system_resolver,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> fastapi.FastAPI:
    """The gateway app. Anything left None is built from ``settings``."""
    kube_client = kube_client or kubeapi.KubeClient.from_settings(settings)
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
        default_pool=settings.default_pool,
        pools=frozenset(settings.pools),
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
    svc = routes.Services(
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
        # FastAPI's own request spans (the trace's root, or a child of the caller's traceparent
        # header) when compose_api.tracing installed a provider; no FastAPI metrics or logs
        # (Prometheus has the metrics), no spans for its internal steps, none for the probes
        # and the studio's files.
        telemetry={
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
            "exclude": untraced,
        },
    )
    app.state.services = svc
    errors.install(app)
    app.include_router(routes.build_router())
    if settings.studio_enabled:
        app.include_router(
            studio.build_router(
                image_sources=store.result_sources(), max_upload_bytes=settings.max_upload_bytes
            )
        )
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


_UNTRACED = re.compile(r"/(healthz|readyz)$|/studio(/|$)")


def untraced(scope: Any) -> bool:
    """Requests FastAPI makes no span for: the probes and the studio page's files."""
    return bool(_UNTRACED.search(str(scope.get("path") or "")))


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
