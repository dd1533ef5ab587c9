"""The real operator (the ``compose-operator`` console script) against the API emulator.

The operator runs as a subprocess with ``COMPOSE_KUBE_URL`` pointing at the emulator, exactly
as the benchmark runs it; tests play users, the Job controller and the kubelet through
tests/support/kube_cluster.py and poll the CompositionJob's status with a deadline.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest
import pytest_asyncio

from tests.support import cluster_client
from tests.support.kube_fixtures import kube, kube_emulator, kube_emulator_thread, kube_url
from tests.support.resources import COMPOSITION_JOBS, JOBS

__all__ = ["kube", "kube_emulator", "kube_emulator_thread", "kube_url"]

Obj = dict[str, Any]


class OperatorProcess:
    """Start, kill (SIGKILL, as a crash) and restart ``compose-operator``."""

    def __init__(self, env: Mapping[str, str], log_path: pathlib.Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "compose_operator"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self) -> None:
        """Kill at once, with no chance to clean up: a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def operator_env(kube_url: str, profiles_path: pathlib.Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    env.update(
        COMPOSE_KUBE_URL=kube_url,
        COMPOSE_PROFILES_PATH=str(profiles_path),
        COMPOSE_OUTPUT_BUCKET="results-bucket",
        COMPOSE_STANDALONE="true",
        COMPOSE_METRICS_PORT="0",
        COMPOSE_HEALTH_PORT="0",
        COMPOSE_RECONCILE_INTERVAL_SECONDS="0.5",
        COMPOSE_JOB_TTL_SECONDS="600",
    )
    env.update(extra)
    return env


@pytest.fixture
def operator_settings() -> dict[str, str]:
    """Extra COMPOSE_* variables for one test (override the fixture in a module)."""
    return {}


@pytest.fixture
def operator(
    kube_url: str,
    profiles_path: pathlib.Path,
    operator_settings: dict[str, str],
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        operator_env(kube_url, profiles_path, **operator_settings), tmp_path / "operator.log"
    )
    process.start()
    yield process
    process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        sys.stderr.write(f"--- operator log ---\n{process.log()[-20000:]}\n")


@pytest_asyncio.fixture
async def client(kube_url: str) -> AsyncIterator[cluster_client.ClusterClient]:
    async with cluster_client.ClusterClient.at(kube_url) as api:
        yield api


def condition(obj: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            found: Mapping[str, Any] = item
            return found
    return None


async def wait_status(
    kube: cluster_client.ClusterClient,
    name: str,
    *,
    phase: str | None = None,
    reason: tuple[str, str] | None = None,
    namespace: str = "default",
    timeout: float = 20.0,  # noqa: ASYNC109 (a polling deadline)
) -> Obj:
    """Poll the CompositionJob until it has ``phase`` and/or condition ``reason=(type, reason)``."""

    def ready(obj: Obj | None) -> bool:
        if obj is None:
            return False
        if phase is not None and (obj.get("status") or {}).get("phase") != phase:
            return False
        if reason is not None:
            found = condition(obj, reason[0])
            return found is not None and found.get("reason") == reason[1]
        return True

    found = await kube.wait_for(COMPOSITION_JOBS, name, ready, namespace=namespace, timeout=timeout)
    if found is None:
        raise AssertionError(f"{name} vanished")
    return found


async def wait_job(
    kube: cluster_client.ClusterClient,
    namespace: str = "default",
    count: int = 1,
    timeout: float = 20.0,  # noqa: ASYNC109
) -> list[Obj]:
    """Poll until ``count`` child Jobs exist in the namespace."""
    return await kube.wait_for_list(
        JOBS,
        lambda items: len(items) >= count,
        namespace=namespace,
        label_selector="app.kubernetes.io/managed-by=compose-operator",
        timeout=timeout,
    )


async def rewind_to_intent(kube: cluster_client.ClusterClient, name: str) -> Obj:
    """Set the status back to what the operator writes just before it creates the Job
    (accepted, admitted, Started=Unknown), as if it had died right after that write."""
    cj = await kube.get(COMPOSITION_JOBS, name)
    kept = [c for c in cj["status"]["conditions"] if c["type"] in ("Accepted", "Queued")]
    accepted = next(c for c in kept if c["type"] == "Accepted")
    intent = {
        "type": "Started",
        "status": "Unknown",
        "reason": "JobCreated",
        "message": "creating the job",
        "lastTransitionTime": accepted["lastTransitionTime"],  # written together
    }
    return await kube.patch_status(
        COMPOSITION_JOBS,
        name,
        {"conditions": [*kept, intent], "phase": "Starting", "attempts": None, "startTime": None},
    )


async def status_patched_before_job_created(kube: cluster_client.ClusterClient, name: str) -> bool:
    """Whether the operator's first status patch of ``name`` came before it created a Job."""
    mine = [r for r in await kube.request_log() if r.user_agent != "compose-test-client"]
    status_patch = next(
        i
        for i, r in enumerate(mine)
        if r.resource == "compositionjobs" and r.subresource == "status" and r.name == name
    )
    create = next(i for i, r in enumerate(mine) if r.resource == "jobs" and r.verb == "create")
    return status_patch < create
