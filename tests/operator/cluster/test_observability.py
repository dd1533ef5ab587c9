"""Prometheus metrics, the liveness endpoint and Kubernetes Events of a running operator."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from compose_api import contract
from tests.operator.cluster.conftest import cj_with, create, end, running_pod
from tests.operator.operator_process import OperatorProcess
from tests.support.cluster_client import ClusterClient, poll
from tests.support.resources import EVENTS

pytestmark = pytest.mark.timeout(90)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


METRICS_PORT = _free_port()
HEALTH_PORT = _free_port()


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {"COMPOSE_METRICS_PORT": str(METRICS_PORT), "COMPOSE_HEALTH_PORT": str(HEALTH_PORT)}


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_metrics_liveness_and_events(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    await create(kube, namespace, "watched")
    await end(kube, await running_pod(kube, "watched"), contract.ExitCode.OK)
    await cj_with(kube, "watched", phase="Succeeded")

    text = ""
    succeeded = f'compose_jobs{{namespace="{namespace}",phase="Succeeded"}} 1.0'

    async def scraped() -> bool:
        nonlocal text
        try:
            status, text = await _get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
        except aiohttp.ClientError:
            return False
        return status == 200 and succeeded in text

    await poll(scraped, timeout=10, what=lambda: text[-2000:])
    assert (
        'compose_condition_transitions_total{reason="Completed",status="True",type="Succeeded"} 1.0'
        in text
    )
    assert "compose_queue_wait_seconds_count 1.0" in text
    assert 'compose_run_seconds_count{phase="Succeeded"} 1.0' in text

    status, _ = await _get(f"http://127.0.0.1:{HEALTH_PORT}/healthz")
    assert status == 200

    events = await kube.wait_for_list(
        EVENTS, lambda items: any(e.get("reason") == "Completed" for e in items)
    )
    mine = [e for e in events if e["involvedObject"]["name"] == "watched"]
    assert {"JobCreated", "Completed"} <= {e["reason"] for e in mine}
    text = " | ".join(e["message"] for e in mine)
    for transition in ("Accepted=True Valid", "Queued=False Admitted", "Succeeded=True Completed"):
        assert transition in text
