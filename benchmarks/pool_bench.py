"""Pool benchmark: what a job costs beyond its generation, on warm workers and as a Job per job.

    python -m benchmarks.pool_bench --jobs 100
    python -m benchmarks.pool_bench --jobs 100 --workers 2 --json out.json
    python -m benchmarks.pool_bench --jobs 50 --modes reuse

One run, on this machine, against the real test control plane (etcd, kube-apiserver, the real
controllers and scheduler, kwok), a local S3 server (moto) and the tiny CPU profile (64x64, 2
steps), with the real ``compose-operator`` logged in with exactly the chart's RBAC:

1. **pool mode**: a CompositionPool of ``--workers`` warm workers (real ``compose worker``
   processes, one per worker pod, logged in as the chart's worker ServiceAccount; see
   ``tests/support/worker_kubelet.py``), and ``--jobs`` CompositionJobs that name it;
2. **Job mode**: the same jobs without a pool: the operator creates a Job per job, the Job
   controller a pod, the scheduler places it on a fake g5 node, and the benchmark runs the real
   inference process for the pod (``compose`` with the pod's job document, cold: interpreter,
   imports and model load each time) and writes its exit code and termination message into the
   pod's status, as the kubelet does;
3. **reuse** (``--modes reuse``, or added to the list): on a warm pool of its own, ``--jobs``
   pairs of jobs: a first job with a seed of its own, and once it has succeeded, the same request
   again (same inputs, parameters and seed), which the worker answers with a copy of the first
   one's result (``compose_inference.reuse``). Printed: the repeated job's create→Succeeded
   p50/p99 against the first job's, measured in the same run, and how many repeats were reused.
4. **gateway-reuse** (``--modes gateway-reuse``; what ``benchmarks.gateway_bench --reuse N``
   runs): the same pairs sent as the original API's ``POST /generate?wait=120`` to a real
   ``compose-gateway`` process (the chart's gateway RBAC, an API key, photos among the key's
   uploads), on a warm pool of its own: the client's request→answer p50/p99 of the repeat
   against the first, and how many repeats the gateway's job view calls reused.

At most ``--workers`` jobs are in flight at once in both modes (a job is created when one
finishes), so no job waits behind another: what is measured is the path of one job. For every
job: the time from its create request to the moment a watch shows it Succeeded, less its
generation (``status.timings.inference`` and ``refine``): the **overhead**; and less the whole
run as the worker or the inference process timed it (``status.timings.total``: fetch, face
analysis, generation, safety check, upload): what happens **outside the run** (the hand-off, the
API round trips, and in Job mode the pod and the process start). Printed: overhead
p50/p99 per mode, and the API requests per job, from the API server's audit log, split into the
project's own components (operator; workers) and all components (the controllers, the scheduler,
kwok's kubelet part, and the pod status writes the benchmark makes in the kubelet's place). The
benchmark's own requests (creating jobs, watching them, running pods) are left out.

What the test cluster leaves out, in both modes: node provisioning and image pulls (kwok's pods
start at once). So Job mode's overhead here is the floor of a cold start: a real cluster adds the
~10 GB image pull on a new node, and model loads of 20-40 s from NVMe.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import yaml

from compose_api import kube, models
from compose_api import pools as protocol
from tests.operator.cluster.conftest import running_operator
from tests.support import control_plane as cp
from tests.support import pool_inputs, s3
from tests.support.cluster_fixtures import GPU_NODES, kubectl_path
from tests.support.gateway_process import running_gateway
from tests.support.worker_kubelet import WorkerKubelet, node_env, pod_env, worker_command

NAMESPACE = "bench"
POOL = "warm"
REUSE_POOL = "warm-reuse"  # reuse mode's own pool: the pool mode's may still be going away
GATEWAY_POOL = "warm-gateway"  # ... and gateway-reuse mode's
OWNER = "bench"  # the gateway's API key's owner
MODES = ("pool", "job", "reuse", "gateway-reuse")
PROFILE = "tiny-gpu"
DRIVER = "pool-bench"  # the User-Agent of the benchmark's own requests
KUBELET = "pool-bench-kubelet"  # ... and of those it makes in the kubelet's place
Obj = dict[str, Any]


@dataclasses.dataclass
class Mode:
    """The figures of one mode."""

    name: str
    overhead: list[float] = dataclasses.field(default_factory=list)
    orchestration: list[float] = dataclasses.field(default_factory=list)
    total: list[float] = dataclasses.field(default_factory=list)
    generate: list[float] = dataclasses.field(default_factory=list)
    failed: int = 0
    requests: Counter[str] = dataclasses.field(default_factory=Counter)

    def per_job(self, *components: str) -> float:
        jobs = len(self.total) + self.failed
        return sum(self.requests[c] for c in components) / jobs if jobs else 0.0

    def record(self, name: str, obj: Obj, seconds: float) -> bool:
        """One finished job, ``seconds`` from its create to a watch showing its end: counted
        failed, or its time split into generation, overhead and what happened outside the
        run (the hand-off, the API round trips, and in Job mode the pod and process start)."""
        status = obj.get("status") or {}
        if status.get("phase") != "Succeeded":
            self.failed += 1
            print(f"  {name}: {status.get('phase')}: {status.get('message')}", file=sys.stderr)
            return False
        timings = status.get("timings") or {}
        generate = float(timings.get("inference") or 0) + float(timings.get("refine") or 0)
        self.total.append(seconds)
        self.generate.append(generate)
        self.overhead.append(seconds - generate)
        self.orchestration.append(seconds - float(timings.get("total") or 0))
        return True


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# -- the cluster ------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster() -> Iterator[cp.ControlPlane]:
    with cp.start() as plane:
        env = plane.kubectl_env()
        subprocess.run(
            [kubectl_path(), "apply", "--server-side", "-f", str(cp.REPO / "crds")],
            capture_output=True, text=True, env=env, check=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [kubectl_path(), "wait", "--for=condition=Established", "crd", "--all",
             "--timeout=60s"], capture_output=True, env=env, check=True, timeout=90,
        )  # fmt: skip
        plane.ensure_system_node()
        for name, instance_type, capacity_type in GPU_NODES:
            plane.ensure_gpu_node(name, instance_type=instance_type, capacity_type=capacity_type)
        plane.create_namespace(NAMESPACE)
        yield plane


def inputs(server: s3.S3Server) -> dict[str, str]:
    bucket = server.new_bucket("inputs")
    found = {}
    for name, body in pool_inputs.photos().items():
        server.client().put_object(Bucket=bucket, Key=f"{name}.png", Body=body)
        found[name] = f"s3://{bucket}/{name}.png"
    return found


def job_body(
    name: str, photos: dict[str, str], *, pool: str | None, seed: int | None = None
) -> Obj:
    execution: dict[str, Any] = {"pool": pool} if pool else {}
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "profile": PROFILE,
            "inputs": {
                "person": {"uri": photos["person"]},
                "clothing": [{"uri": photos["shirt"], "category": "upper"}],
                "place": {"uri": photos["place"]},
            },
            "execution": execution,
            "params": {} if seed is None else {"seed": seed},
        },
    }


# -- the kubelet's part for Job pods ------------------------------------------------------------


class JobKubelet:
    """Runs the inference process of every running Job pod, and ends the pod with its exit code
    and termination message, as the kubelet does."""

    def __init__(
        self,
        client: kube.Client,
        env: dict[str, str],
        logs: pathlib.Path,
        *,
        namespace: str = NAMESPACE,
    ) -> None:
        self.client = client
        self.env = env
        self.logs = logs
        self.namespace = namespace
        self.started: set[str] = set()
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> JobKubelet:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _loop(self) -> None:
        path = kube.path("v1", "pods", namespace=self.namespace)
        while True:
            with contextlib.suppress(kube.KubeError):
                pods, _ = await self.client.list(
                    path, label_selector="batch.kubernetes.io/job-name"
                )
                for pod in pods:
                    name = pod["metadata"]["name"]
                    if name in self.started or pod["status"].get("phase") != "Running":
                        continue
                    self.started.add(name)
                    task = asyncio.create_task(self._run(pod))
                    self._running.add(task)
                    task.add_done_callback(self._finished)
            await asyncio.sleep(0.05)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(repr(task.exception()))
            print(f"the kubelet stand-in failed: {task.exception()!r}", file=sys.stderr)

    async def _run(self, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        log = self.logs / f"{name}.log"
        message = self.logs / f"{name}.termination"
        env = {**os.environ, **pod_env(pod), **self.env,
               "COMPOSE_TERMINATION_LOG": str(message)}  # fmt: skip
        with log.open("ab") as handle:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "compose_inference", env=env, stdout=handle, stderr=handle
            )
        code = await process.wait()
        text = message.read_text() if message.exists() else ""
        await cp.finish_pod(_Requests(self.client), pod, exit_code=code, message=text)


class _Requests:
    """What :func:`tests.support.control_plane.finish_pod` needs of a client: ``request``."""

    def __init__(self, client: kube.Client) -> None:
        self.client = client

    async def request(self, method: str, path: str, *, json: Any, content_type: str) -> Obj:
        return await self.client.request(method, path, body=json, content_type=content_type)


# -- one mode ---------------------------------------------------------------------------------


async def watch_done(
    client: kube.Client, done: dict[str, tuple[float, Obj]], seen: dict[str, asyncio.Event]
) -> None:
    """Record when each job is first seen finished (monotonic time) and its status."""
    path = kube.path(models.API_VERSION, models.PLURAL, namespace=NAMESPACE)
    version = ""
    while True:
        try:
            if not version:
                _, version = await client.list(path)
            async for kind, obj in client.watch(path, resource_version=version):
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                phase = (obj.get("status") or {}).get("phase")
                name = obj["metadata"]["name"]
                if phase in models.TERMINAL_PHASES and name not in done:
                    done[name] = (time.monotonic(), obj)
                    seen.setdefault(name, asyncio.Event()).set()
        except kube.Gone:
            version = ""
        except kube.KubeError:
            await asyncio.sleep(0.2)


async def drive(
    client: kube.Client, mode: Mode, photos: dict[str, str], *, jobs: int, parallel: int,
    pool: str | None,
) -> None:  # fmt: skip
    done: dict[str, tuple[float, Obj]] = {}
    seen: dict[str, asyncio.Event] = {}
    watcher = asyncio.create_task(watch_done(client, done, seen))
    path = kube.path(models.API_VERSION, models.PLURAL, namespace=NAMESPACE)
    gate = asyncio.Semaphore(parallel)

    async def one(index: int) -> None:
        name = f"{mode.name}-{index:04d}"
        async with gate:
            started = time.monotonic()
            await client.create(path, job_body(name, photos, pool=pool))
            await seen.setdefault(name, asyncio.Event()).wait()
        finished, obj = done[name]
        mode.record(name, obj, finished - started)

    try:
        await asyncio.gather(*(one(index) for index in range(jobs)))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def drive_pairs(
    client: kube.Client, first: Mode, again: Mode, photos: dict[str, str], *, jobs: int,
    parallel: int, pool: str,
) -> int:  # fmt: skip
    """``jobs`` pairs (a job, then the same request again once it has succeeded), ``parallel``
    pairs at a time; each job's create→Succeeded goes into its mode. Returns how many repeats
    reported a reused result."""
    done: dict[str, tuple[float, Obj]] = {}
    seen: dict[str, asyncio.Event] = {}
    watcher = asyncio.create_task(watch_done(client, done, seen))
    path = kube.path(models.API_VERSION, models.PLURAL, namespace=NAMESPACE)
    gate = asyncio.Semaphore(parallel)
    reused = 0

    async def one(mode: Mode, name: str, seed: int) -> Obj | None:
        started = time.monotonic()
        await client.create(path, job_body(name, photos, pool=pool, seed=seed))
        await seen.setdefault(name, asyncio.Event()).wait()
        finished, obj = done[name]
        return obj if mode.record(name, obj, finished - started) else None

    async def pair(index: int) -> None:
        nonlocal reused
        seed = 1_000_000 + index
        async with gate:
            if await one(first, f"first-{index:04d}", seed) is None:
                return
            obj = await one(again, f"again-{index:04d}", seed)
        if obj is not None and ((obj["status"].get("result") or {}).get("reusedFrom")):
            reused += 1

    try:
        await asyncio.gather(*(pair(index) for index in range(jobs)))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return reused


async def drive_gateway_pairs(
    url: str, key: str, first: Mode, again: Mode, photos: dict[str, str], *, jobs: int,
    parallel: int,
) -> int:  # fmt: skip
    """As :func:`drive_pairs`, through the gateway: each job is a ``POST /generate?wait=120`` of
    the original API's JSON with a seed, timed from the request to its answer. Returns how many
    repeats the gateway's ``GET /jobs/{id}`` calls reused."""
    gate = asyncio.Semaphore(parallel)
    reused = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as http:

        async def one(mode: Mode, seed: int) -> str | None:
            request = {
                "personImage": photos["person"],
                "clothingImages": [photos["shirt"]],
                "placeImage": photos["place"],
                "seed": seed,
            }
            started = time.monotonic()
            answer = await http.post("/generate", params={"wait": "120"}, json=request)
            elapsed = time.monotonic() - started
            if answer.status_code != 200 or answer.json().get("status") != "success":
                mode.failed += 1
                print(f"  gateway: {answer.status_code} {answer.text[:300]}", file=sys.stderr)
                return None
            mode.total.append(elapsed)
            return str(answer.headers["Location"]).rsplit("/", 1)[-1]

        async def pair(index: int) -> None:
            nonlocal reused
            seed = 2_000_000 + index
            async with gate:
                if await one(first, seed) is None:
                    return
                job = await one(again, seed)
            if job is not None:
                view = (await http.get(f"/jobs/{job}")).json()
                if (view.get("result") or {}).get("reused"):
                    reused += 1

        await asyncio.gather(*(pair(index) for index in range(jobs)))
    return reused


