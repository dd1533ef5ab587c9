"""Operator benchmark: N CompositionJobs through their whole life, the operator's costs per job.

    python -m benchmarks.operator_bench --jobs 100
    python -m benchmarks.operator_bench --jobs 1000 --operators naive,compose --json out.json

For each operator (the naive one-handler kopf operator in benchmarks/naive_operator.py as the
baseline, then ``compose-operator``), in the same run and on the same machine:

1. start a fresh real test control plane (tests/support/control_plane.py: kube-apiserver, etcd,
   the controllers, kwok), so the operator's request counts are its own;
2. start the operator as a subprocess with COMPOSE_STANDALONE=true, a profiles file and a
   kubeconfig holding the token of the ``bench-operator`` service account (cluster-admin, so that
   both operators run unchanged), and wait until it watches CompositionJobs;
3. create N CompositionJobs; the real Job controller and scheduler make and place the pods, kwok
   runs them, and the script plays only each container's end (a successful termination
   message), until every CompositionJob is done (phase Succeeded or Failed: both operators
   follow the Job to the end and write the result);
4. print, for the operator process alone: API requests per job (from the API server's audit
   log, by the operator's service account), object writes and Events per job, the most status
   writes and Events any one job had, the status writes that came at least the coalescing
   window after the same job's previous one, CPU milliseconds per job (user+system, psutil),
   peak RSS, and create-to-Job latency p50/p99 -- with ratios to the baseline (interleaved
   runs of one operator and the baseline: each to the baseline run before it).

``--operators compose,traced`` compares compose-operator with tracing off (the default: no
OTLP endpoint, a no-op tracer) and on (its spans exported over OTLP/HTTP to a real OpenTelemetry
Collector, tests/support/otel_collector.py, running on the same machine).

``compose:N`` in ``--operators`` runs compose-operator with COMPOSE_MAX_RUNNING_PER_NAMESPACE=N
(the chart's default is 4); ``--step-delay S`` makes each container take S seconds before it
ends (a slow workload).
The API server, etcd, the controllers and kwok share the machine's cores with the operator:
compare operators within one run, on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import psutil
import yaml

from compose_api import contract, models
from compose_api.kube import Gone, KubeError, NotFound
from compose_operator.settings import OperatorSettings
from tests.support import control_plane, otel_collector, resources
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, JOBS, PODS

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
PROFILES_YAML = """\
- name: instantid-sdxl
  description: InstantID on SDXL, one A10G
  resources: {gpu: 1, cpu: "3", memory: 14Gi}
  placement:
    instanceTypes: [g5.xlarge, g5.2xlarge]
  models:
    base: {uri: "hf://stabilityai/stable-diffusion-xl-base-1.0"}
  licence: {name: openrail++, commercialUse: true}
