"""A worker's life around its jobs: drained by SIGTERM in the middle of a job (finished, reported,
Lease deleted, nothing new accepted) or by SIGINT when idle; a restarted container taking over
its pod's Lease; a model that cannot load; a job past its deadline."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from compose_api import contract, kube, pools
from compose_inference import fetching, modelstore, pool_worker, runner, upload
from tests.inference.io.conftest import HttpServer
from tests.inference.pool.conftest import (
    POD,
    SERVICE_ACCOUNT,
    Gate,
    Pool,
    WorkerProcess,
    free_port,
    permitted,
    start_worker,
    until,
    wait_ready,
    worker_requests,
)
from tests.support import control_plane as cp
from tests.support import s3

pytestmark = pytest.mark.slow


@pytest.fixture
def namespace(control_plane: cp.ControlPlane) -> Iterator[str]:
    name = f"pool-life-{uuid.uuid4().hex[:6]}"
    yield name
    control_plane.delete_namespace(name)


@pytest.fixture
def started(
    control_plane: cp.ControlPlane,
    s3_server: s3.S3Server,
    tiny_profile: dict[str, Any],
    https_inputs: HttpServer,
    tmp_path: Path,
    namespace: str,
) -> Iterator[tuple[Pool, WorkerProcess]]:
    pool, process = start_worker(
        control_plane, s3_server, tiny_profile, https_inputs, tmp_path, namespace
    )
    try:
        yield pool, process
    finally:
        process.stop()


@pytest_asyncio.fixture
async def client(started: tuple[Pool, WorkerProcess]) -> AsyncIterator[kube.Client]:
    async with started[0].client() as opened:
        yield opened


async def holder(pool: Pool, client: kube.Client) -> str:
    lease = await pool.lease(client)
    assert lease is not None
    return str(lease["spec"]["holderIdentity"])


async def test_sigterm_mid_job_finishes_reports_and_leaves(
    started: tuple[Pool, WorkerProcess], client: kube.Client, photos: dict[str, bytes]
) -> None:
    pool, worker = started
    wait_ready(worker)
    instance = await holder(pool, client)
    gate = Gate(pool.http, f"/{uuid.uuid4().hex}/person.png", photos["person"])
    shirt = pool.put("shirt.png", photos["shirt"])
    place = pool.put("place.png", photos["place"])
    job = await pool.create_job(client, person=gate.url, clothing=[shirt], place=place)
    assignment = await pool.assign(client, job, instance)
    await until(lambda: _requested(gate), what="the input request of the job in hand")

    worker.send(signal.SIGTERM)

    async def draining() -> bool:
        lease = await pool.lease(client)
        annotations = (lease or {}).get("metadata", {}).get("annotations", {})
        return bool(annotations.get(pools.STATE_ANNOTATION) == pools.STATE_DRAINING)

    await until(draining, what="the Lease marked draining")
    status, body = worker.probe("/readyz")
    assert (status, body.strip()) == (503, "not ready: draining")
    assert worker.probe("/healthz")[0] == 200
    # Assigned while draining (an operator that has not seen the draining Lease yet).
    later = await pool.create_job(client, person=gate.url, clothing=[shirt], place=place)
    await pool.assign(client, later, instance)

    gate.opened.set()
    report = await pool.final_report(client, job)
    assert (report["exitCode"], report["reason"]) == (0, "Completed")
    assert f"{assignment.output_key_prefix}result.png" in pool.result_keys()
    assert await asyncio.to_thread(worker.wait, 60) == 0
    assert await pool.lease(client) is None
    assert await pool.report(client, later) is None
    # A whole life used every permission of WORKER_PERMISSIONS, and only those.
    used, refused = worker_requests(pool.cluster, pool.namespace)
    assert (used, refused) == (permitted(), [])


async def _requested(gate: Gate) -> bool:
    return gate.requested.is_set()


async def test_sigint_when_idle_deletes_the_lease_and_exits_0(
    started: tuple[Pool, WorkerProcess], client: kube.Client
) -> None:
    pool, worker = started
    wait_ready(worker)
    assert await pool.lease(client) is not None
    worker.send(signal.SIGINT)
    assert await asyncio.to_thread(worker.wait, 60) == 0
    assert await pool.lease(client) is None
    assert "drained: Lease deleted" in worker.log()


async def test_a_restarted_container_takes_over_the_lease(
    started: tuple[Pool, WorkerProcess], client: kube.Client, photos: dict[str, bytes]
) -> None:
    pool, worker = started
    wait_ready(worker)
    first = await holder(pool, client)
    worker.send(signal.SIGKILL)  # a crash: the Lease stays behind
    await asyncio.to_thread(worker.wait, 30)
    lease = await pool.lease(client)
    assert lease is not None and lease["spec"]["holderIdentity"] == first
    person = pool.put("person.png", photos["person"])
    shirt = pool.put("shirt.png", photos["shirt"])
    place = pool.put("place.png", photos["place"])
    lost = await pool.create_job(client, person=person, clothing=[shirt], place=place)
    await pool.assign(client, lost, first)  # accepted by nobody: its instance is gone

    worker.start()  # the same pod's next container
    wait_ready(worker)
    second = await holder(pool, client)
    assert second != first and second.startswith(f"{POD}/")
    taken = await pool.lease(client)
    assert taken is not None and taken["metadata"]["uid"] == lease["metadata"]["uid"]
    assert "took over the Lease" in worker.log()
    job = await pool.create_job(client, person=person, clothing=[shirt], place=place)
    await pool.assign(client, job, second)
    assert (await pool.final_report(client, job))["exitCode"] == 0
    assert await pool.report(client, lost) is None


async def test_a_model_that_cannot_load_exits_with_its_code_and_no_lease(
    control_plane: cp.ControlPlane,
    s3_server: s3.S3Server,
    tiny_profile: dict[str, Any],
    https_inputs: HttpServer,
    tmp_path: Path,
    namespace: str,
) -> None:
    broken = {**tiny_profile, "models": {**tiny_profile["models"],
              "base": {"uri": str(tmp_path / "no-such-model")}}}  # fmt: skip
    pool, worker = start_worker(control_plane, s3_server, broken, https_inputs, tmp_path, namespace)
    try:
        code = await asyncio.to_thread(worker.wait, 180)
    finally:
        worker.stop()
    assert code == int(contract.ExitCode.MODEL_LOAD_FAILED), worker.log()[-3000:]
    assert "profile.models.base" in worker.log()
    async with pool.client() as client:
        assert await pool.lease(client) is None


async def test_a_run_past_its_deadline_is_stopped_and_reported(
    control_plane: cp.ControlPlane,
    s3_env: s3.S3Server,  # boto3 in this process finds the S3 server
    tiny_profile: dict[str, Any],
    https_inputs: HttpServer,
    tmp_path: Path,
    namespace: str,
    photos: dict[str, bytes],
) -> None:
    """activeDeadlineSeconds is at least 60: the worker runs in this process with a clock the
    test moves on by an hour while the job is held in its fetch stage."""
    control_plane.create_namespace(namespace)
    pool = Pool(control_plane, namespace, s3_env, tiny_profile, https_inputs)
    kubeconfig = pool.setup(tmp_path)
    env = pool.worker_env(kubeconfig, tmp_path / "cache", free_port())
    settings = pool_worker.Settings.from_env(env)
    inner = runner.Worker(
        fetcher=fetching.Fetcher(fetching.FetchSettings.from_env(env)),
        store=modelstore.ModelStore(modelstore.StoreSettings.from_env(env)),
        uploader=upload.Uploader(),
    )
    skipped = [0.0]  # read by the run's thread too

    def clock() -> float:
        return time.monotonic() + skipped[0]

    gate = Gate(https_inputs, f"/{uuid.uuid4().hex}/person.png", photos["person"])
    shirt = pool.put("shirt.png", photos["shirt"])
    place = pool.put("place.png", photos["place"])
    async with kube.Client(settings.connection) as worker_client, pool.client() as client:
        # Watches of 1 s: the assignment may arrive on a watch resumed from its resourceVersion.
        worker = pool_worker.PoolWorker(
            settings, inner, worker_client, clock=clock, watch_seconds=1
        )
        serving = asyncio.ensure_future(worker.serve())
        try:
            await until(lambda: _warm(worker), timeout=180, what="the worker to be ready")
            job = await pool.create_job(client, person=gate.url, clothing=[shirt], place=place)
            await pool.assign(client, job, worker.identity)
            await until(lambda: _requested(gate), what="the input request")
            await asyncio.sleep(2.5)  # held in its fetch while watches end and resume
            skipped[0] = 3600.0  # the default activeDeadlineSeconds is 1800
            gate.opened.set()
            report = await pool.final_report(client, job)
        finally:
            worker.drain()
            assert await asyncio.wait_for(serving, 60) == 0
    assert report["exitCode"] == int(contract.ExitCode.DEADLINE_EXCEEDED), report
    assert report["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds" in report["message"]
    assert pool.result_keys() == []
    watches = [
        e
        for e in control_plane.audit_events(
            user=f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
        )
        if e["verb"] == "watch" and e["stage"] == "ResponseComplete"
    ]
    assert len(watches) >= 2  # resumed at least once
    assert all("resourceVersion=" in e["requestURI"] for e in watches)


async def _warm(worker: pool_worker.PoolWorker) -> bool:
    return worker.readiness() is None