def count_requests(
    plane: cp.ControlPlane, since: int, mode: Mode, *, operator: str, worker: str
) -> None:
    """The audit log's requests since ``since``, by component (the benchmark's own left out;
    the pod status writes it makes in the kubelet's place counted as the kubelet's)."""
    seen: set[str] = set()
    for event in plane.audit_events(since=since):
        if event.get("auditID") in seen:
            continue  # a watch's start and end
        seen.add(str(event.get("auditID")))
        agent = str(event.get("userAgent") or "")
        user = str((event.get("user") or {}).get("username") or "")
        ref = event.get("objectRef") or {}
        if agent.startswith(KUBELET):
            if ref.get("resource") == "pods" and ref.get("subresource") == "status":
                mode.requests["kubelet"] += 1
            continue  # the stand-in's own bookkeeping (finalizers, its polling)
        if agent.startswith(DRIVER):
            continue
        if user == operator:
            mode.requests["operator"] += 1
        elif user == worker:
            mode.requests["workers"] += 1
        elif agent.startswith("kube-controller-manager"):
            mode.requests["controllers"] += 1
        elif agent.startswith("kube-scheduler"):
            mode.requests["scheduler"] += 1
        elif agent.startswith("kwok"):
            mode.requests["kubelet"] += 1
        else:
            mode.requests["other"] += 1


