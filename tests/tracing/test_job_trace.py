"""A job's spans form one trace, from the gateway's request to each stage of its run.

Everything is real and runs as its own process: the ``compose-gateway`` (with the chart's gateway
Role), the ``compose-operator`` (with the chart's RBAC), the test control plane, ``compose worker``
processes for the pool's pods (:class:`~tests.support.worker_kubelet.WorkerKubelet`), the inference
process of a Job's pod (:class:`benchmarks.pool_bench.JobKubelet`), S3 (moto) and an OpenTelemetry
Collector built from source (``tests/support/otel_collector.py``) whose file exporter the test
reads. Each process exports over OTLP/HTTP because its environment says so: the gateway and the
operator get ``OTEL_EXPORTER_OTLP_ENDPOINT``, and the pods get it from the operator.

Four jobs, one trace each:

- through the gateway, with the client's own ``traceparent`` header: client → ``POST /generate``
  (gateway) → ``reconcile`` (operator) → ``assign worker`` → ``run`` (worker) → its stages;
- created directly (as ``kubectl apply`` does) with the annotation: the annotation's span →
  ``reconcile`` → ``assign worker`` → ``run`` → stages;
- the same on a Job instead of a pool: ``reconcile`` → ``create Job`` → ``run`` (the pod, which
  got ``TRACEPARENT``) → stages, the model load among them;
- created without the annotation: the operator's and the worker's spans in the trace whose id is
  the job's uid.
"""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from benchmarks.pool_bench import JobKubelet
from compose_api import kube, models, tracing
from compose_api import pools as protocol
from tests.inference.io.conftest import encode
from tests.operator.cluster.conftest import running_operator
from tests.support import control_plane as cp
from tests.support import otel_collector, s3
from tests.support.gateway_process import running_gateway
from tests.support.worker_kubelet import WorkerKubelet, worker_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

Obj = dict[str, Any]
POOL = "warm"
PROFILE = "tiny-gpu"
OWNER = "alice"
# What a run of the tiny profile on a warm worker goes through (no load: it is warm), and what a
# Job's pod adds (it loads the models first) and leaves out (no accept, no report).
WORKER_STEPS = {"accept", "check", "fetch", "validate", "face", "generate", "encode", "upload",
                "report"}  # fmt: skip
POD_STEPS = WORKER_STEPS - {"accept", "report"} | {"load"}


def _client_traceparent() -> tuple[str, str, str]:
    """A caller's own trace: (traceparent, trace id, its span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@pytest.fixture(scope="module")
def profiles_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The smoke profile's tiny models (CPU, 64x64, 2 steps), placed as a GPU profile."""
    from compose_inference import tiny

    root = tmp_path_factory.mktemp("tiny-models")
    tiny.build_tiny_models(root)
    profile = tiny.smoke_profile(root).model_dump(mode="json", by_alias=True, exclude_none=True)
    profile["name"] = PROFILE
    profile["resources"] = {"gpu": 1, "cpu": "1", "memory": "2Gi", "ephemeralStorage": None}
    profile["placement"] = {"instanceTypes": ["g5.xlarge", "g5.2xlarge"]}
    path = root / "profiles.yaml"
    path.write_text(yaml.safe_dump([profile]))
    return path


@pytest.fixture
def gateway(
    control_plane: cp.ControlPlane,
    namespace: str,
    collector: otel_collector.Collector,
    s3_server: s3.S3Server,
    tmp_path: pathlib.Path,
) -> Iterator[tuple[str, str, str]]:
    """A ``compose-gateway`` process: (base URL, an API key, the inputs bucket)."""
    inputs = s3_server.new_bucket("inputs")
    settings = {
        **s3_server.env(),
        **collector.env(),
        "COMPOSE_GATEWAY_JOB_POLL_SECONDS": "0.2",
        "COMPOSE_GATEWAY_INPUTS_BUCKET": inputs,
        "COMPOSE_GATEWAY_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "COMPOSE_GATEWAY_AWS_REGION": s3.REGION,
        "COMPOSE_GATEWAY_PROFILE": PROFILE,
        "COMPOSE_GATEWAY_DEFAULT_POOL": POOL,
    }
    with running_gateway(
        control_plane, namespace, tmp_path / "gateway", owner=OWNER, settings=settings
    ) as (url, key):
        yield url, key, inputs