"""
Obj = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class OperatorKind:
    key: str
    title: str
    command: tuple[str, ...]
    done: Callable[[Mapping[str, Any]], bool]
    traced: bool = False  # exports its spans to a real OpenTelemetry Collector


def _done(cj: Mapping[str, Any]) -> bool:
    return (cj.get("status") or {}).get("phase") in (models.Phase.SUCCEEDED, models.Phase.FAILED)


OPERATORS = {
    "naive": OperatorKind(
        "naive",
        "naive kopf",
        (sys.executable, "-m", "benchmarks.naive_operator"),
        _done,
    ),
    "compose": OperatorKind(
        "compose",
        "compose-operator",
        (sys.executable, "-m", "compose_operator"),
        _done,
    ),
    # Not a baseline: the least an operator can do (benchmarks/floor_operator.py).
    "floor": OperatorKind(
        "floor",
        "floor (Job + 1 patch)",
        (sys.executable, "-m", "benchmarks.floor_operator"),
        _done,
    ),
    "traced": OperatorKind(
        "traced",
        "compose-operator, tracing on",
        (sys.executable, "-m", "compose_operator"),
        _done,
        traced=True,
    ),
}


@dataclasses.dataclass
class Result:
    operator: str
    jobs: int
    done: int
    succeeded: int
    requests: int
    writes: int  # object writes: creates, patches and deletes, Events not counted
    events: int
    requests_by_verb: dict[str, int]
    # per CompositionJob: its status writes and its Events (the most any one job had)
    max_status_writes: int
    max_events: int
    # status writes that came at least the coalescing window after the same job's previous one:
    # the phase changes and the progress writes a job that waits that long may have
    late_status_writes: int
    # status writes that only moved a waiting job's queue position (from the audited bodies)
    position_writes: int
    cpu_ms: float
    system_cpu_ms: float  # of cpu_ms, in the kernel (socket reads and writes, waits, wakeups)
    peak_rss_mib: float
    create_to_job_ms: list[float]
    create_to_done_ms: list[float]
    wall_s: float
    api_server_cpu_s: float  # kube-apiserver's and etcd's CPU in the window, serving everyone

    def summary(self) -> dict[str, float]:
        return {
            "requests_per_job": self.requests / self.jobs,
            "writes_per_job": self.writes / self.jobs,
            "events_per_job": self.events / self.jobs,
            "max_status_writes": float(self.max_status_writes),
            "max_events": float(self.max_events),
            "late_status_writes_per_job": self.late_status_writes / self.jobs,
            "position_writes_per_job": self.position_writes / self.jobs,
            "cpu_ms_per_job": self.cpu_ms / self.jobs,
            "system_cpu_ms_per_job": self.system_cpu_ms / self.jobs,
            "peak_rss_mib": self.peak_rss_mib,
            "create_to_job_p50_ms": _percentile(self.create_to_job_ms, 50),
            "create_to_job_p99_ms": _percentile(self.create_to_job_ms, 99),
            "create_to_done_p50_ms": _percentile(self.create_to_done_ms, 50),
            "wall_s": self.wall_s,
            "jobs_per_s": self.done / self.wall_s if self.wall_s else 0.0,
            "api_server_busy": self.api_server_cpu_s / self.wall_s if self.wall_s else 0.0,
        }


_WRITES = {"create", "patch", "update", "delete", "deletecollection"}


def _percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


# -- processes --------------------------------------------------------------------------------


@dataclasses.dataclass
class Cluster:
    """The real test control plane (tests/support/control_plane.py), started per operator run.

    The operators log in with a kubeconfig holding the token of the ``bench-operator`` service
    account (bound to cluster-admin, so that both operators run unchanged); their requests are
    read from the API server's audit log by that user. The driver is the cluster admin; the real
    Job controller and scheduler create and place the pods, kwok runs them, and the driver plays
    only each container's end.
    """

    plane: control_plane.ControlPlane
    user: str
    kubeconfig: pathlib.Path

    def request_log(self, since: int = 0) -> list[resources.RequestRecord]:
        """The operator's requests since the ``since``-th, in the order they ended."""
        return self.plane.request_records(user=self.user)[since:]

    def cpu_seconds(self) -> float:
        """kube-apiserver's and etcd's CPU time so far (user + system)."""
        total = 0.0
        for process in self.plane.processes:
            if process.name in {"kube-apiserver", "etcd"}:
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(process.popen.pid).cpu_times()
                    total += float(times.user + times.system)
        return total

    def client(self) -> ClusterClient:
        return self.plane.admin(NAMESPACE)


@contextlib.contextmanager
def real_cluster(workdir: pathlib.Path, jobs: int) -> Iterator[Cluster]:
    with control_plane.start() as plane:
        _apply_crds(plane)
        # Room for every pod (1 GPU, 3 CPUs, 14 GiB each): the jobs wait for nothing but the
        # operators and the control plane, never for capacity.
        per_node = max(8, jobs // 2)
        for index in range(4):
            plane.ensure_gpu_node(
                f"gpu-{index}",
                capacity_type="on-demand",
                gpus=per_node,
                cpu=str(4 * per_node),
                memory=f"{16 * per_node}Gi",
            )
        plane.create_namespace(NAMESPACE)
        # The operator's and the inference pods' (compose-operator's default) accounts.
        for account in ("bench-operator", "compose-inference"):
            plane.request(
                "POST",
                f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
            )
        plane.request(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "bench-operator"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": "bench-operator",
                              "namespace": NAMESPACE}],
            },
        )  # fmt: skip
        kubeconfig = plane.service_account_kubeconfig(
            NAMESPACE, "bench-operator", workdir / "operator.kubeconfig"
        )
        yield Cluster(plane, f"system:serviceaccount:{NAMESPACE}:bench-operator", kubeconfig)


