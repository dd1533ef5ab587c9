"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, started on loopback ports in a temporary directory.

The binaries are built from source by ``scripts/build_k8s.sh`` (one pinned release,
``tools/k8s/versions.env``) into a cache outside the checkout; :func:`binaries` runs that script,
which returns at once when they are there. Nothing falls back to the emulator: a missing or
broken binary fails the tests that need the cluster, with the script's error.

What is real: the API server (authentication by client certificates and service-account tokens,
RBAC authorization, admission, CRD structural schemas, CEL rules, defaulting and pruning), the
Job, TTL-after-finished, garbage-collector, namespace, service-account and deployment controllers,
and the scheduler (taints, tolerations, affinity, GPU capacity). kwok plays the kubelet of the
fake nodes: a pod bound to one of them starts running at once, and a pod deleted while it runs
ends (Failed, exit code 143) before it goes, as the kubelet ends it. What the tests still play is
the inference container's end: :func:`finish_pod` writes the exit code and termination message into
the pod's status as the kubelet would. A pod whose image is :data:`MISSING_IMAGE` stays in
``ImagePullBackOff``, as with a registry that lacks the image; one whose image is
:data:`HELD_IMAGE` stays ``Pending`` on its node, as while a large image is pulled, until the test
starts its container (:func:`start_pod`). :meth:`ControlPlane.paused` stops a component for a
moment (the controller manager: a Job controller that lags behind).

