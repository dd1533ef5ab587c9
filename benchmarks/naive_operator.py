"""The baseline for benchmarks/operator_bench.py: the naive one-handler kopf operator.

``on.create`` -> create a batch/v1 Job -> patch the CompositionJob's status, and nothing else:
no Job or Pod tracking, no retries, no queueing, no events beyond kopf's own. The benchmark runs
it as a subprocess (``python benchmarks/naive_operator.py``) against the emulator at
COMPOSE_KUBE_URL, exactly as it runs ``compose-operator``, so both are measured the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import aiohttp
import kopf

GROUP, VERSION, PLURAL = "compose.nextunicorn.dev", "v1alpha1", "compositionjobs"


def _kube_url() -> str:
    url = os.environ.get("COMPOSE_KUBE_URL", "").rstrip("/")
    if not url:
        raise SystemExit("COMPOSE_KUBE_URL: required (the plain http URL of the API server)")
    return url


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.peering.standalone = True
    settings.posting.enabled = False
    settings.watching.server_timeout = 600


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=_kube_url(), insecure=True)


@kopf.on.create(GROUP, VERSION, PLURAL)
async def create_job(name: str, namespace: str | None, uid: str, **_: Any) -> dict[str, Any]:
    namespace = namespace or "default"
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{name}-job",
            "namespace": namespace,
            "labels": {"compose.nextunicorn.dev/job": name},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "CompositionJob",
                    "name": name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "inference",
                            "image": "compose-inference:latest",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                }
            },
        },
    }
    url = f"{_kube_url()}/apis/batch/v1/namespaces/{namespace}/jobs"
    async with aiohttp.ClientSession() as session, session.post(url, json=job) as response:
        if response.status >= 400:
            raise kopf.TemporaryError(f"job creation failed: HTTP {response.status}", delay=5)
    # kopf stores the result under status.create_job (one more status patch).
    return {"job": job["metadata"]["name"]}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(kopf.operator(clusterwide=True, standalone=True))


if __name__ == "__main__":
    main()
