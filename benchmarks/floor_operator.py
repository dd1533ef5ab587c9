"""A floor for benchmarks/operator_bench.py: the least an operator can do per CompositionJob.

It creates the Job when a CompositionJob appears (no status first, no Events) and, when the Job
finishes, writes the phase in one status patch. It reads no pods, so it reports no result, and it
has no queue, deadlines or restart safety: it is not a baseline for what an operator must do, only
the cost and latency that the control plane itself leaves when an operator adds next to nothing.
Next to it, the other operators' figures show how much is theirs and how much the machine's.

The benchmark runs it as a subprocess (``python -m benchmarks.floor_operator``) with KUBECONFIG
set, as it runs the others.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from compose_api import kube, models

JOB_LABEL = "compose.nextunicorn.dev/floor-job"  # on its Jobs: the CompositionJob's name
Obj = dict[str, Any]


def job_for(composition: Obj) -> Obj:
    """The Job of a CompositionJob: one GPU pod that the benchmark's script ends."""
    meta = composition["metadata"]
    owner = {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    container = {
        "name": "inference",
        "image": "compose-inference:latest",
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{meta['name']}-floor",
            "namespace": meta["namespace"],
            "labels": {JOB_LABEL: meta["name"]},
            "ownerReferences": [owner],
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                    "containers": [container],
                }
            },
        },
    }


def finished_phase(job: Obj) -> str | None:
    """Succeeded or Failed once the Job controller says the Job is Complete or Failed."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True":
            if condition.get("type") == "Complete":
                return models.Phase.SUCCEEDED.value
            if condition.get("type") == "Failed":
                return models.Phase.FAILED.value
    return None


class FloorOperator:
    def __init__(self, client: kube.Client) -> None:
        self.client = client
        self._started: set[str] = set()  # uids of the CompositionJobs whose Job it created
        self._finished: set[str] = set()  # uids of the Jobs whose end it wrote
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        await asyncio.gather(self._follow_compositions(), self._follow_jobs())

    async def _follow_compositions(self) -> None:
        path = kube.path(models.API_VERSION, models.PLURAL)
        async for kind, composition in _watch(self.client, path):
            uid = composition["metadata"]["uid"]
            if kind == "ADDED" and not composition.get("status") and uid not in self._started:
                self._started.add(uid)
                manifest = job_for(composition)
                jobs = kube.path("batch/v1", "jobs", namespace=manifest["metadata"]["namespace"])
                self._spawn(self.client.create(jobs, manifest))

    async def _follow_jobs(self) -> None:
        path = kube.path("batch/v1", "jobs")
        async for kind, job in _watch(self.client, path, label_selector=JOB_LABEL):
            meta = job["metadata"]
            phase = finished_phase(job)
            if kind == "DELETED" or phase is None or meta["uid"] in self._finished:
                continue
            self._finished.add(meta["uid"])
            status = kube.path(
                models.API_VERSION,
                models.PLURAL,
                namespace=meta["namespace"],
                name=meta["labels"][JOB_LABEL],
                subresource="status",
            )
            self._spawn(self.client.patch(status, {"status": {"phase": phase}}))

    def _spawn(self, request: Awaitable[Any]) -> None:
        async def send() -> None:
            try:
                await request
            except kube.KubeError as error:  # the benchmark reports the job as not done
                print(f"floor-operator: {error}", file=sys.stderr)

        task = asyncio.create_task(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _watch(
    client: kube.Client, path: str, *, label_selector: str | None = None
) -> AsyncIterator[tuple[str, Obj]]:
    """Every event, resuming where the last stream ended (from the start again when too old)."""
    since: str | None = None
    while True:
        try:
            async for kind, obj in client.watch(
                path, resource_version=since, label_selector=label_selector
            ):
                since = obj["metadata"].get("resourceVersion", since)
                if kind != "BOOKMARK":
                    yield kind, obj
        except kube.Gone:
            since = None


async def main() -> None:
    connection = kube.Connection.from_kubeconfig(pathlib.Path(os.environ["KUBECONFIG"]))
    async with kube.Client(connection, user_agent="floor-operator") as client:
        await FloorOperator(client).run()


if __name__ == "__main__":
    asyncio.run(main())