Not run: the node-lifecycle controller (kwok's nodes never go NotReady here), kube-proxy,
networking and storage. The ``TaintNodesByCondition`` admission plugin is off for the same reason:
nodes are Ready from their creation.

``start()`` is a context manager; ``tests/support/cluster_fixtures.py`` wraps it in one cluster
per test session with a namespace per test.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from compose_api import kube
from tests.support import pki as pki_module
from tests.support.cluster_client import ClusterClient, Obj
from tests.support.resources import NODES, PODS, RequestRecord

REPO = Path(__file__).resolve().parents[2]
KWOK_NODE_LABEL = "compose.nextunicorn.dev/simulated-by"
KWOK_NODE_VALUE = "kwok"
MISSING_IMAGE = "registry.invalid/compose/missing:0"
HELD_IMAGE = "registry.invalid/compose/held:0"
PULL_BACKOFF_MESSAGE = f'Back-off pulling image "{MISSING_IMAGE}"'
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
GPU = "nvidia.com/gpu"
CONTROLLERS = (
    "job-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "disruption-controller",
    "clusterrole-aggregation-controller",
)


class ControlPlaneError(RuntimeError):
    """A component did not start; the message ends with the tail of its log."""


def binaries() -> Path:
    """The directory with the built binaries (built now if the cache lacks them)."""
    override = os.environ.get("COMPOSE_K8S_BIN_DIR")
    if override:
        return Path(override)
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_k8s.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ControlPlaneError(
            "scripts/build_k8s.sh failed; the tests that need a real API server cannot run:\n"
            + result.stderr[-4000:]
        )
    return Path(result.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca: Path,
    user: str,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    namespace: str = "default",
) -> Path:
    """A kubeconfig with one cluster, one user and one current context."""
    credentials: dict[str, str] = {}
    if cert and key:
        credentials = {
            "client-certificate-data": _b64(cert),
            "client-key-data": _b64(key),
        }
    if token:
        credentials["token"] = token
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "compose-test",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {
                "name": user,
                "context": {"cluster": "compose-test", "user": user, "namespace": namespace},
            }
        ],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _kwok_config() -> str:
    """kwok's configuration: our own stages (no automatic pod completion)."""
    not_deleted = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    pending = {"key": ".status.phase", "operator": "In", "values": ["Pending"]}
    fresh = {"key": ".status.containerStatuses", "operator": "DoesNotExist"}
    image = ".spec.containers.[0].image"
    now = "{{ $now := Now }}"
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokConfiguration",
            # Defaults are not applied to a configuration file: every option is spelled out.
            "options": {
                "nodeLeaseDurationSeconds": 40,
                "nodeLeaseParallelism": 4,
                "podPlayStageParallelism": 8,
                "nodePlayStageParallelism": 4,
                "podsOnNodeSyncParallelism": 2,
                "enablePodsOnNodeSyncListPager": True,
                "enablePodsOnNodeSyncStreamWatch": False,
                "enableDebuggingHandlers": False,
                "enableProfilingHandler": False,
                "enableContentionProfiling": False,
            },
        },
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": "compose-node-ready"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Node"},
                "selector": {
                    "matchExpressions": [
                        {
                            "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
                            "operator": "NotIn",
                            "values": ["True"],
                        }
                    ]
                },
                "next": {
                    "statusTemplate": now
                    + """
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
- address: {{ NodeIP | Quote }}
  type: InternalIP
- address: {{ NodeName | Quote }}
  type: Hostname
allocatable:
{{ YAML .status.allocatable 1 }}
capacity:
{{ YAML .status.capacity 1 }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
phase: Running
"""
                },
            },
        },
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": "compose-pod-start"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {
                    "matchExpressions": [
                        not_deleted,
                        pending,
                        fresh,
                        {"key": image, "operator": "NotIn", "values": [MISSING_IMAGE, HELD_IMAGE]},
                    ]
                },
                "next": {
                    "event": {
                        "type": "Normal",
                        "reason": "Started",
                        "message": "Started container",
                    },
                    "statusTemplate": now
                    + """
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: PodReadyToStartContainers, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  imageID: {{ printf "%s@sha256:0" .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace | Quote }}
phase: Running
startTime: {{ $now | Quote }}
""",
                },
            },
        },
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": "compose-pod-pull-backoff"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {
                    "matchExpressions": [
                        not_deleted,
                        pending,
                        fresh,
                        {"key": image, "operator": "In", "values": [MISSING_IMAGE]},
                    ]
                },
                "next": {
                    "event": {
                        "type": "Warning",
                        "reason": "Failed",
                        "message": f'Failed to pull image "{MISSING_IMAGE}": not found',
                    },
                    "statusTemplate": now
                    + """
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- type: ContainersReady
  status: "False"
  reason: ContainersNotReady
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "False"
  reason: ContainersNotReady
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  imageID: ""
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    waiting:
      reason: ImagePullBackOff
      message: {{ printf "Back-off pulling image %q" .image | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace | Quote }}
phase: Pending
startTime: {{ $now | Quote }}
""",
                },
            },
        },
        {
            # A pod deleted while it runs (or waits) ends first, as the kubelet ends it: its
            # containers are stopped and it turns Failed, so the Job controller can count it and
            # drop its tracking finalizer; then the next stage removes it.
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": "compose-pod-stop"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {
                    "matchExpressions": [
                        {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                        {
                            "key": ".status.phase",
                            "operator": "In",
                            "values": ["Pending", "Running"],
                        },
                    ]
                },
                "next": {
                    "statusTemplate": now
                    + """
phase: Failed
conditions:
- type: Ready
  status: "False"
  reason: PodFailed
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "False"
  reason: PodFailed
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  imageID: ""
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 143
      reason: Error
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
""",
                },
            },
        },
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": "compose-pod-delete"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {
                    "matchExpressions": [
                        {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                        {"key": ".metadata.finalizers", "operator": "DoesNotExist"},
                    ]
                },
                "next": {"delete": True},
            },
        },
    ]
    return yaml.safe_dump_all(documents, sort_keys=False)


