"""Warm pools end to end: the real operator, real ``compose worker`` processes and the real
control plane.

The operator runs with exactly the chart's RBAC and reconciles a CompositionPool into a
Deployment; the real ReplicaSet controller makes its pods and the real scheduler puts them on the
fake g5 nodes (one GPU each, so at most three workers). kwok runs the pod objects, and
:class:`~tests.support.worker_kubelet.WorkerKubelet` runs one real ``compose worker`` process per
running pod, with the pod's own environment, logged in as the chart's worker ServiceAccount (so a
permission the chart's worker Role lacks fails the test). The workers run the tiny CPU profile
(64x64, 2 steps) against the moto S3 server. Jobs are created as users create them.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import yaml

from compose_api import kube, models
from compose_api import pools as protocol
from tests.inference.io.conftest import HttpServer
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support import pool_inputs, s3
from tests.support.cluster_fixtures import GPU_NODES
from tests.support.pool_inputs import Gate
from tests.support.worker_kubelet import WorkerKubelet, node_env, worker_command

Obj = dict[str, Any]
POOL = "warm"
PROFILE = "tiny-gpu"
LEASE_SECONDS = 10  # long enough for a busy 2-core machine; no test here waits for one to expire


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return pool_inputs.gpu_profile(tmp_path_factory.mktemp("tiny-models"), PROFILE)


@pytest.fixture
def profiles_path(tmp_path: pathlib.Path, tiny_profile: dict[str, Any]) -> pathlib.Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump([tiny_profile]))
    return path


@pytest.fixture
def results(s3_server: s3.S3Server) -> str:
    return s3_server.new_bucket("results")


@pytest.fixture
def operator_settings(
    request: pytest.FixtureRequest, results: str, s3_server: s3.S3Server
) -> dict[str, str]:
    """The operator's settings; a test adds its own with indirect parametrization."""
    return {
        "COMPOSE_OUTPUT_BUCKET": results,
        "COMPOSE_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "COMPOSE_STATUS_COALESCE_SECONDS": "1",
        **getattr(request, "param", {}),
    }


@pytest.fixture(scope="module")
def https_inputs(control_plane: cp.ControlPlane) -> Iterator[HttpServer]:
    with pool_inputs.https_inputs(control_plane) as server:
        yield server


def held(server: HttpServer, body: bytes) -> Gate:
    """An HTTPS input held until the test opens it: a job held in its fetch stage."""
    return Gate(server, f"/held-{uuid.uuid4().hex[:8]}.png", body)


