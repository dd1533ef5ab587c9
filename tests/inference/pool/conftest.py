"""``compose worker`` as a real process against the real test control plane and a real S3.

The tests play the operator's part of the hand-off (``compose_api.pools``): they create
CompositionJobs, write ``status.assignment`` as the operator does (a merge patch on /status
carrying the resourceVersion it decided on) and read ``status.workerReport``. The worker logs in
with the token of a ServiceAccount whose Role holds exactly ``pools.WORKER_PERMISSIONS``, so a
request it lacks a permission for fails the test. Its profile is the tiny one (64x64, 2 steps,
local paths), its Lease lasts 3 s. The worker pod is a real Pod object (kwok runs it): the Lease
is owned by it, as in a cluster.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from compose_api import kube, models, pools
from tests.inference.io.conftest import HttpServer
from tests.support import control_plane as cp
from tests.support import pool_inputs, s3
from tests.support.cluster_fixtures import control_plane
from tests.support.pool_inputs import Gate

__all__ = ["Gate", "control_plane"]

Obj = dict[str, Any]
POOL = "tiny-pool"
POD = "tiny-pool-workers-0"
LEASE_SECONDS = 3
SERVICE_ACCOUNT = "compose-worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def worker_rbac(namespace: str) -> list[Obj]:
    """A ServiceAccount, and a Role holding exactly ``pools.WORKER_PERMISSIONS``."""
    rules = [
        {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
        for group, resource, verbs, _ in pools.WORKER_PERMISSIONS
    ]
    meta = {"name": SERVICE_ACCOUNT, "namespace": namespace}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": SERVICE_ACCOUNT},
         "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT,
                       "namespace": namespace}]},
    ]  # fmt: skip


def create_objects(cluster: cp.ControlPlane, objects: list[Obj]) -> list[Obj]:
    created = []
    for obj in objects:
        group, _, version = obj["apiVersion"].rpartition("/")
        plural = {"ServiceAccount": "serviceaccounts", "Role": "roles",
                  "RoleBinding": "rolebindings", "Pod": "pods"}[obj["kind"]]  # fmt: skip
        base = f"/apis/{group}/{version}" if group else "/api/v1"
        ns = obj["metadata"]["namespace"]
        created.append(cluster.request("POST", f"{base}/namespaces/{ns}/{plural}", obj))
    return created


def worker_requests(cluster: cp.ControlPlane, namespace: str) -> tuple[set[Any], list[Any]]:
    """From the audit log, what the worker's service account did in ``namespace``: the set of
    (group, resource[/subresource], verb), and the requests refused (401/403)."""
    user = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
    used, refused = set(), []
    for event in cluster.audit_events(user=user):  # an open watch shows as ResponseStarted
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource = f"{resource}/{ref['subresource']}"
        used.add((ref.get("apiGroup") or "", resource, event["verb"]))
        if (event.get("responseStatus") or {}).get("code") in (401, 403):
            refused.append((event["verb"], event.get("requestURI")))
    return used, refused


def permitted() -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for group, resource, verbs, _ in pools.WORKER_PERMISSIONS
            for verb in verbs}  # fmt: skip


class WorkerProcess:
    """``compose worker`` as a subprocess, its log in a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "compose_inference", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def probe(self, path: str) -> tuple[int, str]:
        """(status, body) of a probe; (0, error) when nothing answers."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        except OSError as error:
            return 0, str(error)
        finally:
            connection.close()

    def wait_for_log(self, text: str, *, timeout: float = 60.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.exit_code() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} (x{count}) in the worker's log:\n{self.log()[-6000:]}")


class Pool:
    """One namespace with a worker's RBAC, pod object, inputs and results buckets, and the
    operator's side of the protocol."""

    def __init__(
        self,
        cluster: cp.ControlPlane,
        namespace: str,
        s3_server: s3.S3Server,
        profile: Mapping[str, Any],
        http: HttpServer,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.s3 = s3_server
        self.profile = profile
        self.http = http
        self.inputs = s3_server.new_bucket("inputs")
        self.results = s3_server.new_bucket("results")
        self.pod_uid = ""

    # -- setup (synchronous, outside any event loop) -------------------------------------------

    def setup(self, tmp: Path) -> Path:
        """RBAC, the pod object; returns the worker's kubeconfig."""
        create_objects(self.cluster, worker_rbac(self.namespace))
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD, "namespace": self.namespace,
                         "labels": {pools.POOL_LABEL: POOL}},
            "spec": {"nodeName": "system-0", "serviceAccountName": SERVICE_ACCOUNT,
                     "containers": [{"name": pools.CONTAINER_NAME, "image": "compose:test"}]},
        }  # fmt: skip
        (created,) = create_objects(self.cluster, [pod])
        self.pod_uid = created["metadata"]["uid"]
        return self.cluster.service_account_kubeconfig(
            self.namespace, SERVICE_ACCOUNT, tmp / "worker.kubeconfig"
        )

    def worker_env(self, kubeconfig: Path, cache: Path, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("COMPOSE_", "AWS_", "KUBERNETES_"))}  # fmt: skip
        env.update(self.s3.env())
        env.update({
            "KUBECONFIG": str(kubeconfig),
            pools.POD_ENV: POD,
            pools.NAMESPACE_ENV: self.namespace,
            pools.NODE_ENV: "system-0",
            pools.POOL_ENV: POOL,
            pools.PROFILE_ENV: json.dumps(self.profile),
            pools.LEASE_SECONDS_ENV: str(LEASE_SECONDS),
            pools.PORT_ENV: str(port),
            pools.POD_UID_ENV: self.pod_uid,
            "COMPOSE_MODEL_CACHE": str(cache),
            "COMPOSE_NETGUARD_ALLOW_CIDRS": "127.0.0.1/32",
            "COMPOSE_FETCH_CA_BUNDLE": str(self.cluster.pki.ca_cert),
            "OMP_NUM_THREADS": "1",
        })  # fmt: skip
        return env

    def put(self, key: str, body: bytes) -> str:
        self.s3.client().put_object(Bucket=self.inputs, Key=key, Body=body)
        return f"s3://{self.inputs}/{key}"

    def result_keys(self) -> list[str]:
        """The result objects (the reuse index beside them left out: ``index_keys``)."""
        return [key for key in self._keys() if ".reuse" not in key.split("/")]

    def index_keys(self) -> list[str]:
        return [key for key in self._keys() if ".reuse" in key.split("/")]

    def _keys(self) -> list[str]:
        listing = self.s3.client().list_objects_v2(Bucket=self.results)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    # -- the operator's part -------------------------------------------------------------------

    def client(self) -> kube.Client:
        return kube.Client(kube.Connection.from_kubeconfig(self.cluster.kubeconfig))

    def jobs_path(self, name: str | None = None, subresource: str | None = None) -> str:
        return kube.path(models.API_VERSION, models.PLURAL, namespace=self.namespace, name=name,
                         subresource=subresource)  # fmt: skip

    @property
    def lease_path(self) -> str:
        return kube.path("coordination.k8s.io/v1", "leases", namespace=self.namespace, name=POD)

    async def create_job(
        self,
        client: kube.Client,
        *,
        person: str,
        place: str,
        clothing: list[str],
        finalizers: list[str] | None = None,
        reuse: bool = True,
    ) -> Obj:
        name = f"look-{uuid.uuid4().hex[:8]}"
        body = {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": name, "namespace": self.namespace,
                         "finalizers": finalizers or []},
            "spec": {
                "inputs": {"person": {"uri": person}, "place": {"uri": place},
                           "clothing": [{"uri": uri} for uri in clothing]},
                "output": {"format": "png", "reuse": reuse},
                "profile": self.profile["name"],
                "execution": {"pool": POOL},
            },
        }  # fmt: skip
        return await client.create(self.jobs_path(), body)

    async def assign(
        self, client: kube.Client, job: Obj, instance: str, *, attempt: int = 0, seed: int = 5
    ) -> models.WorkerAssignment:
        """Write status.assignment as the operator does: one status write, conditional on the
        resourceVersion it decided on."""
        current = await client.get(self.jobs_path(job["metadata"]["name"]))
        meta = current["metadata"]
        assignment = models.WorkerAssignment(
            pool=POOL,
            worker=POD,
            worker_instance=instance,
            attempt=attempt,
            assigned_at=datetime.datetime.now(datetime.UTC),
            seed=seed,
            output_bucket=self.results,
            output_key_prefix=f"{self.namespace}/{meta['name']}/{meta['uid']}/",
        )
        await client.patch(
            self.jobs_path(meta["name"], "status"),
            {"metadata": {"resourceVersion": meta["resourceVersion"]},
             "status": {"assignment": assignment.to_api()}},
        )  # fmt: skip
        return assignment

    async def take_back(self, client: kube.Client, job: Obj) -> None:
        current = await client.get(self.jobs_path(job["metadata"]["name"]))
        await client.patch(
            self.jobs_path(job["metadata"]["name"], "status"),
            {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
             "status": {"assignment": None}},
        )  # fmt: skip

    async def report(self, client: kube.Client, job: Obj) -> Obj | None:
        current = await client.get(self.jobs_path(job["metadata"]["name"]))
        found: Obj | None = (current.get("status") or {}).get("workerReport")
        return found

    async def final_report(self, client: kube.Client, job: Obj, *, timeout: float = 60) -> Obj:  # noqa: ASYNC109
        async def finished() -> Obj | None:
            found = await self.report(client, job)
            return found if found and found.get("finishedAt") else None

        return await until(finished, timeout=timeout, what=f"{job['metadata']['name']} reported")

    async def lease(self, client: kube.Client) -> Obj | None:
        return await client.get_or_none(self.lease_path)