@dataclasses.dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclasses.dataclass
class ControlPlane:
    """A running cluster. ``url`` is the API server; ``kubeconfig`` is the admin's."""

    directory: Path
    url: str
    pki: pki_module.Pki
    kubeconfig: Path
    bin_dir: Path
    processes: list[_Process] = dataclasses.field(default_factory=list)

    @property
    def audit_log(self) -> Path:
        return self.directory / "audit.log"

    def audit_events(self, *, user: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """The API server's audit events (one per finished request), optionally of one user.

        ``since`` is a byte offset into the log (:meth:`audit_offset`), to count the requests of
        one phase of a test or benchmark.
        """
        events: list[dict[str, Any]] = []
        with self.audit_log.open("rb") as handle:
            handle.seek(since)
            for line in handle:
                if not line.strip():
                    continue
                event = json.loads(line)
                if user is None or event.get("user", {}).get("username") == user:
                    events.append(event)
        return events

    def request_records(self, *, user: str | None = None, since: int = 0) -> list[RequestRecord]:
        """The audit events as the emulator's request records (the same fields tests read), one
        per request: a watch counts from its start (status 0 while it streams)."""
        records = []
        seen: set[str] = set()
        for event in self.audit_events(user=user, since=since):
            if event.get("auditID") in seen:
                continue
            seen.add(event.get("auditID", ""))
            ref = event.get("objectRef") or {}
            resource = ref.get("resource")
            records.append(
                RequestRecord(
                    method=event.get("verb", "").upper(),
                    verb=event.get("verb", ""),
                    group=(ref.get("apiGroup") or "") if resource else None,
                    version=ref.get("apiVersion"),
                    resource=resource,
                    subresource=ref.get("subresource"),
                    namespace=ref.get("namespace"),
                    name=ref.get("name"),
                    path=event.get("requestURI", ""),
                    user_agent=event.get("userAgent", ""),
                    status=0
                    if event.get("stage") == "ResponseStarted"
                    else int((event.get("responseStatus") or {}).get("code") or 0),
                    at=_received(event),
                    body=event.get("requestObject"),
                )
            )
        return records

    def audit_offset(self) -> int:
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    @contextlib.contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """Stop one component (SIGSTOP) for the ``with`` block, then let it go on (SIGCONT):
        ``paused("kube-controller-manager")`` is a Job controller that lags behind."""
        process = next(p for p in self.processes if p.name == name)
        process.popen.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            process.popen.send_signal(signal.SIGCONT)

    # -- clients ------------------------------------------------------------------------------

    def ssl_context(self, *, client_cert: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if client_cert:
            context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def admin_connection(self) -> kube.Connection:
        """The cluster admin's connection: its client certificate."""
        return kube.Connection(
            server=self.url,
            ca_file=self.pki.ca_cert,
            cert_file=self.pki.admin_cert,
            key_file=self.pki.admin_key,
        )

    def admin(self, namespace: str = "default") -> ClusterClient:
        """A test client with cluster-admin rights (``async with cluster.admin() as kube``)."""
        return ClusterClient.at(self.admin_connection(), namespace=namespace)

    def as_token(self, token: str, namespace: str = "default") -> ClusterClient:
        """A test client that authenticates with a bearer token (a service account's)."""
        connection = kube.Connection(server=self.url, ca_file=self.pki.ca_cert, token=token)
        return ClusterClient.at(connection, namespace=namespace)

    def kubectl_env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """The environment for ``kubectl``/``helm`` as the admin (or another kubeconfig)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        env["HOME"] = str(self.directory)  # kubectl's cache and helm's config stay in here
        env.pop("COMPOSE_KUBE_URL", None)
        return env

    # -- synchronous admin requests (setup and teardown, outside any event loop) --------------

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "") -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type or "application/json")
        with urllib.request.urlopen(request, context=self.ssl_context(), timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def wait_allowed(
        self, user: str, namespace: str, attributes: Mapping[str, str], *, timeout: float = 30
    ) -> None:
        """Until the API server's authorizer allows ``user`` (a service account of
        ``namespace``) the request ``attributes`` describe: its RBAC cache follows new bindings a
        moment later, and a process started at once could meet a 403 first."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                "resourceAttributes": dict(attributes),
            },
        }
        deadline = time.monotonic() + timeout
        path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        while not self.request("POST", path, review)["status"].get("allowed"):
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{user} is still not allowed {dict(attributes)}")
            time.sleep(0.1)

    def service_account_token(self, namespace: str, name: str, *, seconds: int = 3600) -> str:
        """A bound token for a service account (the TokenRequest API, as kubelets use)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }
        result = self.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body
        )
        token: str = result["status"]["token"]
        return token

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        token = self.service_account_token(namespace, name)
        return write_kubeconfig(
            path,
            server=self.url,
            ca=self.pki.ca_cert,
            user=f"system:serviceaccount:{namespace}:{name}",
            token=token,
            namespace=namespace,
        )

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels or {})},
        }
        self.request("POST", "/api/v1/namespaces", body)
        # Pods are admitted only once the namespace's default service account exists.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            time.sleep(0.1)
        raise ControlPlaneError(f"namespace {name}: no default service account after 30 s")

    def delete_namespace(self, name: str) -> None:
        with contextlib.suppress(urllib.error.HTTPError):
            self.request("DELETE", f"/api/v1/namespaces/{name}")

    def ensure_gpu_node(
        self,
        name: str,
        *,
        instance_type: str = "g5.xlarge",
        capacity_type: str = "spot",
        gpus: int = 1,
        zone: str = "us-east-1a",
        extra_labels: Mapping[str, str] | None = None,
        cpu: str = "4",
        memory: str = "16Gi",
    ) -> Obj:
        """A kwok node labelled and tainted as EKS/Karpenter GPU nodes are (created if absent)."""
        labels = {
            KWOK_NODE_LABEL: KWOK_NODE_VALUE,
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            INSTANCE_TYPE_LABEL: instance_type,
            CAPACITY_TYPE_LABEL: capacity_type,
            "eks.amazonaws.com/capacityType": "SPOT" if capacity_type == "spot" else "ON_DEMAND",
            "topology.kubernetes.io/zone": zone,
            "nvidia.com/gpu.present": "true",
            **dict(extra_labels or {}),
        }
        taints = [{"key": GPU, "value": "true", "effect": "NoSchedule"}] if gpus else []
        capacity = {"cpu": cpu, "memory": memory, "pods": "1000", "ephemeral-storage": "200Gi"}
        if gpus:
            capacity[GPU] = str(gpus)
        return self._ensure_node(name, labels, taints, capacity)

    def ensure_system_node(self, name: str = "system-0") -> Obj:
        """A CPU node without taints, where the operator and gateway pods can run."""
        labels = {
            KWOK_NODE_LABEL: KWOK_NODE_VALUE,
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            INSTANCE_TYPE_LABEL: "m5.large",
            CAPACITY_TYPE_LABEL: "on-demand",
        }
        capacity = {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"}
        return self._ensure_node(name, labels, [], capacity)

    def _ensure_node(
        self,
        name: str,
        labels: Mapping[str, str],
        taints: Sequence[Mapping[str, str]],
        capacity: Mapping[str, str],
    ) -> Obj:
        try:
            node: Obj = self.request("GET", f"/api/v1/nodes/{name}")
            return node
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": dict(labels),
                "annotations": {"kwok.x-k8s.io/node": "fake"},
            },
            "spec": {"taints": [dict(t) for t in taints]},
            # With the status in the create (nodes take it there): kwok's first status patch
            # copies the capacity it reads, and a node created bare and patched a moment later
            # could have it copy none, leaving the scheduler a node that fits no pod.
            "status": {"capacity": dict(capacity), "allocatable": dict(capacity)},
        }
        created: Obj = self.request("POST", "/api/v1/nodes", body)
        return created

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the processes one by one, the last started first. The API server shuts down in
        about a second while etcd still answers; terminated together with etcd, it waits out
        its whole grace period (15 s more on every test session)."""
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                process.popen.terminate()
            try:
                process.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=5)
        self.processes.clear()

    def _spawn(self, name: str, argv: Sequence[str]) -> _Process:
        log = self.directory / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            list(argv),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            start_new_session=True,
        )
        handle.close()
        process = _Process(name, popen, log)
        self.processes.append(process)
        return process

    def _wait(self, process: _Process, probe: Any, *, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}"
                )
            with contextlib.suppress(Exception):
                if probe():
                    return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{process.name} not ready after {timeout:.0f} s:\n{process.tail()}"
        )


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        return bool(response.status == 200)


