"""The kubelet's part for a pool's worker pods, played with real processes on this machine.

kwok runs the pods of a pool's Deployment on its fake GPU nodes, but nothing runs in them. This
harness starts one real process per running worker pod (``compose worker`` with the settings the
pod's container would get: its own name, uid, node and namespace from the downward API, and the
pool's env), and stops it the way the kubelet stops a container: a pod being deleted gets SIGTERM
and keeps existing (a finalizer stands in for the kubelet's grace period) until its process has
exited. :meth:`WorkerKubelet.kill` is a SIGKILL, after which the container restarts, as with
``restartPolicy: Always``: a new process, a new worker instance, in the same pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

from compose_api import kube
from compose_api import pools as protocol

FINALIZER = "compose.nextunicorn.dev/test-kubelet"
PODS = "v1"

Obj = dict[str, Any]
Command = Callable[[Obj], list[str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def node_env(root: pathlib.Path, s3_env: Mapping[str, str]) -> dict[str, str]:
    """What a kubelet mounts or injects into a worker's or a Job pod's container besides the
    pod's own env: the node-local model cache, a writable home, the S3 credentials (a real
    node's come from its IAM role), and one thread per process on the shared test machine."""
    return {
        **s3_env,
        "COMPOSE_MODEL_CACHE": str(root / "node-cache"),
        "HF_HOME": str(root / "node-cache" / "huggingface"),
        "HOME": str(root),
        "OMP_NUM_THREADS": "1",
    }


def pod_env(pod: Obj) -> dict[str, str]:
    """The environment the pod's container (the worker's, or its only one) gets: its literal
    values, and the downward API fields it asks for."""
    meta = pod["metadata"]
    fields = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": pod["spec"].get("nodeName") or "",
    }
    env: dict[str, str] = {}
    containers = pod["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == protocol.CONTAINER_NAME] or containers
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "valueFrom" in item and "fieldRef" in item["valueFrom"]:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


@dataclasses.dataclass
class Container:
    pod: str
    uid: str
    process: subprocess.Popen[bytes]
    log: pathlib.Path
    port: int
    starts: int = 1
    stopping: bool = False


class WorkerKubelet:
    """Runs a process for every running worker pod of one pool until stopped."""

    def __init__(
        self,
        client: kube.Client,
        namespace: str,
        pool: str,
        *,
        command: Command,
        env: Mapping[str, str],
        logs: pathlib.Path,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.pool = pool
        self.command = command
        self.env = dict(env)
        self.logs = logs
        self.containers: dict[str, Container] = {}
        self.exited: list[tuple[str, int]] = []  # (pod, exit code) of every process that ended
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._path = kube.path("v1", "pods", namespace=namespace)

    async def __aenter__(self) -> WorkerKubelet:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for container in self.containers.values():
            if container.process.poll() is None:
                container.process.kill()
                container.process.wait(timeout=10)
        # Nothing runs any more: no pod may stay held by the stand-in for the grace period (it
        # would keep its GPU node taken after the test).
        pods, _ = await self.client.list(
            self._path, label_selector=f"{protocol.POOL_LABEL}={self.pool}"
        )
        for pod in pods:
            if FINALIZER in (pod["metadata"].get("finalizers") or []):
                await self._unfinalize(pod)

    async def _loop(self) -> None:
        selector = f"{protocol.POOL_LABEL}={self.pool}"
        while True:
            try:
                pods, _ = await self.client.list(self._path, label_selector=selector)
                seen = set()
                for pod in pods:
                    name = pod["metadata"]["name"]
                    seen.add(name)
                    await self._sync(pod)
                for name in [n for n in self.containers if n not in seen]:
                    self._reap(self.containers.pop(name), signal.SIGKILL)
            except kube.KubeError as error:
                self.errors.append(str(error))  # the API answered badly: next round
            await asyncio.sleep(0.2)

    async def _sync(self, pod: Obj) -> None:
        meta = pod["metadata"]
        name = meta["name"]
        found = self.containers.get(name)
        deleting = bool(meta.get("deletionTimestamp"))
        if found is not None and found.uid != meta["uid"]:
            self._reap(self.containers.pop(name), signal.SIGKILL)
            found = None
        if deleting:
            if found is not None and not found.stopping:
                found.stopping = True
                found.process.send_signal(signal.SIGTERM)
            if found is None or found.process.poll() is not None:
                if found is not None:
                    self.exited.append((name, found.process.returncode))
                    self.containers.pop(name, None)
                await self._unfinalize(pod)
            return
        if pod["status"].get("phase") != "Running":
            return
        if found is None:
            if FINALIZER not in (meta.get("finalizers") or []):
                patch = {"metadata": {"finalizers": [*(meta.get("finalizers") or []), FINALIZER]}}
                await self.client.patch(f"{self._path}/{name}", patch)
            self.containers[name] = self._start(pod)
        elif found.process.poll() is not None and not found.stopping:
            # The container exited on its own (a crash): restartPolicy Always restarts it.
            self.exited.append((name, found.process.returncode))
            restarted = self._start(pod)
            restarted.starts = found.starts + 1
            self.containers[name] = restarted

    def _start(self, pod: Obj) -> Container:
        name = pod["metadata"]["name"]
        port = free_port()
        # The pod's own environment, then the harness's: what a kubelet would mount or inject
        # (the model cache folder, credentials) differs on this machine.
        env = {**os.environ, **pod_env(pod), **self.env, protocol.PORT_ENV: str(port)}
        log = self.logs / f"{name}.log"
        handle = log.open("ab")
        process = subprocess.Popen(
            self.command(pod), env=env, stdout=handle, stderr=subprocess.STDOUT
        )
        handle.close()
        return Container(name, pod["metadata"]["uid"], process, log, port)

    def _reap(self, container: Container, how: signal.Signals) -> None:
        if container.process.poll() is None:
            container.process.send_signal(how)
            container.process.wait(timeout=30)
        self.exited.append((container.pod, container.process.returncode))

    async def _unfinalize(self, pod: Obj) -> None:
        finalizers = [f for f in pod["metadata"].get("finalizers") or [] if f != FINALIZER]
        with contextlib.suppress(kube.NotFound):  # gone already
            await self.client.patch(
                f"{self._path}/{pod['metadata']['name']}",
                {"metadata": {"finalizers": finalizers or None}},
            )

    def kill(self, pod: str) -> None:
        """SIGKILL the pod's process (an OOM kill, a crash); the kubelet then restarts it."""
        container = self.containers[pod]
        container.process.send_signal(signal.SIGKILL)
        container.process.wait(timeout=10)

    def log(self, pod: str) -> str:
        container = self.containers.get(pod)
        path = container.log if container else self.logs / f"{pod}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs_text(self) -> str:
        return "\n".join(
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-6000:]}"
            for path in sorted(self.logs.glob("*.log"))
        )


def worker_command(pod: Obj) -> list[str]:
    """``compose worker``, as the inference image's entry point runs it."""
    return [sys.executable, "-m", "compose_inference", "worker"]