async def until(
    check: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 60.0,  # noqa: ASYNC109 (a polling deadline)
    what: str = "",
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_profile(tiny_models: dict[str, Path]) -> dict[str, Any]:
    from compose_inference import tiny

    root = tiny_models["base"].parent
    return tiny.smoke_profile(root).model_dump(mode="json", by_alias=True)


@pytest.fixture(scope="module")
def https_inputs(control_plane: cp.ControlPlane) -> Iterator[HttpServer]:
    with pool_inputs.https_inputs(control_plane) as server:
        yield server


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return pool_inputs.photos()


def start_worker(
    cluster: cp.ControlPlane,
    s3_server: s3.S3Server,
    profile: Mapping[str, Any],
    http: HttpServer,
    folder: Path,
    namespace: str,
) -> tuple[Pool, WorkerProcess]:
    cluster.create_namespace(namespace)
    pool = Pool(cluster, namespace, s3_server, profile, http)
    kubeconfig = pool.setup(folder)
    port = free_port()
    process = WorkerProcess(
        pool.worker_env(kubeconfig, folder / "cache", port), folder / "worker.log", port
    )
    process.start()
    return pool, process


def wait_ready(process: WorkerProcess, *, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.probe("/readyz")[0] == 200:
            return
        if process.exit_code() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"the worker never became ready:\n{process.log()[-6000:]}")
