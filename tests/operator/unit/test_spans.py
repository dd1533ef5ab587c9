"""compose_operator.spans: the trace context the operator hands to the processes it starts.

Stamping needs only a current span, so it is tested under a remote parent attached by hand (no
SDK in this process); the spans themselves are checked end to end with a real collector in
tests/tracing.
"""

from __future__ import annotations

import copy
import pathlib

import pytest

from compose_api import tracing
from compose_operator import builders, names, plan, pools, settings, spans, status
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_pool_plan import (
    OFFER,
    after,
    lease,
    only_write,
    pool_cj,
    report,
    seen,
)
from tests.operator.unit.test_pools import pool_view
from tests.operator.unit.test_status import NODES, at

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def config(tmp_path: pathlib.Path) -> settings.OperatorSettings:
    return make_settings(tmp_path)


def _env(manifest: dict[str, object]) -> dict[str, str]:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
    assert container["name"] == names.CONTAINER_NAME
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def test_a_new_job_hands_its_pod_the_current_span(config: settings.OperatorSettings) -> None:
    cj = make_cj()
    manifest = builders.build_job(cj, config.profiles["instantid-sdxl"], config, 0, 42)
    original = copy.deepcopy(manifest)
    create = plan.CreateJob(manifest)
    previous = cj.status
    assert spans.stamped(create, previous) is create  # no span: nothing to hand on
    with tracing.attached(tracing.context_of(TRACEPARENT)):
        found = spans.stamped(create, previous)
    assert isinstance(found, plan.CreateJob)
    env = _env(found.manifest)
    assert env[tracing.TRACEPARENT_ENV] == TRACEPARENT
    assert {k: v for k, v in env.items() if k != tracing.TRACEPARENT_ENV} == _env(original)
    assert manifest == original  # the planned manifest is left as it was
    without_env = copy.deepcopy(found.manifest)
    without_env["spec"]["template"]["spec"]["containers"][0]["env"].pop()
    assert without_env == original  # only the one variable was added


def test_a_new_assignment_carries_the_current_span(config: settings.OperatorSettings) -> None:
    cj = pool_cj()
    write = only_write(plan.plan(seen(cj, offer=OFFER, lease=lease()), at(1), config))
    with tracing.attached(tracing.context_of(TRACEPARENT)):
        found = spans.stamped(write, cj.status)
    assert isinstance(found, plan.WriteStatus)
    assert found.outcome.status.assignment is not None
    assert found.outcome.status.assignment.traceparent == TRACEPARENT
    assert found.conditional == write.conditional and found.event == write.event
    # The rest of the status is the plan's, so the patch differs only by the traceparent.
    stamped = found.outcome.status.model_dump()
    stamped["assignment"]["traceparent"] = None
    assert stamped == write.outcome.status.model_dump()
    patch = status.to_patch(found.outcome.status, cj.status)
    assert patch is not None and patch["assignment"]["traceparent"] == TRACEPARENT


def test_a_later_write_keeps_the_assignment_as_it_is(config: settings.OperatorSettings) -> None:
    cj = pool_cj()
    assigned = after(cj, plan.plan(seen(cj, offer=OFFER, lease=lease()), at(1), config))
    # The worker accepted: the write that makes the job Running carries the same assignment.
    running = only_write(
        plan.plan(
            seen(assigned, lease=lease(3), worker_report=report(4), nodes=NODES), at(5), config
        )
    )
    assert running.outcome.status.assignment == assigned.status.assignment
    with tracing.attached(tracing.context_of(TRACEPARENT)):
        assert spans.stamped(running, assigned.status) is running
        # The same attempt handed to another worker (its worker lost before accepting) is new.
        moved = assigned.status.model_copy(
            update={
                "assignment": assigned.status.assignment.model_copy(  # type: ignore[union-attr]
                    update={"worker_instance": "another/run-2"}
                )
            }
        )
        found = spans.stamped(running, moved)
    assert isinstance(found, plan.WriteStatus) and found is not running
    assert found.outcome.status.assignment is not None
    assert found.outcome.status.assignment.traceparent == TRACEPARENT


def test_with_tracing_off_the_operator_makes_no_span(config: settings.OperatorSettings) -> None:
    assert not tracing.enabled()
    cj = make_cj()
    manifest = builders.build_job(cj, config.profiles["instantid-sdxl"], config, 0, 42)
    decided = plan.Plan(actions=(plan.CreateJob(manifest),))
    body = {"metadata": {"name": "portrait", "uid": cj.metadata.uid}}
    with spans.reconcile(body, decided, cj.status) as opened:
        assert opened is None  # the shared null context, not a span
        assert tracing.traceparent() is None
    with spans.action(decided.actions[0], cj.status) as opened:
        assert opened is None


def test_the_pods_and_workers_get_the_operators_export_settings(tmp_path: pathlib.Path) -> None:
    config = make_settings(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector.observability:4318",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.5",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=secret",
        OTEL_SERVICE_NAME="compose-operator",
    )
    wanted = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.observability:4318",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
    }
    assert config.tracing_env == wanted
    profile = config.profiles["instantid-sdxl"]
    job = builders.build_job(make_cj(), profile, config, 0, 42)
    env = _env(job)
    assert {k: v for k, v in env.items() if k.startswith("OTEL_")} == {
        **wanted,
        "OTEL_SERVICE_NAME": "compose-inference",
    }
    deployment = pools.build_deployment(pool_view(), profile, config, replicas=1)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    worker_env = {e["name"]: e.get("value") for e in container["env"]}
    assert {k: v for k, v in worker_env.items() if k.startswith("OTEL_")} == {
        **wanted,
        "OTEL_SERVICE_NAME": "compose-worker",
    }
    # Off: not one variable more than before.
    off = make_settings(tmp_path)
    assert off.tracing_env == {}
    assert not [k for k in _env(builders.build_job(make_cj(), profile, off, 0, 42)) if "OTEL" in k]