# kube-apiserver holds every create of a custom resource for 2 s while its CRD has been
# Established for less than 2 s (so that all API servers of an HA cluster serve it first). A
# deployed CRD is long past that; the benchmark waits it out, or the first creates of the
# burst would measure that hold.
CRD_CREATE_HOLD_SECONDS = 2.0


def _apply_crds(plane: control_plane.ControlPlane) -> None:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        plane.request(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            yaml.safe_load(path.read_text()),
        )
    deadline = time.monotonic() + 60
    listing = f"/apis/{models.GROUP}/{models.VERSION}/namespaces/default/{models.PLURAL}"
    while True:
        try:
            plane.request("GET", listing)
            break
        except urllib.error.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    crd_path = (
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{models.PLURAL}.{models.GROUP}"
    )
    while (left := _create_hold_left(plane.request("GET", crd_path), _utcnow())) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {models.PLURAL}.{models.GROUP} not Established in 60 s")
        time.sleep(0.2)
    time.sleep(left)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _create_hold_left(crd: Mapping[str, Any], now: datetime.datetime) -> float | None:
    """Seconds until the API server stops holding creates of the CRD's resources (its
    Established time is given to the second, so one second more); None: not Established."""
    for condition in (crd.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Established" and condition.get("status") == "True":
            since = datetime.datetime.fromisoformat(condition["lastTransitionTime"])
            held = (since - now).total_seconds() + CRD_CREATE_HOLD_SECONDS + 1.0
            return max(0.0, held)
    return None


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def operator_process(
    kind: OperatorKind,
    workdir: pathlib.Path,
    kubeconfig: pathlib.Path,
    cap: int = 0,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    profiles = workdir / "profiles.yaml"
    profiles.write_text(PROFILES_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
        KUBECONFIG=str(kubeconfig),
        COMPOSE_STANDALONE="true",
        COMPOSE_PROFILES_PATH=str(profiles),
        COMPOSE_OUTPUT_BUCKET="results-bucket",
        COMPOSE_METRICS_PORT="0",
        COMPOSE_HEALTH_PORT="0",
        COMPOSE_MAX_RUNNING_PER_NAMESPACE=str(cap),
    )
    env.update(extra_env or {})
    log_path = workdir / f"{kind.key}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(kind.command), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        _stop(process)


def _log_tail(workdir: pathlib.Path, kind: OperatorKind) -> str:
    path = workdir / f"{kind.key}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


# -- the benchmark's side: users, Job controller and kubelet ---------------------------------


def composition_job(name: str) -> Obj:
    return {
        "apiVersion": "compose.nextunicorn.dev/v1alpha1",
        "kind": "CompositionJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "inputs": {
                "person": {"uri": "s3://inputs-bucket/person.jpg"},
                "clothing": [{"uri": "s3://inputs-bucket/shirt.jpg", "category": "upper"}],
                "place": {"uri": "s3://inputs-bucket/beach.png"},
            },
            "params": {"seed": 42},
            "profile": "instantid-sdxl",
        },
    }


def success_message(name: str) -> str:
    return contract.TerminationMessage(
        exit_code=0,
        reason=models.Reason.COMPLETED,
        result=models.Result(
            s3_uri=f"s3://results-bucket/{NAMESPACE}/{name}/result.png",
            sha256="0" * 64,
            width=1024,
            height=1024,
            seed=42,
        ),
        timings=models.Timings(model_load=1.0, inference=2.0, upload=0.1, total=3.5),
    ).to_json()


