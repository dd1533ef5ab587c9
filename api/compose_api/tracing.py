"""OpenTelemetry tracing, shared by the gateway, the operator and the inference image.

A job's trace: the gateway's request span (FastAPI's own server span), the operator's reconciles
that act on the job (their writes, the Job it creates, the worker it assigns), the run in the Job's
pod or on the pool worker, and one span per stage of the run. The context crosses process
boundaries as a W3C ``traceparent``:

- on the CompositionJob, in the annotation :data:`TRACEPARENT_ANNOTATION`: the gateway sets it on
  the jobs it creates, and a job created with ``kubectl apply`` that carries one joins the caller's
  trace. The operator's spans of a job are children of it; a job without a valid one gets a trace
  of its own whose id is the job's uid (:func:`job_context`), so all its spans still form one trace;
- to a Job's pod in the environment variable :data:`TRACEPARENT_ENV` (the OpenTelemetry
  convention), naming the operator's span that created the Job;
- to a pool worker in ``status.assignment.traceparent``, naming the operator's span that assigned
  the attempt.

Off unless an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): then :func:`configure` installs nothing and every span is
the OpenTelemetry API's no-op (and the operator skips its spans altogether, :func:`enabled`). On:
the SDK's tracer provider, a batch span processor and the OTLP/HTTP exporter, configured by the
standard ``OTEL_*`` variables (service name and resource attributes, sampler, timeouts,
compression, headers). This is the one module of the project that imports OpenTelemetry.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation import tracecontext

from compose_api import models

TRACEPARENT_ANNOTATION = f"{models.GROUP}/traceparent"
TRACEPARENT_ENV = "TRACEPARENT"
TRACEPARENT_MAX_LENGTH = 256

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
# What the operator hands on to the Job pods and pool workers it creates: the export settings
# that make sense in another pod. Not headers (they may carry credentials, and would be written
# into every Job's spec), not certificate paths (files of the operator's own container), not the
# service name (each component has its own).
FORWARDED_VARIABLES = (
    *ENDPOINT_VARIABLES,
    *PROTOCOL_VARIABLES,
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_BSP_SCHEDULE_DELAY",
)
HTTP_PROTOCOL = "http/protobuf"

Span = trace.Span
Context = otel_context.Context

_PROPAGATOR = tracecontext.TraceContextTextMapPropagator()
_TRACER = trace.get_tracer("nextunicorn-compose")
_INVALID = trace.INVALID_SPAN


class SettingsError(ValueError):
    """A bad OpenTelemetry setting; the message names the variable."""


def endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP endpoint that turns tracing on, or None (off): unset, ``OTEL_SDK_DISABLED=true``
    or ``OTEL_TRACES_EXPORTER=none``."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    for name in ENDPOINT_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def check(environ: Mapping[str, str] | None = None) -> None:
    """SettingsError naming the variable when tracing is on with settings this exporter cannot
    follow (another exporter or protocol, an endpoint that is not an http(s) URL)."""
    env = os.environ if environ is None else environ
    found = endpoint(env)
    if found is None:
        return
    exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter != "otlp":
        raise SettingsError(f"OTEL_TRACES_EXPORTER: {exporter!r}: only otlp (or none) is built in")
    for name in PROTOCOL_VARIABLES:
        protocol = env.get(name, "").strip()
        if protocol and protocol != HTTP_PROTOCOL:
            raise SettingsError(
                f"{name}: {protocol!r}: only {HTTP_PROTOCOL} is built in (a collector's port 4318)"
            )
    if not found.startswith(("http://", "https://")):
        name = next(n for n in ENDPOINT_VARIABLES if env.get(n, "").strip() == found)
        raise SettingsError(f"{name}: {found!r}: not an http:// or https:// URL")


def configure(service_name: str) -> bool:
    """Install the SDK's tracer provider exporting over OTLP/HTTP when an endpoint is set in the
    environment; returns whether tracing is on. ``OTEL_SERVICE_NAME`` (or ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``) wins over ``service_name``. SettingsError on settings this
    exporter cannot follow (:func:`check`). Called once, by each process's entry point."""
    check()
    if endpoint() is None:
        return False
    from opentelemetry.exporter.otlp.proto.http import trace_exporter
    from opentelemetry.sdk import resources
    from opentelemetry.sdk import trace as sdk_trace
    from opentelemetry.sdk.trace import export

    resource = resources.Resource.create()
    if str(resource.attributes.get(resources.SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(resources.Resource({resources.SERVICE_NAME: service_name}))
    provider = sdk_trace.TracerProvider(resource=resource)
    provider.add_span_processor(export.BatchSpanProcessor(trace_exporter.OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


def enabled() -> bool:
    """Whether a tracer provider that records spans is installed (:func:`configure`)."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def shutdown() -> None:
    """Export the spans still buffered and stop the provider (a process about to exit)."""
    stop = getattr(trace.get_tracer_provider(), "shutdown", None)
    if callable(stop):
        stop()


# -- spans ---------------------------------------------------------------------------------------


def span(
    name: str,
    *,
    parent: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
    entry: bool = False,
) -> contextlib.AbstractContextManager[Span]:
    """A span made current for the block; a child of ``parent`` when given, else of the current
    span. An exception leaving the block is recorded and sets the span's status to error.

    ``entry``: the span where a process takes over a job (the operator's reconcile, the pod's or
    the worker's run), of kind SERVER: the AWS X-Ray exporter makes such spans the segments of
    their service, and every other span a subsegment."""
    return _TRACER.start_as_current_span(
        name,
        context=parent,
        attributes=dict(attributes) if attributes else None,
        kind=trace.SpanKind.SERVER if entry else trace.SpanKind.INTERNAL,
    )


def current() -> Span:
    """The current span (a non-recording one outside any span)."""
    return trace.get_current_span()


@contextlib.contextmanager
def attached(parent: Context | None) -> Iterator[None]:
    """Make ``parent`` the current context for the block (None: leave it as it is)."""
    if parent is None:
        yield
        return
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


def fail(span_: Span, reason: str, message: str) -> None:
    """Mark ``span_`` failed with the job's reason (a run that ended in an error code without
    raising through the span)."""
    span_.set_attribute("compose.reason", reason)
    span_.set_status(trace.Status(trace.StatusCode.ERROR, f"{reason}: {message}"[:1024]))


# -- the W3C traceparent ---------------------------------------------------------------------------


def context_of(traceparent: str | None) -> Context | None:
    """The remote parent a W3C ``traceparent`` names; None when it is absent or not valid."""
    if not traceparent or len(traceparent) > TRACEPARENT_MAX_LENGTH:
        return None
    found = _PROPAGATOR.extract({"traceparent": traceparent.strip()})
    if not trace.get_current_span(found).get_span_context().is_valid:
        return None
    return found


def traceparent(span_: Span | None = None) -> str | None:
    """The ``traceparent`` of ``span_`` (default: the current span); None without a valid one."""
    carrier: dict[str, str] = {}
    chosen = span_ if span_ is not None else trace.get_current_span()
    if not chosen.get_span_context().is_valid:
        return None
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(chosen))
    return carrier.get("traceparent")


def uid_context(uid: str | None) -> Context | None:
    """The context of a job that came without a traceparent: its trace id is the job's uid (a
    UUID, 128 bits like a trace id) and its parent span id is derived from the uid, so every span
    of the job, in every process, lands in the one trace. No span of that id is exported: the
    job itself is the trace's root. None when ``uid`` is not a UUID."""
    try:
        trace_id = uuid.UUID(str(uid)).int
    except ValueError:
        return None
    span_id = int.from_bytes(hashlib.sha256(str(uid).encode()).digest()[:8], "big") or 1
    parent = trace.SpanContext(
        trace_id=trace_id,
        span_id=span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def job_context(annotations: Mapping[str, str] | None, uid: str | None) -> Context | None:
    """The parent of a job's spans: its annotation's traceparent, else :func:`uid_context`."""
    found = context_of((annotations or {}).get(TRACEPARENT_ANNOTATION))
    return found if found is not None else uid_context(uid)


def annotate(annotations: dict[str, str]) -> None:
    """Set :data:`TRACEPARENT_ANNOTATION` to the current span's traceparent (nothing when there is
    no valid current span, e.g. with tracing off)."""
    found = traceparent()
    if found is not None:
        annotations[TRACEPARENT_ANNOTATION] = found


def forwarded(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``OTEL_*`` export settings of this process to hand on to the pods it creates
    (:data:`FORWARDED_VARIABLES`); empty when tracing is off."""
    env = os.environ if environ is None else environ
    if endpoint(env) is None:
        return {}
    return {name: env[name] for name in FORWARDED_VARIABLES if env.get(name, "").strip()}