@contextlib.asynccontextmanager
async def admin(plane: cp.ControlPlane, agent: str) -> AsyncIterator[kube.Client]:
    async with kube.Client(
        kube.Connection.from_kubeconfig(plane.kubeconfig), user_agent=agent
    ) as client:
        yield client


async def run(args: argparse.Namespace) -> tuple[list[Mode], dict[str, int]]:
    """Every mode asked for, in order; and per reuse mode ("reuse", "gateway reuse") how many
    repeats were reused."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="pool-bench-"))
    modes = []
    reused: dict[str, int] = {}
    with cluster() as plane, contextlib.ExitStack() as stack:
        server = stack.enter_context(contextlib.contextmanager(s3.start)())
        results = server.new_bucket("results")
        photos = inputs(server)
        profiles = work / "profiles.yaml"
        profiles.write_text(yaml.safe_dump([pool_inputs.gpu_profile(work / "tiny", PROFILE)]))
        settings = {
            "COMPOSE_OUTPUT_BUCKET": results,
            "COMPOSE_S3_ENDPOINT_URL": server.endpoint_url,
            "COMPOSE_RECONCILE_INTERVAL_SECONDS": "10",
        }
        operator = stack.enter_context(running_operator(plane, NAMESPACE, profiles, work, settings))
        accounts, _ = await _service_accounts(plane)
        worker_account = next(name for name in accounts if name.endswith("-worker"))
        kubeconfig = plane.service_account_kubeconfig(
            NAMESPACE, worker_account, work / "worker.kubeconfig"
        )
        env = {
            **node_env(work, server.env()),
            "KUBECONFIG": str(kubeconfig),
            "COMPOSE_LOG_LEVEL": "WARNING",
        }
        worker_user = f"system:serviceaccount:{NAMESPACE}:{worker_account}"
        for name in args.modes:
            mode = Mode(name)
            print(f"{name}: {args.jobs} jobs, {args.workers} at a time ...", file=sys.stderr)
            async with admin(plane, DRIVER) as client, admin(plane, KUBELET) as kubelet_client:
                warm = functools.partial(
                    warm_pool, client, kubelet_client, env=env, workers=args.workers, logs=work
                )
                if name == "gateway-reuse":
                    again = Mode("gateway reuse: again")
                    mode = Mode("gateway reuse: first")
                    uploads = server.new_bucket("uploads")
                    own = {}
                    for photo, body in pool_inputs.photos().items():
                        key = f"uploads/{OWNER}/photos/{photo}.png"  # the key's own uploads
                        server.client().put_object(Bucket=uploads, Key=key, Body=body)
                        own[photo] = f"s3://{uploads}/{key}"
                    gateway_settings = {
                        **server.env(),
                        "COMPOSE_GATEWAY_INPUTS_BUCKET": uploads,
                        "COMPOSE_GATEWAY_S3_ENDPOINT_URL": server.endpoint_url,
                        "COMPOSE_GATEWAY_AWS_REGION": s3.REGION,
                        "COMPOSE_GATEWAY_PROFILE": PROFILE,
                        "COMPOSE_GATEWAY_DEFAULT_POOL": GATEWAY_POOL,
                    }
                    gateway = running_gateway(plane, NAMESPACE, work / "gateway", owner=OWNER,
                                              settings=gateway_settings)  # fmt: skip
                    async with warm(GATEWAY_POOL):
                        with gateway as (url, key):
                            reused["gateway reuse"] = await drive_gateway_pairs(
                                url, key, mode, again, own, jobs=args.jobs,
                                parallel=args.workers,
                            )  # fmt: skip
                    modes.extend([mode, again])
                    continue
                if name == "reuse":
                    again = Mode("reuse: again")
                    mode = Mode("reuse: first")
                    async with warm(REUSE_POOL):
                        reused["reuse"] = await drive_pairs(
                            client, mode, again, photos, jobs=args.jobs, parallel=args.workers,
                            pool=REUSE_POOL,
                        )  # fmt: skip
                    modes.extend([mode, again])
                    continue
                if name == "pool":
                    async with warm(POOL):
                        since = plane.audit_offset()
                        await drive(client, mode, photos, jobs=args.jobs, parallel=args.workers,
                                    pool=POOL)  # fmt: skip
                        count_requests(plane, since, mode, operator=operator.user,
                                       worker=worker_user)  # fmt: skip
                else:
                    logs = work / "jobs"
                    logs.mkdir(exist_ok=True)
                    async with JobKubelet(kubelet_client, env, logs):
                        since = plane.audit_offset()
                        await drive(client, mode, photos, jobs=args.jobs, parallel=args.workers,
                                    pool=None)  # fmt: skip
                        count_requests(plane, since, mode, operator=operator.user,
                                       worker=worker_user)  # fmt: skip
            modes.append(mode)
    return modes, reused


async def _service_accounts(plane: cp.ControlPlane) -> tuple[list[str], None]:
    async with admin(plane, DRIVER) as client:
        items, _ = await client.list(kube.path("v1", "serviceaccounts", namespace=NAMESPACE))
    return [item["metadata"]["name"] for item in items], None


@contextlib.asynccontextmanager
async def warm_pool(
    client: kube.Client,
    kubelet_client: kube.Client,
    name: str,
    *,
    env: dict[str, str],
    workers: int,
    logs: pathlib.Path,
) -> AsyncIterator[None]:
    """A CompositionPool of ``workers`` real worker processes (the kubelet's part played with
    ``kubelet_client``), loaded, warmed up and ready before any job is timed; deleted after."""
    folder = logs / f"{name}-workers"
    folder.mkdir(exist_ok=True)
    harness = WorkerKubelet(
        kubelet_client, NAMESPACE, name, command=worker_command, env=env, logs=folder
    )
    body = {
        "apiVersion": models.API_VERSION,
        "kind": protocol.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"profile": PROFILE, "minReplicas": workers, "maxReplicas": workers},
    }
    path = kube.path(models.API_VERSION, protocol.PLURAL, namespace=NAMESPACE)
    async with harness:
        await client.create(path, body)
        deadline = time.monotonic() + 300
        while (((await client.get(f"{path}/{name}")).get("status") or {})
               .get("readyWorkers") != workers):  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool's {workers} workers were not ready within 300 s")
            await asyncio.sleep(0.5)
        yield
        await client.delete(f"{path}/{name}")


# -- the report -------------------------------------------------------------------------------


def _ms(values: Sequence[float], pct: float) -> str:
    """A percentile in milliseconds; a dash where the mode has no such figure (the gateway
    modes time the request only)."""
    return f"{percentile(values, pct) * 1000:.0f} ms" if values else "—"


def report(modes: Sequence[Mode], reused: dict[str, int] | None = None) -> str:
    reused = reused or {}
    by_name = {mode.name: mode for mode in modes}
    lines = [
        "| mode | jobs | overhead p50 | overhead p99 | outside the run p50 | outside the run p99 "
        "| create→Succeeded (gateway: request→answer) p50 | generate p50 | requests/job, ours "
        "| requests/job, all |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ours = ("operator", "workers")
    everyone = ("operator", "workers", "controllers", "scheduler", "kubelet", "other")
    for mode in modes:
        # Reuse mode does not count requests (a reused job's are a generated one's).
        requests = (
            f"| {mode.per_job(*ours):.2f} | {mode.per_job(*everyone):.2f} |"
            if mode.requests
            else "| — | — |"
        )
        lines.append(
            f"| {mode.name} | {len(mode.total)} ok, {mode.failed} failed "
            f"| {_ms(mode.overhead, 50)} | {_ms(mode.overhead, 99)} "
            f"| {_ms(mode.orchestration, 50)} | {_ms(mode.orchestration, 99)} "
            f"| {_ms(mode.total, 50)} | {_ms(mode.generate, 50)} " + requests
        )
    lines.append("")
    for mode in (mode for mode in modes if mode.requests):
        split = ", ".join(
            f"{key} {mode.per_job(key):.2f}" for key in everyone if mode.requests[key]
        )
        lines.append(f"{mode.name}: requests per job by component: {split}")
    for kind, what in (("reuse", "create→Succeeded"), ("gateway reuse", "request→answer")):
        if f"{kind}: first" not in by_name or f"{kind}: again" not in by_name:
            continue
        first, again = by_name[f"{kind}: first"], by_name[f"{kind}: again"]
        if lines[-1]:
            lines.append("")
        lines.append(
            f"{kind}: the same request again, {what} p50 "
            f"{percentile(again.total, 50) * 1000:.0f} ms, p99 "
            f"{percentile(again.total, 99) * 1000:.0f} ms, against the first run's p50 "
            f"{percentile(first.total, 50) * 1000:.0f} ms "
            f"({percentile(again.total, 50) / percentile(first.total, 50):.3f}x); "
            f"{reused.get(kind, 0)} of {len(again.total) + again.failed} repeats reused"
        )
    if "pool" in by_name and "job" in by_name:
        pool, job = by_name["pool"], by_name["job"]
        lines.append("")
        lines.append(
            "pool/job: overhead p50 "
            f"{percentile(pool.overhead, 50) / percentile(job.overhead, 50):.3f}x, p99 "
            f"{percentile(pool.overhead, 99) / percentile(job.overhead, 99):.3f}x; requests "
            f"per job, ours {pool.per_job(*ours) / max(job.per_job(*ours), 1e-9):.2f}x, all "
            f"{pool.per_job(*everyone) / max(job.per_job(*everyone), 1e-9):.2f}x"
        )
    return "\n".join(lines)


def as_json(modes: Sequence[Mode], reused: dict[str, int] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        mode.name: {
            "jobs": len(mode.total),
            "failed": mode.failed,
            "overhead_p50_s": percentile(mode.overhead, 50),
            "overhead_p99_s": percentile(mode.overhead, 99),
            "outside_run_p50_s": percentile(mode.orchestration, 50),
            "outside_run_p99_s": percentile(mode.orchestration, 99),
            "total_p50_s": percentile(mode.total, 50),
            "generate_p50_s": percentile(mode.generate, 50),
            "requests_per_job": {key: mode.per_job(key) for key in mode.requests},
            "overhead_mean_s": statistics.fmean(mode.overhead) if mode.overhead else None,
        }
        for mode in modes
    }
    if reused:
        found["reused"] = reused
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100, help="jobs per mode (default 100)")
    parser.add_argument("--workers", type=int, default=2, choices=(1, 2, 3),
                        help="pool workers, and jobs in flight in both modes (default 2; the "
                        "test cluster has three GPU nodes)")  # fmt: skip
    parser.add_argument("--modes", default="pool,job",
                        help="pool,job (default), or one of them; reuse: pairs of the same "
                        "request on a warm pool; gateway-reuse: the same through the "
                        "gateway")  # fmt: skip
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - set(MODES)
    if unknown or not args.modes:
        parser.error(f"--modes: some of {', '.join(MODES)}, not {sorted(unknown)}")
    if args.jobs < 1:
        parser.error("--jobs: at least 1")
    modes, reused = asyncio.run(run(args))
    print(report(modes, reused))
    if args.json:
        args.json.write_text(json.dumps(as_json(modes, reused), indent=2))


if __name__ == "__main__":
    main()