class Driver:
    """Creates the CompositionJobs and plays each container's end (the Job controller makes the
    pods, kwok runs them); records the times it sees."""

    def __init__(
        self, kube: ClusterClient, kind: OperatorKind, jobs: int, step_delay: float = 0.0
    ) -> None:
        self.kube = kube
        self.step_delay = step_delay
        self.kind = kind
        self.names = [f"cj-{index:05d}" for index in range(jobs)]
        self.created_at: dict[str, float] = {}
        self.job_seen_at: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self.succeeded: set[str] = set()
        self.all_done = asyncio.Event()
        self.errors: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self._job_owner: dict[str, str] = {}
        self._finished: set[str] = set()

    async def create_all(self, concurrency: int) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def create(name: str) -> None:
            async with gate:
                self.created_at[name] = time.monotonic()
                await self.kube.create(COMPOSITION_JOBS, composition_job(name))

        await asyncio.gather(*(create(name) for name in self.names))

    async def follow_jobs(self) -> None:
        async for _, job in _watch_forever(self.kube, JOBS):
            owner = _owner_name(job)
            if owner is not None:
                self._job_owner[job["metadata"]["name"]] = owner
                self.job_seen_at.setdefault(owner, time.monotonic())

    async def follow_compositions(self) -> None:
        async for _, cj in _watch_forever(self.kube, COMPOSITION_JOBS):
            name = cj["metadata"]["name"]
            if name in self.done_at or not self.kind.done(cj):
                continue
            self.done_at[name] = time.monotonic()
            if (cj.get("status") or {}).get("phase") != models.Phase.FAILED:
                self.succeeded.add(name)
            if len(self.done_at) == len(self.names):
                self.all_done.set()

    async def follow_pods(self) -> None:
        async for _, pod in _watch_forever(self.kube, PODS):
            uid = pod["metadata"]["uid"]
            if uid in self._finished or (pod.get("status") or {}).get("phase") != "Running":
                continue
            self._finished.add(uid)
            task = asyncio.create_task(self._finish(pod))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _finish(self, pod: Obj) -> None:
        job_name = (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name", "")
        try:
            owner = self._job_owner.get(job_name)
            if owner is None:
                owner = _owner_name(await self.kube.get(JOBS, job_name)) or job_name
            await asyncio.sleep(self.step_delay)
            await control_plane.finish_pod(
                self.kube, pod, exit_code=0, message=success_message(owner)
            )
        except NotFound:
            pass  # deleted under us: the operator's business
        except KubeError as exc:
            self.errors.append(f"{job_name}: {exc}")


def _cpu_ms(start_s: float, end_s: float) -> float:
    """CPU milliseconds between two readings of a process's CPU seconds. The kernel counts them
    in clock ticks (10 ms), so a short run may read the same count twice: the difference of the
    two sums is then a float rounding error, possibly below zero, and is taken as 0."""
    return max(0.0, round(1000 * (end_s - start_s), 3))


def _owner_name(obj: Mapping[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "CompositionJob":
            name: str = ref["name"]
            return name
    return None


async def _watch_forever(
    kube: ClusterClient, spec: resources.ResourceSpec
) -> AsyncIterator[tuple[str, Obj]]:
    """Watch with resumption, the way a controller does (from the start again on 410)."""
    since: str | None = None
    while True:
        try:
            async for kind, obj in kube.watch(
                spec, namespace=NAMESPACE, resource_version=since, timeout_seconds=300
            ):
                since = obj["metadata"].get("resourceVersion", since)
                if kind != "BOOKMARK":  # the API server's progress marks
                    yield kind, obj
        except Gone:
            since = None


async def _wait_ready(
    cluster: Cluster, process: subprocess.Popen[bytes], deadline_s: float, kind: OperatorKind
) -> None:
    """Until the operator watches CompositionJobs (seen in the audit log)."""
    deadline = time.monotonic() + deadline_s
    seen = 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind.title} exited with {process.returncode}")
        records = await asyncio.to_thread(cluster.request_log, seen)
        seen += len(records)
        if any(r.verb == "watch" and r.resource == COMPOSITION_JOBS.plural for r in records):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{kind.title} did not start watching within {deadline_s} s")


async def _sample_rss(process: psutil.Process, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], process.memory_info().rss / 2**20)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await stop.wait()


def _peak_rss_mib(process: psutil.Process, sampled: float) -> float:
    """VmHWM (the kernel's own high-water mark) where available, else the sampled peak."""
    with contextlib.suppress(OSError, psutil.Error):
        for line in pathlib.Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return max(sampled, int(line.split()[1]) / 1024)
    return sampled


@dataclasses.dataclass(frozen=True)
class Scenario:
    jobs: int
    concurrency: int
    timeout_s: float
    cap: int = 0
    step_delay: float = 0.0
    keep_log: pathlib.Path | None = None  # where the operator's log is copied after the run


async def run_one(kind: OperatorKind, scenario: Scenario) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind.key}-") as tmp:
        workdir = pathlib.Path(tmp)
        cap = scenario.cap if kind.key != "naive" else 0  # the naive operator has no cap
        try:
            with contextlib.ExitStack() as stack:
                cluster = stack.enter_context(real_cluster(workdir, scenario.jobs))
                # Tracing on: the spans go to a real collector on this machine (its default
                # batch delay, as deployed), and every job's reconciles are traced.
                extra = stack.enter_context(otel_collector.start()).env() if kind.traced else {}
                extra.pop("OTEL_BSP_SCHEDULE_DELAY", None)
                process = stack.enter_context(
                    operator_process(kind, workdir, cluster.kubeconfig, cap, extra)
                )
                try:
                    return await _measure(kind, cluster, process, scenario)
                except Exception:
                    sys.stderr.write(f"--- {kind.title} log ---\n{_log_tail(workdir, kind)}\n")
                    raise
        finally:  # the operator has stopped: its log is complete (none if it never started)
            log = workdir / f"{kind.key}.log"
            if scenario.keep_log is not None and log.exists():
                scenario.keep_log.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, scenario.keep_log)


