"""A warm worker serving its assignments: accept, run with no model load, report like a Job pod;
bad input reported and the next job served; other instances' assignments left alone; a job taken
back stops and uploads nothing; the Lease renewed while it works.

One worker process serves every test of this module (it is started once: loading and warming
up is the slow part); each test makes its own jobs.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from compose_api import contract, kube, pools
from tests.inference.io.conftest import HttpServer
from tests.inference.pool.conftest import (
    LEASE_SECONDS,
    POD,
    POOL,
    Gate,
    Pool,
    WorkerProcess,
    permitted,
    start_worker,
    until,
    wait_ready,
    worker_requests,
)
from tests.support import control_plane as cp
from tests.support import s3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serving(
    control_plane: cp.ControlPlane,
    s3_server: s3.S3Server,
    tiny_profile: dict[str, Any],
    https_inputs: HttpServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pool, WorkerProcess]]:
    namespace = f"pool-serving-{uuid.uuid4().hex[:6]}"
    pool, process = start_worker(
        control_plane,
        s3_server,
        tiny_profile,
        https_inputs,
        tmp_path_factory.mktemp("serving"),
        namespace,
    )
    try:
        wait_ready(process)
        yield pool, process
    finally:
        process.stop()
        control_plane.delete_namespace(namespace)


@pytest.fixture
def pool(serving: tuple[Pool, WorkerProcess]) -> Pool:
    return serving[0]


@pytest.fixture
def worker(serving: tuple[Pool, WorkerProcess]) -> WorkerProcess:
    return serving[1]


@pytest_asyncio.fixture
async def client(pool: Pool) -> AsyncIterator[kube.Client]:
    async with pool.client() as opened:
        yield opened


async def instance_of(pool: Pool, client: kube.Client) -> str:
    lease = await pool.lease(client)
    assert lease is not None
    holder = lease["spec"]["holderIdentity"]
    pod, _, instance = holder.partition("/")
    assert pod == POD and instance
    return str(holder)


async def test_ready_worker_holds_a_fresh_lease_it_renews(
    pool: Pool, worker: WorkerProcess, client: kube.Client
) -> None:
    lease = await pool.lease(client)
    assert lease is not None
    meta, spec = lease["metadata"], lease["spec"]
    assert meta["labels"] == {pools.POOL_LABEL: POOL}
    assert meta["annotations"][pools.STATE_ANNOTATION] == pools.STATE_READY
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": POD, "uid": pool.pod_uid}
    ]
    assert spec["leaseDurationSeconds"] == LEASE_SECONDS
    first = pools.parse_time(spec["renewTime"])
    assert first is not None

    async def renewed() -> Any:
        again = await pool.lease(client)
        later = pools.parse_time((again or {}).get("spec", {}).get("renewTime"))
        return later is not None and later > first

    # Renewed every leaseSeconds / 3: within one lease duration it has moved on.
    await until(renewed, timeout=LEASE_SECONDS, what="renewTime to advance")
    assert worker.probe("/readyz")[0] == 200
    assert worker.probe("/healthz")[0] == 200
    # The warm-up ran before the Lease was made, and the models were loaded once.
    log = worker.log()
    assert log.index("loaded and warmed up") < log.index("ready: Lease")


async def test_jobs_are_accepted_run_warm_and_reported(
    pool: Pool, worker: WorkerProcess, client: kube.Client, photos: dict[str, bytes]
) -> None:
    instance = await instance_of(pool, client)
    person = pool.put("person.png", photos["person"])
    shirt = pool.put("shirt.png", photos["shirt"])
    place = pool.put("place.png", photos["place"])
    for seed in (11, 12):
        job = await pool.create_job(client, person=person, clothing=[shirt], place=place)
        assignment = await pool.assign(client, job, instance, seed=seed)
        report = await pool.final_report(client, job)

        assert report["worker"] == POD
        assert report["workerInstance"] == instance
        assert report["attempt"] == 0
        assert report["nodeName"] == "system-0"
        assert (report["exitCode"], report["reason"]) == (0, "Completed")
        assert report["message"].startswith("composed 64x64 png")
        assert report["acceptedAt"] <= report["finishedAt"]
        # One result object, at the job's one key, its digest the one reported.
        key = f"{assignment.output_key_prefix}result.png"
        assert key in pool.result_keys()
        body = pool.s3.client().get_object(Bucket=pool.results, Key=key)["Body"].read()
        result = report["result"]
        assert result["s3Uri"] == f"s3://{pool.results}/{key}"
        assert result["sha256"] == hashlib.sha256(body).hexdigest()
        assert (result["seed"], result["width"], result["height"]) == (seed, 64, 64)
        # Warm: no load stage, the other stages timed as a Job pod's.
        timings = report["timings"]
        assert "modelLoad" not in timings
        for stage in ("fetch", "faceAnalysis", "inference", "postprocess", "upload", "total"):
            assert timings[stage] >= 0, stage
        # The termination message a Job pod would leave holds the same fields.
        message = contract.TerminationMessage.model_validate(report)
        assert message.exit_code == 0 and message.result is not None
    # Loaded once, at the start (the warm-up), never for a job.
    assert worker.log().count("loaded and warmed up") == 1


async def test_a_repeated_job_is_reused_and_generates_nothing(
    pool: Pool, worker: WorkerProcess, client: kube.Client, photos: dict[str, bytes]
) -> None:
    """The same inputs (other objects, the same bytes), parameters and seed as an earlier job:
    the worker copies that job's result (``compose_inference.reuse``) and says so in its
    report; a job that opts out generates."""
    instance = await instance_of(pool, client)
    shirt = pool.put("shirt.png", photos["shirt"])
    place = pool.put("place.png", photos["place"])
    first = await pool.create_job(
        client, person=pool.put("person.png", photos["person"]), clothing=[shirt], place=place
    )
    await pool.assign(client, first, instance, seed=31)
    report = await pool.final_report(client, first)
    assert report["message"].startswith("composed 64x64 png"), report
    again = await pool.create_job(
        client, person=pool.put("again/person.png", photos["person"]), clothing=[shirt], place=place
    )
    assignment = await pool.assign(client, again, instance, seed=31)
    reused = await pool.final_report(client, again)

    meta = first["metadata"]
    source = {"namespace": pool.namespace, "name": meta["name"], "uid": meta["uid"]}
    assert reused["exitCode"] == 0
    assert reused["message"].startswith(
        f"reused the 64x64 png result of {pool.namespace}/{meta['name']}"
    )
    assert reused["result"]["reusedFrom"] == source
    assert reused["result"]["sha256"] == report["result"]["sha256"]
    key = f"{assignment.output_key_prefix}result.png"
    assert reused["result"]["s3Uri"] == f"s3://{pool.results}/{key}"
    body = pool.s3.client().get_object(Bucket=pool.results, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == report["result"]["sha256"]
    timings = reused["timings"]
    assert "reuse" in timings and "fetch" in timings
    assert not {"faceAnalysis", "modelLoad", "inference", "upload"} & set(timings)

    out = await pool.create_job(
        client,
        person=pool.put("out/person.png", photos["person"]),
        clothing=[shirt],
        place=place,
        reuse=False,
    )
    await pool.assign(client, out, instance, seed=31)
    generated = await pool.final_report(client, out)
    assert generated["message"].startswith("composed 64x64 png")
    assert "reusedFrom" not in generated["result"] and generated["timings"]["inference"] > 0


async def test_bad_input_is_reported_and_the_next_job_is_served(
    pool: Pool, client: kube.Client, photos: dict[str, bytes]
) -> None:
    instance = await instance_of(pool, client)
    faceless = pool.put("faceless.png", photos["faceless"])
    shirt = pool.put("shirt.png", photos["shirt"])
    place = pool.put("place.png", photos["place"])
    before = pool.result_keys()
    bad = await pool.create_job(client, person=faceless, clothing=[shirt], place=place)
    await pool.assign(client, bad, instance)
    report = await pool.final_report(client, bad)
    assert (report["exitCode"], report["reason"]) == (int(contract.ExitCode.NO_FACE), "NoFaceFound")
    assert "spec.inputs.person.uri: no face" in report["message"]
    assert "result" not in report
    assert pool.result_keys() == before

    missing = await pool.create_job(
        client, person=f"s3://{pool.inputs}/no-such-photo.png", clothing=[shirt], place=place
    )
    await pool.assign(client, missing, instance)
    report = await pool.final_report(client, missing)
    assert report["exitCode"] == int(contract.ExitCode.INPUT_UNAVAILABLE)

    person = pool.put("person.png", photos["person"])
    good = await pool.create_job(client, person=person, clothing=[shirt], place=place)
    await pool.assign(client, good, instance)
    assert (await pool.final_report(client, good))["exitCode"] == 0


async def test_assignments_to_other_instances_are_never_accepted(
    pool: Pool, worker: WorkerProcess, client: kube.Client, photos: dict[str, bytes]
) -> None:
    instance = await instance_of(pool, client)
    person = pool.put("person.png", photos["person"])
    shirt = pool.put("shirt.png", photos["shirt"])
    place = pool.put("place.png", photos["place"])
    # An earlier container of the same pod (another instance), assigned first.
    stale = await pool.create_job(client, person=person, clothing=[shirt], place=place)
    await pool.assign(client, stale, f"{POD}/an-earlier-instance")
    mine = await pool.create_job(client, person=person, clothing=[shirt], place=place)
    await pool.assign(client, mine, instance)
    assert (await pool.final_report(client, mine))["exitCode"] == 0
    # The worker was idle with the stale assignment in its watch the whole time.
    assert await pool.report(client, stale) is None
    assert stale["metadata"]["name"] not in worker.log()


async def test_a_job_taken_back_stops_and_uploads_nothing(
    pool: Pool, worker: WorkerProcess, client: kube.Client, photos: dict[str, bytes]
) -> None:
    instance = await instance_of(pool, client)
    gate = Gate(pool.http, f"/{uuid.uuid4().hex}/person.png", photos["person"])
    shirt = pool.put("shirt.png", photos["shirt"])
    place = pool.put("place.png", photos["place"])
    before = pool.result_keys()
    job = await pool.create_job(client, person=gate.url, clothing=[shirt], place=place)
    name = job["metadata"]["name"]
    await pool.assign(client, job, instance)
    # Accepted, and held in its fetch stage.
    accepted = await until(lambda: pool.report(client, job), what="the accept")
    assert "finishedAt" not in accepted
    await until(_is_set(gate), what="the input request")

    await pool.take_back(client, job)
    worker.wait_for_log(f"{name}: taken back")
    gate.opened.set()
    worker.wait_for_log(f"{name}: stopped, nothing uploaded")
    assert pool.result_keys() == before
    report = await pool.report(client, job)
    assert report is not None and "finishedAt" not in report  # only the accept
    assert not re.search(rf"{name}: (done|failed|reported)", worker.log())

    # Idle again; the job handed back to it (its next attempt) is accepted and served.
    await pool.assign(client, job, instance, attempt=1)
    report = await pool.final_report(client, job)
    assert (report["attempt"], report["exitCode"]) == (1, 0)
    assert len(pool.result_keys()) == len(before) + 1


async def test_a_job_deleted_mid_run_stops_and_uploads_nothing(
    pool: Pool, worker: WorkerProcess, client: kube.Client, photos: dict[str, bytes]
) -> None:
    """Deleted while a finalizer holds it (deletionTimestamp set, still assigned): stopped all
    the same."""
    instance = await instance_of(pool, client)
    gate = Gate(pool.http, f"/{uuid.uuid4().hex}/person.png", photos["person"])
    shirt = pool.put("shirt.png", photos["shirt"])
    place = pool.put("place.png", photos["place"])
    before = pool.result_keys()
    job = await pool.create_job(
        client, person=gate.url, clothing=[shirt], place=place, finalizers=["test.example/hold"]
    )
    name = job["metadata"]["name"]
    await pool.assign(client, job, instance)
    await until(_is_set(gate), what="the input request")
    await client.delete(pool.jobs_path(name))
    worker.wait_for_log(f"{name}: taken back")
    gate.opened.set()
    worker.wait_for_log(f"{name}: stopped, nothing uploaded")
    assert pool.result_keys() == before
    report = await pool.report(client, job)
    assert report is not None and "finishedAt" not in report
    await client.patch(pool.jobs_path(name), {"metadata": {"finalizers": None}})


def _is_set(gate: Gate) -> Any:
    async def check() -> bool:
        return gate.requested.is_set()

    return check


def test_every_request_of_the_worker_was_allowed(
    control_plane: cp.ControlPlane, pool: Pool
) -> None:
    """The worker's Role holds exactly WORKER_PERMISSIONS, and nothing it did was refused."""
    used, refused = worker_requests(control_plane, pool.namespace)
    assert refused == []
    # Everything but deleting the Lease (the worker has not been drained yet).
    assert used == permitted() - {("coordination.k8s.io", "leases", "delete")}