@contextlib.contextmanager
def start(directory: Path | None = None) -> Iterator[ControlPlane]:
    """Start the whole control plane; stop it (and delete its files) on exit."""
    bin_dir = binaries()
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="k8s-")))
        pki = pki_module.create(directory / "pki")
        etcd_port, etcd_peer, api_port = _free_port(), _free_port(), _free_port()
        url = f"https://127.0.0.1:{api_port}"
        kubeconfig = write_kubeconfig(
            directory / "admin.kubeconfig",
            server=url,
            ca=pki.ca_cert,
            user="compose-test-admin",
            cert=pki.admin_cert,
            key=pki.admin_key,
        )
        cluster = ControlPlane(directory, url, pki, kubeconfig, bin_dir)
        stack.callback(cluster.stop)
        audit_policy = directory / "audit-policy.yaml"
        audit_policy.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    # ResponseStarted is kept: a watch is logged when it starts, not only when
                    # it ends (request_records counts each request once).
                    "omitStages": ["RequestReceived"],
                    # The bodies of CompositionJob status patches are kept, so that a count of
                    # writes can tell what each one changed (a moved queue position, a phase).
                    "rules": [
                        {
                            "level": "Request",
                            "verbs": ["patch"],
                            "resources": [
                                {
                                    "group": "compose.nextunicorn.dev",
                                    "resources": ["compositionjobs/status"],
                                }
                            ],
                        },
                        {"level": "Metadata"},
                    ],
                }
            )
        )

        etcd = cluster._spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=compose-test",
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=compose-test=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",  # a test cluster: speed over durability
                "--log-level=warn",
            ],
        )
        cluster._wait(etcd, lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"))

        apiserver = cluster._spawn(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={directory / 'apiserver-certs'}",
                f"--tls-cert-file={pki.server_cert}",
                f"--tls-private-key-file={pki.server_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_public}",
                f"--service-account-signing-key-file={pki.sa_private}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--disable-admission-plugins=TaintNodesByCondition",
                # Every request at Metadata level: who asked for what (request counts per
                # component in tests and benchmarks, as the emulator's request log gave); the
                # bodies of CompositionJob status patches too (see the policy above).
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={cluster.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxbackup=0",
                "--profiling=false",
                "--v=0",
            ],
        )
        cluster._wait(apiserver, lambda: _http_ok(url + "/readyz", cluster.ssl_context()))

        port = _free_port()
        manager = cluster._spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={pki.sa_private}",
                f"--root-ca-file={pki.ca_cert}",
                # The test cluster's own client is not the bottleneck of what the tests measure.
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=0",
            ],
        )
        scheduler_port = _free_port()
        scheduler = cluster._spawn(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler_port}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=0",
            ],
        )
        kwok_config = directory / "kwok.yaml"
        kwok_config.write_text(_kwok_config())
        kwok = cluster._spawn(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={kubeconfig}",
                f"--config={kwok_config}",
                f"--manage-nodes-with-label-selector={KWOK_NODE_LABEL}={KWOK_NODE_VALUE}",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.0.1",
                f"--server-address=127.0.0.1:{_free_port()}",
                "--v=WARN",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        cluster._wait(manager, lambda: _http_ok(f"https://127.0.0.1:{port}/healthz", insecure))
        cluster._wait(
            scheduler, lambda: _http_ok(f"https://127.0.0.1:{scheduler_port}/healthz", insecure)
        )
        # kwok serves no health endpoint of its own; it is up once it has made a node Ready.
        probe = f"kwok-probe-{os.getpid()}"
        cluster.ensure_system_node(probe)

        def probe_ready() -> bool:
            node = cluster.request("GET", f"/api/v1/nodes/{probe}")
            return any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in node.get("status", {}).get("conditions", [])
            )

        cluster._wait(kwok, probe_ready)
        cluster.request("DELETE", f"/api/v1/nodes/{probe}")
        yield cluster