async def _measure(
    kind: OperatorKind,
    cluster: Cluster,
    process: subprocess.Popen[bytes],
    scenario: Scenario,
) -> Result:
    jobs, concurrency, timeout_s = scenario.jobs, scenario.concurrency, scenario.timeout_s
    await _wait_ready(cluster, process, 60, kind)
    observed = psutil.Process(process.pid)
    async with cluster.client() as kube:
        driver = Driver(kube, kind, jobs, scenario.step_delay)
        followers = [
            asyncio.create_task(driver.follow_jobs()),
            asyncio.create_task(driver.follow_compositions()),
            asyncio.create_task(driver.follow_pods()),
        ]
        peak = [0.0]
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(observed, peak, stop_sampling))
        log_start = len(await asyncio.to_thread(cluster.request_log))
        cpu_start = observed.cpu_times()
        cluster_cpu_start = cluster.cpu_seconds()
        started = time.monotonic()
        try:
            await driver.create_all(concurrency)
            async with asyncio.timeout(timeout_s):
                await driver.all_done.wait()
        except TimeoutError:
            sys.stderr.write(
                f"{kind.title}: {len(driver.done_at)}/{jobs} done within {timeout_s} s\n"
            )
        finally:
            wall = time.monotonic() - started
            # What the operator still does for these jobs (Events it has queued) is theirs.
            await _quiet(observed)
            cpu_end = observed.cpu_times()
            cluster_cpu_end = cluster.cpu_seconds()
            stop_sampling.set()
            await sampler
            # Let the Job controller finish what it started (outside the measured window).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await asyncio.gather(*list(driver.tasks), return_exceptions=True)
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
        records = await asyncio.to_thread(cluster.request_log, log_start)
    if driver.errors:
        sys.stderr.write("benchmark driver errors:\n  " + "\n  ".join(driver.errors[:10]) + "\n")
    mine = records  # the operator's service account's only
    return Result(
        operator=kind.title,
        jobs=jobs,
        done=len(driver.done_at),
        succeeded=len(driver.succeeded),
        requests=len(mine),
        writes=sum(1 for r in mine if r.verb in _WRITES and r.resource != "events"),
        events=sum(1 for r in mine if r.verb == "create" and r.resource == "events"),
        requests_by_verb=dict(Counter(f"{r.verb} {r.resource}{_sub(r)}{_failed(r)}" for r in mine)),
        max_status_writes=max(_status_writes(mine).values(), default=0),
        max_events=max(_events(mine).values(), default=0),
        late_status_writes=_late_status_writes(mine),
        position_writes=_position_writes(mine),
        cpu_ms=_cpu_ms(cpu_start.user + cpu_start.system, cpu_end.user + cpu_end.system),
        system_cpu_ms=_cpu_ms(cpu_start.system, cpu_end.system),
        peak_rss_mib=_peak_rss_mib(observed, peak[0]),
        create_to_job_ms=[
            1000 * (driver.job_seen_at[n] - driver.created_at[n])
            for n in driver.names
            if n in driver.job_seen_at and n in driver.created_at
        ],
        create_to_done_ms=[
            1000 * (driver.done_at[n] - driver.created_at[n])
            for n in driver.names
            if n in driver.done_at and n in driver.created_at
        ],
        wall_s=wall,
        api_server_cpu_s=cluster_cpu_end - cluster_cpu_start,
    )


