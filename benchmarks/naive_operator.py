"""The baseline for benchmarks/operator_bench.py: the naive kopf operator, whole lifecycle.

What a first kopf operator for this CRD looks like, and no more: ``on.create`` creates a
batch/v1 Job (kopf records the handler's result in status: one more patch), and a Job event
handler waits for the Job to finish, reads its pod's termination message and writes the final
status (phase and result) on the CompositionJob. No queueing, no retries of its own, no deadlines,
no Events beyond kopf's. So it runs the same lifecycle as ``compose-operator`` (Job created,
followed to the end, final status with the result), and per-job costs compare like for like.

The benchmark runs it as a subprocess (``python -m benchmarks.naive_operator``) against the API
at COMPOSE_KUBE_URL, exactly as it runs ``compose-operator``, so both are measured the same way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
from typing import Any

import aiohttp
import kopf

GROUP, VERSION, PLURAL = "compose.nextunicorn.dev", "v1alpha1", "compositionjobs"


_CONNECTION: list[kopf.ConnectionInfo] = []  # the login's result, for the raw requests below


def _kube_url() -> str:
    return _CONNECTION[0].server.rstrip("/")


def _session() -> aiohttp.ClientSession:
    """A session with the login's credentials (a bearer token and CA from a kubeconfig)."""
    info = _CONNECTION[0]
    headers = {"Authorization": f"Bearer {info.token}"} if info.token else {}
    context: ssl.SSLContext | bool = False
    if info.server.startswith("https://"):
        context = (
            ssl.create_default_context(cafile=str(info.ca_path))
            if info.ca_path
            else ssl.create_default_context(cadata=base64.b64decode(info.ca_data or b"").decode())
        )
    return aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=context))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.peering.standalone = True
    settings.posting.enabled = False
    settings.watching.server_timeout = 600


@kopf.on.login()
async def login(logger: Any, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """COMPOSE_KUBE_URL (plain http, the emulator), else the kubeconfig (a real API server)."""
    url = os.environ.get("COMPOSE_KUBE_URL", "").rstrip("/")
    info = (
        kopf.ConnectionInfo(server=url, insecure=True)
        if url
        else kopf.login_with_kubeconfig(logger=logger, settings=settings)
    )
    if info is None:
        raise kopf.LoginError("neither COMPOSE_KUBE_URL nor a kubeconfig")
    _CONNECTION[:] = [info]
    return info


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
                    # GPU nodes are tainted; even a naive operator must tolerate that.
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
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
    async with _session() as session, session.post(url, json=job) as response:
        if response.status >= 400:
            raise kopf.TemporaryError(f"job creation failed: HTTP {response.status}", delay=5)
    # kopf stores the result under status.create_job (one more status patch).
    return {"job": job["metadata"]["name"]}


def _finished(status: dict[str, Any]) -> str | None:
    for item in status.get("conditions") or []:
        if item.get("type") in ("Complete", "Failed") and item.get("status") == "True":
            return "Succeeded" if item["type"] == "Complete" else "Failed"
    return None


@kopf.on.event("batch", "v1", "jobs", labels={"compose.nextunicorn.dev/job": kopf.PRESENT})
async def job_finished(event: kopf.RawEvent, **_: Any) -> None:
    """When the Job is finished: read the pod's result, write the CompositionJob's status."""
    job: dict[str, Any] = dict(event["object"])
    phase = _finished(job.get("status") or {})
    if event.get("type") == "DELETED" or phase is None:
        return
    meta = job["metadata"]
    namespace = meta["namespace"]
    owner = next(
        (r["name"] for r in meta.get("ownerReferences") or [] if r["kind"] == "CompositionJob"),
        None,
    )
    if owner is None:
        return
    base = _kube_url()
    result: Any = None
    async with _session() as session:
        pods_url = f"{base}/api/v1/namespaces/{namespace}/pods"
        params = {"labelSelector": f"job-name={meta['name']}"}
        async with session.get(pods_url, params=params) as response:
            pods = (await response.json()).get("items") or []
        for pod in pods:
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                message = ((container.get("state") or {}).get("terminated") or {}).get("message")
                if message:
                    try:
                        result = json.loads(message).get("result")
                    except ValueError:
                        result = None
        url = f"{base}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{owner}/status"
        patch = {"status": {"phase": phase, "result": result}}
        headers = {"Content-Type": "application/merge-patch+json"}
        async with session.patch(url, json=patch, headers=headers) as response:
            if response.status >= 400:
                raise kopf.TemporaryError(f"status patch failed: HTTP {response.status}", delay=5)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(kopf.operator(clusterwide=True, standalone=True))


if __name__ == "__main__":
    main()