class Scene:
    """One namespace: the inputs, the pool, its workers, and the API as a user sees it."""

    def __init__(
        self,
        client: kube.Client,
        namespace: str,
        s3_server: s3.S3Server,
        inputs: dict[str, str],
        kubelet: WorkerKubelet,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.s3 = s3_server
        self.inputs = inputs
        self.kubelet = kubelet

    def path(self, plural: str, name: str | None = None) -> str:
        return kube.path(models.API_VERSION, plural, namespace=self.namespace, name=name)

    async def create_pool(self, **spec: Any) -> Obj:
        body = {
            "apiVersion": models.API_VERSION,
            "kind": protocol.KIND,
            "metadata": {"name": POOL},
            "spec": {"profile": PROFILE, "leaseSeconds": LEASE_SECONDS, **spec},
        }
        return await self.client.create(self.path(protocol.PLURAL), body)

    async def create_job(
        self,
        name: str,
        *,
        person: str | None = None,
        priority: int = 0,
        seed: int | None = None,
        **execution: Any,
    ) -> Obj:
        body = {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": name},
            "spec": {
                "profile": PROFILE,
                "inputs": {
                    "person": {"uri": person or self.inputs["person"]},
                    "clothing": [{"uri": self.inputs["shirt"], "category": "upper"}],
                    "place": {"uri": self.inputs["place"]},
                },
                "execution": {"pool": POOL, "priority": priority, **execution},
                "params": {} if seed is None else {"seed": seed},
            },
        }
        return await self.client.create(self.path(models.PLURAL), body)

    async def job(self, name: str) -> Obj:
        return await self.client.get(self.path(models.PLURAL, name))

    async def pool(self) -> Obj:
        return await self.client.get(self.path(protocol.PLURAL, POOL))

    async def jobs(self) -> list[Obj]:
        items, _ = await self.client.list(self.path(models.PLURAL))
        return items

    async def until(self, check: Any, *, timeout: float = 90, what: str = "") -> Any:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await check()
            if last:
                return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last: {last!r}")

    async def finished(self, names: list[str], *, timeout: float = 120) -> dict[str, Obj]:  # noqa: ASYNC109
        async def check() -> dict[str, Obj] | None:
            found = {j["metadata"]["name"]: j for j in await self.jobs()}
            done = {
                name: found[name]
                for name in names
                if (found.get(name, {}).get("status") or {}).get("phase") in ("Succeeded", "Failed")
            }
            return done if len(done) == len(names) else None

        result: dict[str, Obj] = await self.until(check, timeout=timeout, what=f"{names} done")
        return result

    async def workers(self) -> list[Obj]:
        pods, _ = await self.client.list(
            kube.path("v1", "pods", namespace=self.namespace),
            label_selector=f"{protocol.POOL_LABEL}={POOL}",
        )
        return pods

    async def gpus_free(self) -> bool:
        """No pod of any namespace holds a GPU node's GPU (not finished, bound to one)."""
        pods, _ = await self.client.list(kube.path("v1", "pods"))
        gpu_nodes = {name for name, _, _ in GPU_NODES}
        return not [
            pod
            for pod in pods
            if pod["spec"].get("nodeName") in gpu_nodes
            and pod["status"].get("phase") not in ("Succeeded", "Failed")
        ]

    def result_keys(self, bucket: str) -> list[str]:
        """The result objects (the reuse index beside them left out)."""
        listing = self.s3.client().list_objects_v2(Bucket=bucket)
        keys = (item["Key"] for item in listing.get("Contents", []))
        return sorted(key for key in keys if ".reuse" not in key.split("/"))


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return pool_inputs.photos()


@pytest_asyncio.fixture
async def scene(
    control_plane: cp.ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    s3_server: s3.S3Server,
    photos: dict[str, bytes],
    https_inputs: HttpServer,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Scene]:
    bucket = s3_server.new_bucket("inputs")
    inputs = {}
    for name, body in photos.items():
        s3_server.client().put_object(Bucket=bucket, Key=f"{name}.png", Body=body)
        inputs[name] = f"s3://{bucket}/{name}.png"
    async with kube.Client(kube.Connection.from_kubeconfig(control_plane.kubeconfig)) as client:
        accounts, _ = await client.list(kube.path("v1", "serviceaccounts", namespace=namespace))
        worker_account = next(
            item["metadata"]["name"]
            for item in accounts
            if item["metadata"]["name"].endswith("-worker")
        )
        kubeconfig = control_plane.service_account_kubeconfig(
            namespace, worker_account, tmp_path / "worker.kubeconfig"
        )
        env = {
            **node_env(tmp_path, s3_server.env()),
            "KUBECONFIG": str(kubeconfig),
            "COMPOSE_NETGUARD_ALLOW_CIDRS": "127.0.0.1/32",
            "COMPOSE_FETCH_CA_BUNDLE": str(control_plane.pki.ca_cert),
        }
        logs = tmp_path / "workers"
        logs.mkdir()
        kubelet = WorkerKubelet(client, namespace, POOL, command=worker_command, env=env, logs=logs)
        async with kubelet:
            yield Scene(client, namespace, s3_server, inputs, kubelet)
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                print(kubelet.logs_text()[-20000:])


def attempts(job: Obj) -> list[tuple[str, str | None]]:
    return [(a["outcome"], a.get("reason")) for a in job["status"].get("attempts", [])]


async def test_thirty_jobs_each_run_once_on_warm_workers_that_load_once(
    scene: Scene, results: str
) -> None:
    # The pool's maximum is the cluster's three GPUs: pods of earlier tests whose namespaces are
    # still going away must have let go of them first.
    await scene.until(scene.gpus_free, what="every GPU node free", timeout=120)
    # Held at its size long after the demand: the third worker may still be loading when two
    # warm ones have run all 30 jobs (scaling back to zero has a test of its own).
    await scene.create_pool(minReplicas=0, maxReplicas=3, scaleToZeroAfterSeconds=600)
    names = [f"look-{index:02d}" for index in range(30)]
    for name in names:
        await scene.create_job(name)
    done = await scene.finished(names, timeout=240)
    assert {job["status"]["phase"] for job in done.values()} == {"Succeeded"}, {
        name: job["status"].get("message") for name, job in done.items()
    }
    workers = set()
    for job in done.values():
        status = job["status"]
        (attempt,) = status["attempts"]  # each job ran exactly once
        assert attempt["outcome"] == "Succeeded" and attempt["pool"] == POOL
        assert attempt["instanceType"] in ("g5.xlarge", "g5.2xlarge")
        workers.add(attempt["podName"])
        assert "modelLoad" not in status["timings"]  # warm: no load for any job
        assert status["timings"]["inference"] > 0
        assert "assignment" not in status  # the job left its worker's watch
        assert status["result"]["s3Uri"].startswith(f"s3://{results}/")
        conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
        assert conditions["Succeeded"] == ("True", "Completed")
    # One result object per job, and the pool really spread the work.
    keys = scene.result_keys(results)
    assert len(keys) == 30 and len({key.split("/")[2] for key in keys}) == 30
    assert len(workers) >= 2
    # Each worker process loaded its profile once: one warm-up each, and no restart.
    for pod in workers:
        assert scene.kubelet.log(pod).count("loaded and warmed up") == 1, scene.kubelet.log(pod)[
            -3000:
        ]
    assert all(c.starts == 1 for c in scene.kubelet.containers.values())

    # The demand of 30 jobs scaled the pool to its maximum, whose workers all came up.
    seen: dict[str, Any] = {}

    async def all_ready() -> bool:
        seen["status"] = (await scene.pool())["status"]
        seen["pods"] = [
            (pod["metadata"]["name"], pod["spec"].get("nodeName"), pod["status"].get("phase"))
            for pod in await scene.workers()
        ]
        return bool(seen["status"]["desiredReplicas"] == 3 and seen["status"]["readyWorkers"] == 3)

    try:
        await scene.until(all_ready, what="three ready workers", timeout=180)
    except AssertionError as error:
        raise AssertionError(f"{error}; the pool's status and pods: {seen}") from None


async def test_a_worker_killed_mid_job_hands_the_job_to_another(
    scene: Scene, results: str, https_inputs: HttpServer, photos: dict[str, bytes]
) -> None:
    await scene.create_pool(minReplicas=2, maxReplicas=2)
    gate = held(https_inputs, photos["person"])
    await scene.create_job("held", person=gate.url)
    job = await scene.until(
        lambda: _accepted(scene, "held"), what="held accepted by a worker", timeout=120
    )
    victim = job["status"]["workerReport"]["worker"]
    await asyncio.to_thread(gate.requested.wait, 30)
    scene.kubelet.kill(victim)  # SIGKILL in the fetch stage; the kubelet restarts the container
    gate.opened.set()
    (done,) = (await scene.finished(["held"], timeout=120)).values()
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert attempts(done) == [("Failed", "WorkerLost"), ("Succeeded", None)]
    assert len(scene.result_keys(results)) == 1  # one result object


async def test_a_stopping_worker_finishes_its_job_and_takes_no_new_one(
    scene: Scene, results: str, https_inputs: HttpServer, photos: dict[str, bytes]
) -> None:
    await scene.create_pool(minReplicas=1, maxReplicas=1)
    gate = held(https_inputs, photos["person"])
    await scene.create_job("held", person=gate.url)
    job = await scene.until(lambda: _accepted(scene, "held"), what="held accepted", timeout=120)
    worker = job["status"]["workerReport"]["worker"]
    await asyncio.to_thread(gate.requested.wait, 30)
    await scene.client.delete(kube.path("v1", "pods", namespace=scene.namespace, name=worker))
    # The pod is Terminating: its process got SIGTERM and drains (its Lease says so).
    lease_path = kube.path("coordination.k8s.io/v1", "leases", namespace=scene.namespace,
                           name=worker)  # fmt: skip

    async def draining() -> bool:
        lease = await scene.client.get_or_none(lease_path)
        annotations = ((lease or {}).get("metadata") or {}).get("annotations") or {}
        return annotations.get(protocol.STATE_ANNOTATION) == protocol.STATE_DRAINING

    await scene.until(draining, what="the Lease draining")
    await scene.create_job("after")
    gate.opened.set()
    (done,) = (await scene.finished(["held"], timeout=60)).values()
    assert attempts(done) == [("Succeeded", None)]
    assert done["status"]["attempts"][0]["podName"] == worker
    (after,) = (await scene.finished(["after"], timeout=180)).values()
    assert after["status"]["phase"] == "Succeeded"
    assert after["status"]["attempts"][0]["podName"] != worker  # the replacement took it
    assert (worker, 0) in scene.kubelet.exited  # drained and exited cleanly


async def test_the_pool_scales_from_zero_for_a_job_and_back_to_zero_when_idle(
    scene: Scene,
) -> None:
    await scene.create_pool(minReplicas=0, maxReplicas=2, scaleToZeroAfterSeconds=3)
    pool = await scene.until(
        lambda: _pool_with(scene, "ScaledToZero"), what="the pool scaled to zero"
    )
    assert pool["status"]["desiredReplicas"] == 0 and await scene.workers() == []
    await scene.create_job("first")
    (done,) = (await scene.finished(["first"], timeout=180)).values()
    assert done["status"]["phase"] == "Succeeded"
    timings = done["status"]["timings"]
    assert timings["queued"] >= 0 and "modelLoad" not in timings  # warmed up before it took it
    await scene.until(lambda: _pool_with(scene, "ScaledToZero"), what="back to zero", timeout=60)

    async def gone() -> bool:
        return await scene.workers() == []

    await scene.until(gone, what="the worker pods gone", timeout=60)
    assert [code for _, code in scene.kubelet.exited] == [0]  # drained, not killed


async def test_a_repeated_job_on_a_warm_pool_reuses_the_result(scene: Scene, results: str) -> None:
    """The same request again (same inputs, parameters and seed): the worker copies the first
    job's result, and the operator puts it in status as reported, naming the first job."""
    await scene.create_pool(minReplicas=1, maxReplicas=1)
    await scene.create_job("first", seed=77)
    (first,) = (await scene.finished(["first"], timeout=180)).values()
    assert first["status"]["phase"] == "Succeeded", first["status"]
    await scene.create_job("again", seed=77)
    (again,) = (await scene.finished(["again"])).values()
    status = again["status"]
    assert status["phase"] == "Succeeded", status
    assert status["result"]["reusedFrom"] == {
        "namespace": scene.namespace, "name": "first", "uid": first["metadata"]["uid"],
    }  # fmt: skip
    assert status["result"]["sha256"] == first["status"]["result"]["sha256"]
    assert "inference" not in status["timings"] and "modelLoad" not in status["timings"]
    assert status["timings"]["reuse"] >= 0
    (attempt,) = status["attempts"]
    assert attempt["outcome"] == "Succeeded"
    # Two objects, each job's own (a copy survives the first job's retention).
    keys = scene.result_keys(results)
    assert [key.split("/")[1] for key in keys] == ["again", "first"]


@pytest.mark.parametrize(
    "operator_settings", [{"COMPOSE_MAX_RUNNING_PER_NAMESPACE": "1"}], indirect=True
)
async def test_priority_the_namespace_cap_and_bad_input_in_a_pool(
    scene: Scene, https_inputs: HttpServer, photos: dict[str, bytes]
) -> None:
    await scene.create_pool(minReplicas=1, maxReplicas=1)
    await scene.until(lambda: _pool_with(scene, "WorkersReady"), what="a ready worker", timeout=180)
    # A job without a face, held in its fetch: it takes the one slot the cap allows.
    gate = held(https_inputs, photos["faceless"])
    await scene.create_job("bad", person=gate.url)
    await scene.until(lambda: _accepted(scene, "bad"), what="bad accepted", timeout=60)
    for name, priority in (("low", 0), ("high", 10), ("mid", 5)):
        await scene.create_job(name, priority=priority)

    async def queued() -> bool:
        jobs = {name: await scene.job(name) for name in ("low", "high", "mid")}
        return all((j.get("status") or {}).get("phase") == "Queued" for j in jobs.values())

    await scene.until(queued, what="the three jobs queued behind the cap")
    gate.opened.set()
    done = await scene.finished(["bad", "low", "high", "mid"], timeout=180)
    bad = done["bad"]["status"]
    assert bad["phase"] == "Failed"
    assert {c["type"]: c["reason"] for c in bad["conditions"]}["Failed"] == "NoFaceFound"
    assert attempts(done["bad"]) == [("Failed", "NoFaceFound")]
    worker = bad["attempts"][0]["podName"]
    for name in ("low", "high", "mid"):
        status = done[name]["status"]
        assert status["phase"] == "Succeeded"
        assert status["attempts"][0]["podName"] == worker  # the worker kept serving
    # One slot: the queued jobs ran one at a time, in priority order.
    began = {n: done[n]["status"]["attempts"][0]["startTime"] for n in ("low", "high", "mid")}
    assert sorted(began, key=began.__getitem__) == ["high", "mid", "low"]


async def _accepted(scene: Scene, name: str) -> Obj | None:
    job = await scene.job(name)
    report = (job.get("status") or {}).get("workerReport")
    return job if report and not report.get("finishedAt") else None


async def _pool_with(scene: Scene, reason: str) -> Obj | None:
    pool = await scene.pool()
    for condition in (pool.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Available" and condition["reason"] == reason:
            return pool
    return None