def _status_writes(records: Sequence[resources.RequestRecord]) -> Counter[str]:
    """Status writes per CompositionJob, by name."""
    return Counter(
        r.name or ""
        for r in records
        if r.resource == COMPOSITION_JOBS.plural and r.subresource == "status" and r.verb in _WRITES
    )


# compose-operator's COMPOSE_STATUS_COALESCE_SECONDS (the benchmark keeps the default)
COALESCE_SECONDS = float(OperatorSettings.model_fields["status_coalesce_seconds"].default)


def _late_status_writes(records: Sequence[resources.RequestRecord]) -> int:
    """Status writes that came at least :data:`COALESCE_SECONDS` after the same job's previous
    status write (as the API server saw them arrive). compose-operator writes progress within a
    phase only then: beyond its intent, start and end, a job's writes are among these."""
    last: dict[str, float] = {}
    late = 0
    for r in sorted(records, key=lambda r: r.at):
        if r.resource != COMPOSITION_JOBS.plural or r.subresource != "status":
            continue
        if r.verb not in _WRITES:
            continue
        name = r.name or ""
        if name in last and r.at - last[name] >= COALESCE_SECONDS - 0.05:
            late += 1
        last[name] = r.at
    return late


def _position_writes(records: Sequence[resources.RequestRecord]) -> int:
    """Status patches that rewrote a waiting job as waiting (``Queued`` after ``Queued``): the
    writes the queue's position refresh costs. compose-operator's merge patches carry the whole
    status, and the audit policy of the test control plane keeps the bodies of CompositionJob
    status patches."""
    last: dict[str, object] = {}
    count = 0
    for r in sorted(records, key=lambda r: r.at):
        if r.resource != COMPOSITION_JOBS.plural or r.subresource != "status":
            continue
        written = r.body.get("status") if isinstance(r.body, dict) else None
        phase = written.get("phase") if isinstance(written, dict) else None
        name = r.name or ""
        if phase == "Queued" and last.get(name) == "Queued":
            count += 1
        last[name] = phase
    return count


def _events(records: Sequence[resources.RequestRecord]) -> Counter[str]:
    """Events per CompositionJob (both operators name an Event ``<object>.<suffix>``)."""
    return Counter(
        (r.name or r.path.rsplit("/", 1)[-1]).rsplit(".", 1)[0]
        for r in records
        if r.resource == "events" and r.verb == "create"
    )


def _sub(record: resources.RequestRecord) -> str:
    return f"/{record.subresource}" if record.subresource else ""


def _failed(record: resources.RequestRecord) -> str:
    """`` (409)`` for a request the API server refused, so that retries show apart."""
    return f" ({record.status})" if record.status >= 400 else ""


# -- report ---------------------------------------------------------------------------------------

_ROWS = (
    ("requests_per_job", "API requests per job", "{:.2f}"),
    ("writes_per_job", "  object writes", "{:.2f}"),
    ("events_per_job", "  Events posted", "{:.2f}"),
    ("max_status_writes", "  most status writes, 1 job", "{:.0f}"),
    ("max_events", "  most Events, 1 job", "{:.0f}"),
    ("late_status_writes_per_job", "  status writes after a quiet window", "{:.2f}"),
    ("position_writes_per_job", "  status writes of a moved queue position", "{:.2f}"),
    ("cpu_ms_per_job", "CPU ms per job (user+sys)", "{:.1f}"),
    ("system_cpu_ms_per_job", "  of which system", "{:.1f}"),
    ("peak_rss_mib", "peak RSS (MiB)", "{:.1f}"),
    ("create_to_job_p50_ms", "create->Job p50 (ms)", "{:.0f}"),
    ("create_to_job_p99_ms", "create->Job p99 (ms)", "{:.0f}"),
    ("create_to_done_p50_ms", "create->done p50 (ms)", "{:.0f}"),
    ("wall_s", "wall time (s)", "{:.1f}"),
    ("jobs_per_s", "jobs done per second", "{:.1f}"),
    ("api_server_busy", "API server CPU share of wall", "{:.2f}"),
)