# -- the inference container's end, played as the kubelet reports it -------------------------


def _utc(at: datetime.datetime | None = None) -> str:
    moment = at or datetime.datetime.now(datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def terminated_status(
    pod: Mapping[str, Any],
    *,
    exit_code: int,
    message: str = "",
    reason: str | None = None,
    disruption: str | None = None,
) -> dict[str, Any]:
    """The status a kubelet writes when the pod's only container ends."""
    now = _utc()
    container = pod["spec"]["containers"][0]
    running = next(iter(pod.get("status", {}).get("containerStatuses") or []), {})
    started = running.get("state", {}).get("running", {}).get("startedAt", now)
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started,
        "finishedAt": now,
    }
    if message:
        terminated["message"] = message
    conditions: list[dict[str, Any]] = [
        {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
        {
            "type": "ContainersReady",
            "status": "False",
            "reason": "PodCompleted",
            "lastTransitionTime": now,
        },
    ]
    if disruption:
        conditions.append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": disruption,
                "message": "Pod was terminated in response to imminent node shutdown.",
                "lastTransitionTime": now,
            }
        )
    return {
        "phase": "Succeeded" if exit_code == 0 and not disruption else "Failed",
        "conditions": conditions,
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": running.get("imageID", ""),
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"terminated": terminated},
            }
        ],
    }