class Scene:
    def __init__(self, client: kube.Client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def path(self, plural: str, name: str | None = None) -> str:
        return kube.path(models.API_VERSION, plural, namespace=self.namespace, name=name)

    async def create_job(
        self, name: str, inputs: dict[str, str], *, traceparent: str | None, pool: bool
    ) -> Obj:
        """A job as a user creates it with ``kubectl apply`` (the annotation, when given)."""
        meta: Obj = {"name": name}
        if traceparent is not None:
            meta["annotations"] = {tracing.TRACEPARENT_ANNOTATION: traceparent}
        body = {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": meta,
            "spec": {
                "profile": PROFILE,
                "inputs": {
                    "person": {"uri": inputs["person"]},
                    "clothing": [{"uri": inputs["shirt"], "category": "upper"}],
                    "place": {"uri": inputs["place"]},
                },
                "execution": {"pool": POOL} if pool else {},
            },
        }
        return await self.client.create(self.path(models.PLURAL), body)

    async def succeeded(self, name: str, *, timeout: float = 180) -> Obj:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = await self.client.get(self.path(models.PLURAL, name))
            phase = (job.get("status") or {}).get("phase")
            if phase in models.TERMINAL_PHASES:
                assert phase == "Succeeded", job["status"]
                return job
            await asyncio.sleep(0.2)
        raise AssertionError(f"{name} did not finish in {timeout} s")


@pytest_asyncio.fixture
async def scene(
    control_plane: cp.ControlPlane,
    namespace: str,
    collector: otel_collector.Collector,
    s3_server: s3.S3Server,
    profiles_path: pathlib.Path,
    tmp_path: pathlib.Path,
) -> AsyncIterator[Scene]:
    """The traced operator, the pool's workers and the Jobs' pods, running."""
    results = s3_server.new_bucket("results")
    settings = {
        "COMPOSE_OUTPUT_BUCKET": results,
        "COMPOSE_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "COMPOSE_STATUS_COALESCE_SECONDS": "1",
        **collector.env(),
    }
    with running_operator(control_plane, namespace, profiles_path, tmp_path, settings) as operator:
        connection = kube.Connection.from_kubeconfig(control_plane.kubeconfig)
        async with kube.Client(connection) as client:
            accounts, _ = await client.list(kube.path("v1", "serviceaccounts", namespace=namespace))
        worker_account = next(
            a["metadata"]["name"] for a in accounts if a["metadata"]["name"].endswith("-worker")
        )
        kubeconfig = control_plane.service_account_kubeconfig(
            namespace, worker_account, tmp_path / "worker.kubeconfig"
        )
        # What a kubelet mounts or injects; the OTEL_* settings come from the pods' own specs.
        node = {
            **s3_server.env(),
            "COMPOSE_MODEL_CACHE": str(tmp_path / "node-cache"),
            "HF_HOME": str(tmp_path / "node-cache" / "huggingface"),
            "HOME": str(tmp_path),
            "OMP_NUM_THREADS": "1",
        }
        logs = tmp_path / "pods"
        logs.mkdir()
        async with kube.Client(connection) as client:
            workers = WorkerKubelet(
                client,
                namespace,
                POOL,
                command=worker_command,
                env={**node, "KUBECONFIG": str(kubeconfig)},
                logs=logs,
            )
            pods = JobKubelet(client, node, logs, namespace=namespace)
            try:
                async with workers, pods:
                    yield Scene(client, namespace)
            except BaseException:
                print(operator.log()[-20000:])
                for log in sorted(logs.iterdir()):
                    print(f"--- {log.name}\n{log.read_text(errors='replace')[-6000:]}")
                raise


def _trace(
    collector: otel_collector.Collector, trace_id: str, wanted: set[str], *, timeout: float = 60
) -> list[otel_collector.Span]:
    """The trace's spans, once the names in ``wanted`` have all arrived."""
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in collector.spans() if s.trace_id == trace_id]
        if wanted <= {s.name for s in found}:
            time.sleep(0.5)  # the last batches of the same processes
            return [s for s in collector.spans() if s.trace_id == trace_id]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"trace {trace_id}: {sorted(wanted - {s.name for s in found})} missing; "
                f"have {sorted((s.service, s.name) for s in found)}\n"
                + collector.log.read_text()[-3000:]
            )
        time.sleep(0.2)


def _one(spans: list[otel_collector.Span], **fields: Any) -> otel_collector.Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in fields.items())]
    assert len(found) == 1, (fields, [(s.service, s.name, s.parent_id) for s in spans])
    return found[0]


def _children(
    spans: list[otel_collector.Span], parent: otel_collector.Span
) -> list[otel_collector.Span]:
    return [s for s in spans if s.parent_id == parent.span_id]


def _check_operator_and_run(
    spans: list[otel_collector.Span],
    *,
    parent_id: str,
    job: str,
    handed_by: str,
    service: str,
    steps: set[str],
) -> otel_collector.Span:
    """The operator's reconciles are children of ``parent_id``; one of them hands the job on
    (``handed_by``: ``assign worker`` or ``create Job``), whose span is the parent of the run,
    whose children are its ``steps``. Returns the run's span."""
    reconciles = [s for s in spans if s.service == "compose-operator" and s.name == "reconcile"]
    assert reconciles, spans
    for span in reconciles:
        assert span.parent_id == parent_id, span
        assert span.kind == otel_collector.SERVER_KIND
        assert span.attributes["compose.job"] == job
    handed = _one(spans, service="compose-operator", name=handed_by)
    assert handed.parent_id in {s.span_id for s in reconciles}
    run = _one(spans, service=service, name="run")
    assert run.parent_id == handed.span_id
    assert run.kind == otel_collector.SERVER_KIND
    assert run.attributes["compose.job"] == job
    assert not run.error
    done = {s.name for s in _children(spans, run)}
    assert steps <= done, (steps - done, done)
    for step in _children(spans, run):
        assert step.service == service
    # One trace, connected: every span's parent is a span of the trace, but the first one's.
    ids = {s.span_id for s in spans}
    assert {s.parent_id for s in spans} - ids == {parent_id}, spans
    return run