def _labels(results: Sequence[Result]) -> list[str]:
    """Each run's column title: its operator, numbered when the operator runs more than once."""
    counts = Counter(r.operator for r in results)
    seen: Counter[str] = Counter()
    labels = []
    for result in results:
        seen[result.operator] += 1
        number = f" #{seen[result.operator]}" if counts[result.operator] > 1 else ""
        labels.append(result.operator + number)
    return labels


def _baselines(results: Sequence[Result]) -> list[int]:
    """For each run after the first, the baseline run its ratios are taken to: the latest run of
    the first run's operator before it, so that interleaved runs are compared pair by pair (a
    later baseline run is compared with the first, which shows the spread between runs)."""
    if not results:
        return []
    chosen, latest = [], 0
    for index, result in enumerate(results[1:], start=1):
        if result.operator == results[0].operator:
            chosen.append(0)
            latest = index
        else:
            chosen.append(latest)
    return chosen


def report(results: Sequence[Result], jobs: int) -> str:
    lines = [
        f"operator benchmark: {jobs} CompositionJobs,"
        f" {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}Z, {os.cpu_count()} CPUs;"
        " the real test control plane (kube-apiserver, etcd, controllers, kwok)",
        "note: the API server, etcd, the controllers and kwok share these CPUs with the operator",
        "",
    ]
    labels = _labels(results)
    bases = _baselines(results)
    # Columns as wide as their longest title: long operator names stay apart.
    first = 2 + max(len(t) for t in ["jobs done / succeeded", *(t for _, t, _ in _ROWS)])
    width = 2 + max([18, *(len(label) for label in labels)])
    ratios = [f"{labels[i + 1]} / {labels[base]}" for i, base in enumerate(bases)]
    ratio_width = 2 + max([0, *(len(r) for r in ratios)])
    header = f"{'metric':<{first}}" + "".join(f"{label:>{width}}" for label in labels)
    header += "".join(f"{ratio:>{ratio_width}}" for ratio in ratios)
    lines.append(header)
    summaries = [r.summary() for r in results]
    for key, title, fmt in _ROWS:
        row = f"{title:<{first}}"
        row += "".join(f"{fmt.format(s[key]):>{width}}" for s in summaries)
        for index, base_index in enumerate(bases, start=1):
            base = summaries[base_index].get(key, 0.0)
            value = summaries[index][key] / base if base else float("nan")
            row += f"{value:>{ratio_width - 1}.2f}x"
        lines.append(row)
    lines.append(
        f"{'jobs done / succeeded':<{first}}"
        + "".join(f"{f'{r.done}/{r.succeeded} of {r.jobs}':>{width}}" for r in results)
    )
    for label, result in zip(labels, results, strict=True):
        top = sorted(result.requests_by_verb.items(), key=lambda kv: -kv[1])
        lines.append("")
        lines.append(f"{label} requests by verb and resource (per job):")
        lines.extend(f"  {name:<40} {count / result.jobs:8.2f}" for name, count in top)
    return "\n".join(lines)


# -- memory with many finished CompositionJobs present ---------------------------------------


def finished_status(name: str) -> Obj:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = json.loads(success_message(name))["result"]
    return {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "conditions": [
            {"type": kind, "status": "True", "reason": reason, "message": reason.lower(),
             "lastTransitionTime": now}
            for kind, reason in (("Accepted", "Valid"), ("Started", "PodRunning"),
                                 ("Succeeded", "Completed"))
        ],
        "startTime": now,
        "completionTime": now,
        "result": result,
        "seed": 42,
    }  # fmt: skip


async def _create_finished(kube: ClusterClient, count: int, concurrency: int = 16) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        name = f"done-{index:05d}"
        async with gate:
            await kube.create(COMPOSITION_JOBS, composition_job(name))
            await kube.patch_status(COMPOSITION_JOBS, name, finished_status(name))

    await asyncio.gather(*(one(i) for i in range(count)))