def running_status(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The status a kubelet writes when the pod's container has started (kwok's own start)."""
    now = _utc()
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("Initialized", "PodReadyToStartContainers", "ContainersReady", "Ready")
    ]
    container = pod["spec"]["containers"][0]
    return {
        "phase": "Running",
        "startTime": now,
        "conditions": conditions,
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": f"{container['image']}@sha256:0",
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": now}},
            }
        ],
    }


async def start_pod(client: ClusterClient, pod: Mapping[str, Any]) -> Obj:
    """Start the container of a pod that kwok holds (:data:`HELD_IMAGE`), once it is bound."""
    meta = pod["metadata"]
    return await client.request(
        "PATCH",
        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
        json={"status": running_status(pod)},
        content_type="application/strategic-merge-patch+json",
    )


async def finish_pod(
    client: ClusterClient,
    pod: Mapping[str, Any],
    *,
    exit_code: int,
    message: str = "",
    reason: str | None = None,
    disruption: str | None = None,
) -> Obj:
    """End a running pod's container with ``exit_code`` and a termination ``message``."""
    meta = pod["metadata"]
    status = terminated_status(
        pod, exit_code=exit_code, message=message, reason=reason, disruption=disruption
    )
    # A strategic merge patch keys conditions and containerStatuses by their type and name, as
    # the kubelet's status manager merges them.
    return await client.request(
        "PATCH",
        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
        json={"status": status},
        content_type="application/strategic-merge-patch+json",
    )


async def running_pods(client: ClusterClient, namespace: str, *, job_name: str) -> list[Obj]:
    pods = await client.list(
        PODS, namespace=namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}"
    )
    return [p for p in pods if p.get("status", {}).get("phase") == "Running"]


__all__ = [
    "GPU",
    "HELD_IMAGE",
    "MISSING_IMAGE",
    "NODES",
    "ControlPlane",
    "ControlPlaneError",
    "binaries",
    "finish_pod",
    "running_pods",
    "running_status",
    "start",
    "start_pod",
    "terminated_status",
    "write_kubeconfig",
]


def _received(event: Mapping[str, Any]) -> float:
    """When the API server received an audited request, in seconds since the epoch (0.0 when
    the event does not say)."""
    stamp = event.get("requestReceivedTimestamp")
    if not stamp:
        return 0.0
    return datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
