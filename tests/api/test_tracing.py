"""compose_api.tracing: the W3C traceparent on jobs, the uid trace, and when tracing is on.

The SDK is never installed in this process (a global tracer provider would stay for the rest of
the session); what needs it runs in a subprocess, and the whole path is exercised with a real
collector in tests/tracing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from compose_api import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
UID = "0b9d4c1e-2f1a-4a57-9f0e-6c1d2e3f4a5b"


def _ids(context: tracing.Context | None) -> tuple[str, str, bool]:
    assert context is not None
    with tracing.attached(context):
        found = tracing.current().get_span_context()
    return f"{found.trace_id:032x}", f"{found.span_id:016x}", found.trace_flags.sampled


def test_a_traceparent_names_the_remote_parent() -> None:
    assert _ids(tracing.context_of(TRACEPARENT)) == (TRACE_ID, SPAN_ID, True)
    unsampled = tracing.context_of(f"00-{TRACE_ID}-{SPAN_ID}-00")
    assert _ids(unsampled) == (TRACE_ID, SPAN_ID, False)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-{SPAN_ID}-01",  # the all-zero trace id is invalid
        f"00-{TRACE_ID}-{'0' * 16}-01",  # so is the all-zero span id
        f"ff-{TRACE_ID}-{SPAN_ID}-01",  # version ff is forbidden
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",
        TRACEPARENT + "-" + "x" * 300,  # longer than any annotation we read
    ],
)
def test_an_invalid_traceparent_is_ignored(text: str | None) -> None:
    assert tracing.context_of(text) is None


def test_the_traceparent_of_the_current_span_round_trips() -> None:
    assert tracing.traceparent() is None  # no span: nothing to hand on
    with tracing.attached(tracing.context_of(TRACEPARENT)):
        assert tracing.traceparent() == TRACEPARENT
    assert tracing.traceparent() is None  # detached again


def test_annotate_sets_the_annotation_only_inside_a_span() -> None:
    annotations: dict[str, str] = {"other": "kept"}
    tracing.annotate(annotations)
    assert annotations == {"other": "kept"}
    with tracing.attached(tracing.context_of(TRACEPARENT)):
        tracing.annotate(annotations)
    assert annotations == {"other": "kept", tracing.TRACEPARENT_ANNOTATION: TRACEPARENT}
    assert tracing.TRACEPARENT_ANNOTATION == "compose.nextunicorn.dev/traceparent"


def test_a_job_without_a_traceparent_is_traced_under_its_uid() -> None:
    trace_id, span_id, sampled = _ids(tracing.uid_context(UID))
    assert trace_id == uuid.UUID(UID).hex
    assert sampled
    assert _ids(tracing.uid_context(UID))[1] == span_id  # the same parent in every process
    other = str(uuid.UUID(int=uuid.UUID(UID).int + 1))
    assert _ids(tracing.uid_context(other))[1] != span_id
    assert tracing.uid_context("not-a-uid") is None
    assert tracing.uid_context(None) is None


def test_job_context_prefers_the_annotation_and_falls_back_to_the_uid() -> None:
    annotated = {tracing.TRACEPARENT_ANNOTATION: TRACEPARENT}
    assert _ids(tracing.job_context(annotated, UID))[:2] == (TRACE_ID, SPAN_ID)
    broken = {tracing.TRACEPARENT_ANNOTATION: "not a traceparent"}
    assert _ids(tracing.job_context(broken, UID))[0] == uuid.UUID(UID).hex
    assert _ids(tracing.job_context(None, UID))[0] == uuid.UUID(UID).hex
    assert tracing.job_context({}, "") is None


def test_tracing_is_off_without_an_endpoint() -> None:
    assert tracing.endpoint({}) is None
    assert tracing.forwarded({"OTEL_TRACES_SAMPLER": "always_on"}) == {}
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert tracing.endpoint(on) == "http://collector:4318"
    traces_only = {**on, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/v1/traces"}
    assert tracing.endpoint(traces_only) == "http://traces:4318/v1/traces"
    assert tracing.endpoint({**on, "OTEL_SDK_DISABLED": "true"}) is None
    assert tracing.endpoint({**on, "OTEL_TRACES_EXPORTER": "none"}) is None
    assert not tracing.enabled()  # nothing installed in this process


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc'"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin'"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_settings_the_exporter_cannot_follow_are_refused_by_name(
    env: dict[str, str], named: str
) -> None:
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    with pytest.raises(tracing.SettingsError, match=named):
        tracing.check({**base, **env})
    tracing.check({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})  # off: nothing to refuse


def test_forwarded_hands_on_the_export_settings_and_nothing_private() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer secret",
        "OTEL_SERVICE_NAME": "compose-operator",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/otel/ca.pem",
        "COMPOSE_NAMESPACES": "studio",
    }
    assert tracing.forwarded(env) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod",
    }


_PROBE = """
import json
from compose_api import tracing
on = tracing.configure("probe-service")
found = {"on": on, "enabled": tracing.enabled()}
if on:
    from opentelemetry import trace
    found["service"] = trace.get_tracer_provider().resource.attributes["service.name"]
    with tracing.span("outer", entry=True) as outer:
        found["traceparent"] = tracing.traceparent()
        found["outer"] = tracing.traceparent(outer)
print(json.dumps(found))
"""


def _probe(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**clean, **env, "OTEL_BSP_SCHEDULE_DELAY": "60000", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_configure_installs_the_sdk_only_with_an_endpoint() -> None:
    assert _probe() == {"on": False, "enabled": False}
    # An endpoint nothing listens on: spans are made (and their export fails quietly later).
    found = _probe(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert found["on"] is True and found["enabled"] is True
    assert found["service"] == "probe-service"
    assert found["traceparent"] == found["outer"]
    version, trace_id, span_id, flags = str(found["traceparent"]).split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
    assert int(flags, 16) & 1  # sampled (the parent-based default samples a new trace)
    named = _probe(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_SERVICE_NAME="mine")
    assert named["service"] == "mine"  # the standard variable wins over the component's name