async def test_a_jobs_spans_form_one_trace_from_the_request_to_each_stage(
    scene: Scene,
    gateway: tuple[str, str, str],
    collector: otel_collector.Collector,
    s3_server: s3.S3Server,
) -> None:
    url, key, inputs_bucket = gateway
    store = s3_server.client()
    from PIL import Image
    from skimage import data

    inputs = {}
    for name, picture in (("person", data.astronaut()), ("shirt", data.coffee()),
                          ("place", data.rocket())):  # fmt: skip
        keyname = f"uploads/{OWNER}/photos/{name}.png"  # the key's own uploads
        store.put_object(
            Bucket=inputs_bucket, Key=keyname, Body=encode(Image.fromarray(picture), "PNG")
        )
        inputs[name] = f"s3://{inputs_bucket}/{keyname}"
    pool = {
        "apiVersion": models.API_VERSION,
        "kind": protocol.KIND,
        "metadata": {"name": POOL},
        "spec": {"profile": PROFILE, "minReplicas": 1, "maxReplicas": 1, "leaseSeconds": 4},
    }
    await scene.client.create(scene.path(protocol.PLURAL), pool)

    # 1. Through the gateway, in the caller's trace.
    header, client_trace, client_span = _client_traceparent()
    async with httpx.AsyncClient(base_url=url, timeout=240) as http:
        answer = await http.post(
            "/generate",
            params={"wait": "200"},
            headers={"Authorization": f"Bearer {key}", "traceparent": header},
            json={
                "personImage": inputs["person"],
                "clothingImages": [inputs["shirt"]],
                "placeImage": inputs["place"],
            },
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "success"
    via_gateway = answer.headers["Location"].rsplit("/", 1)[-1]
    spans = _trace(collector, client_trace, {"POST /generate", "assign worker", "report"})
    request = _one(spans, service="compose-gateway", kind=otel_collector.SERVER_KIND)
    assert request.name == "POST /generate" and request.parent_id == client_span
    job = await scene.client.get(scene.path(models.PLURAL, via_gateway))
    annotation = job["metadata"]["annotations"][tracing.TRACEPARENT_ANNOTATION]
    assert annotation == f"00-{client_trace}-{request.span_id}-01"
    _check_operator_and_run(
        [s for s in spans if s is not request],
        parent_id=request.span_id,
        job=via_gateway,
        handed_by="assign worker",
        service="compose-worker",
        steps=WORKER_STEPS,
    )
    assert {s.parent_id for s in spans} - {s.span_id for s in spans} == {client_span}

    # 2. Created as `kubectl apply` creates it, carrying the annotation: it joins that trace.
    annotated, trace_id, span_id = _client_traceparent()
    await scene.create_job("applied", inputs, traceparent=annotated, pool=True)
    await scene.succeeded("applied")
    spans = _trace(collector, trace_id, {"reconcile", "assign worker", "report"})
    _check_operator_and_run(
        spans,
        parent_id=span_id,
        job="applied",
        handed_by="assign worker",
        service="compose-worker",
        steps=WORKER_STEPS,
    )

    # 3. On a Job: the pod's run is a child of the operator's `create Job`, through TRACEPARENT.
    annotated, trace_id, span_id = _client_traceparent()
    await scene.create_job("on-a-job", inputs, traceparent=annotated, pool=False)
    await scene.succeeded("on-a-job")
    spans = _trace(collector, trace_id, {"reconcile", "create Job", "upload"})
    run = _check_operator_and_run(
        spans,
        parent_id=span_id,
        job="on-a-job",
        handed_by="create Job",
        service="compose-inference",
        steps=POD_STEPS,
    )
    assert run.attributes["compose.attempt"] == 0

    # 4. No annotation: the job's own trace, whose id is its uid.
    created = await scene.create_job("untraced", inputs, traceparent=None, pool=True)
    await scene.succeeded("untraced")
    uid = created["metadata"]["uid"]
    spans = _trace(collector, uuid.UUID(uid).hex, {"reconcile", "assign worker", "report"})
    parents = {s.parent_id for s in spans if s.name == "reconcile"}
    assert len(parents) == 1, spans  # every reconcile under the one parent the uid names
    (root,) = parents
    assert root not in {s.span_id for s in spans}
    _check_operator_and_run(
        spans,
        parent_id=root,
        job="untraced",
        handed_by="assign worker",
        service="compose-worker",
        steps=WORKER_STEPS,
    )
    # The four traces are apart: no span of one job landed in another's.
    jobs_by_trace: dict[str, set[str]] = {}
    for span in collector.spans():
        if "compose.job" in span.attributes:
            jobs_by_trace.setdefault(span.trace_id, set()).add(span.attributes["compose.job"])
    assert sorted(jobs_by_trace.values(), key=sorted) == sorted(
        [{via_gateway}, {"applied"}, {"on-a-job"}, {"untraced"}], key=sorted
    ), jobs_by_trace
