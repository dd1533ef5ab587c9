"""The emulator as its own process: ``python -m tests.support.kube_emulator --port N``."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import subprocess
import sys
from typing import Any

from tests.support import kube_emulator
from tests.support.cluster_client import ClusterClient
from tests.support.resources import JOBS

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_runs_prints_its_url_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.kube_emulator", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("KUBE_EMULATOR_URL=http://127.0.0.1:")
        url = line.split("=", 1)[1]
        assert asyncio.run(_create_and_get(url))["metadata"]["generation"] == 1
        records = kube_emulator.fetch_request_log(url)
        assert [(r.verb, r.resource) for r in records] == [("create", "jobs"), ("get", "jobs")]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _create_and_get(url: str) -> dict[str, Any]:
    async with ClusterClient.at(url) as kube:
        await kube.create(JOBS, {"metadata": {"name": "j"}, "spec": {}})
        return await kube.get(JOBS, "j")