async def _quiet(observed: psutil.Process, *, quiet_s: float = 1.0, limit_s: float = 30) -> None:
    """Until the process has used under 2 % of a CPU for ``quiet_s`` (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    last = observed.cpu_times()
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet_s)
        now = observed.cpu_times()
        if now.user + now.system - last.user - last.system < 0.02 * quiet_s:
            return
        last = now


async def _settled_rss(process: subprocess.Popen[bytes], *, quiet_s: float = 5.0) -> float:
    """RSS (MiB) once the process has used under 2 % of a CPU for ``quiet_s`` seconds."""
    observed = psutil.Process(process.pid)
    deadline = time.monotonic() + 600
    last = observed.cpu_times()
    calm_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = observed.cpu_times()
        used = now.user + now.system - last.user - last.system
        last = now
        if used > 0.02:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet_s:
            break
    return _peak_rss_mib(observed, observed.memory_info().rss / 2**20)


async def finished_memory(counts: Sequence[int]) -> list[tuple[int, float]]:
    """compose-operator's RSS on the real control plane with each count of finished jobs."""
    kind = OPERATORS["compose"]
    figures = []
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="bench-finished-") as tmp:
            workdir = pathlib.Path(tmp)
            with real_cluster(workdir, 8) as cluster:
                async with cluster.client() as kube:
                    started = time.monotonic()
                    await _create_finished(kube, count)
                    sys.stderr.write(
                        f"{count} finished jobs created in {time.monotonic() - started:.0f} s\n"
                    )
                with operator_process(kind, workdir, cluster.kubeconfig) as op:
                    await _wait_ready(cluster, op, 120, kind)
                    figures.append((count, await _settled_rss(op)))
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="CompositionJob operator benchmark")
    parser.add_argument("--jobs", type=int, default=100, help="CompositionJobs to run (<= 1000)")
    parser.add_argument(
        "--operators",
        default="naive,compose",
        help="comma-separated, the first is the baseline: naive, compose, compose:N "
        "(compose-operator with a namespace cap of N), traced (compose-operator exporting "
        "its spans to a real OpenTelemetry Collector), or floor (the least an operator can do: "
        "benchmarks/floor_operator.py)",
    )
    parser.add_argument(
        "--step-delay",
        type=float,
        default=0.0,
        help="seconds each container runs before it ends (a slow workload)",
    )
    parser.add_argument("--concurrency", type=int, default=10, help="creates in flight")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per operator")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write results here")
    parser.add_argument(
        "--keep-logs",
        type=pathlib.Path,
        default=None,
        help="copy each operator's log into this folder (<run>-<operator>.log)",
    )
    parser.add_argument(
        "--finished",
        type=int,
        default=None,
        help="instead: compose-operator's settled RSS on the real control plane with this many"
        " finished CompositionJobs present, against none in the same run",
    )
    args = parser.parse_args(argv)
    if args.finished is not None:
        figures = asyncio.run(finished_memory([0, args.finished]))
        (_, base), (count, rss) = figures
        print(
            f"compose-operator settled RSS, real control plane, {os.cpu_count()} CPUs:\n"
            f"  no CompositionJobs:          {base:8.1f} MiB\n"
            f"  {count} finished ones:  {rss:8.1f} MiB  ({rss / base:.2f}x,"
            f" {(rss - base) * 1024 / max(count, 1):.1f} KiB per finished job)"
        )
        return
    if not 1 <= args.jobs <= 1000:
        parser.error("--jobs: must be between 1 and 1000")
    chosen: list[tuple[OperatorKind, int]] = []
    for item in args.operators.split(","):
        key, _, cap = item.partition(":")
        if key not in OPERATORS or (cap and (key in ("naive", "floor") or not cap.isdigit())):
            parser.error(
                f"--operators: unknown {item!r};"
                " choose from naive, compose, compose:N, traced, floor"
            )
        kind = OPERATORS[key]
        if cap:
            kind = dataclasses.replace(kind, title=f"{kind.title} cap {cap}")
        chosen.append((kind, int(cap or 0)))
    timeout_s = args.timeout or 60 + args.jobs * (1.5 + 3 * args.step_delay)

    results = [
        asyncio.run(
            run_one(
                kind,
                Scenario(
                    args.jobs,
                    args.concurrency,
                    timeout_s,
                    cap,
                    args.step_delay,
                    keep_log=(
                        args.keep_logs / f"{number}-{kind.key}{cap or ''}.log"
                        if args.keep_logs is not None
                        else None
                    ),
                ),
            )
        )
        for number, (kind, cap) in enumerate(chosen, start=1)
    ]
    print(report(results, args.jobs), flush=True)
    if args.json is not None:
        payload = [dict(dataclasses.asdict(r), summary=r.summary()) for r in results]
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
