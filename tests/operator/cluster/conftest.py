"""The real operator process against the real test control plane.

Each test gets a namespace and an operator that watches only it, logged in with the token of a
service account that holds exactly the chart's RBAC for that namespace (the chart's Role,
RoleBinding, ClusterRole and ClusterRoleBinding, rendered by ``helm template`` and applied with
``kubectl``). The Job controller, the garbage collector, the TTL controller and the scheduler are
the real ones; kwok runs the pods; the tests play only the inference container's end
(:func:`tests.support.control_plane.finish_pod`).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest
import pytest_asyncio
import yaml

from tests.operator.conftest import PROFILES_YAML
from tests.operator.integration.conftest import OperatorProcess, operator_env
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.cluster_fixtures import control_plane, kubectl_path, namespace
from tests.support.resources import COMPOSITION_JOBS, JOBS, PODS

__all__ = ["control_plane", "namespace"]

CHART = cp.REPO / "charts" / "nextunicorn-compose"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
Obj = dict[str, Any]


def _helm() -> str:
    return str(pathlib.Path(kubectl_path()).with_name("helm"))


def chart_rbac(namespace: str, release: str) -> list[Obj]:
    """The chart's RBAC objects (and service accounts) for an operator watching ``namespace``."""
    done = subprocess.run(
        [_helm(), "template", release, str(CHART), "--namespace", namespace,
         "--set", f"watchNamespaces[0]={namespace}",
         "--set", "networkPolicy.apiServerCidrs[0]=127.0.0.1/32"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] in RBAC_KINDS]


@pytest.fixture
def profiles_path(tmp_path: pathlib.Path) -> pathlib.Path:
    """The operator tests' profiles, plus one that asks for an instance type no node has."""
    path = tmp_path / "profiles.yaml"
    path.write_text(
        PROFILES_YAML
        + """\
- name: oversized
  resources: {gpu: 8, cpu: "90", memory: 1000Gi, ephemeralStorage: 30Gi}
  placement:
    instanceTypes: [p4d.24xlarge]
  licence: {name: test}
"""
    )
    return path


@pytest.fixture
def operator_settings() -> dict[str, str]:
    """Extra COMPOSE_* variables for one test (override in a module or with indirect)."""
    return {}


@pytest.fixture
def operator(
    control_plane: cp.ControlPlane,
    namespace: str,
    profiles_path: pathlib.Path,
    operator_settings: dict[str, str],
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    release = f"op-{namespace}"[:40].rstrip("-")
    objects = chart_rbac(namespace, release)
    env = control_plane.kubectl_env()
    subprocess.run(
        [kubectl_path(), "apply", "-f", "-"], input=json.dumps({"apiVersion": "v1",
        "kind": "List", "items": objects}), capture_output=True, text=True, env=env, check=True,
        timeout=60,
    )  # fmt: skip
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    operator_sa = next(a for a in accounts if a.endswith("-operator"))
    inference_sa = next(a for a in accounts if a.endswith("-inference"))
    worker_sa = next(a for a in accounts if a.endswith("-worker"))
    kubeconfig = control_plane.service_account_kubeconfig(
        namespace, operator_sa, tmp_path / "operator.kubeconfig"
    )
    settings = operator_env("", profiles_path, **operator_settings)
    settings.pop("COMPOSE_KUBE_URL")
    settings.update(
        KUBECONFIG=str(kubeconfig),
        COMPOSE_NAMESPACES=namespace,
        COMPOSE_INFERENCE_SERVICE_ACCOUNT=inference_sa,
        COMPOSE_WORKER_SERVICE_ACCOUNT=worker_sa,
    )
    settings.update(operator_settings)
    process = OperatorProcess(settings, tmp_path / "operator.log")
    process.start()
    yield process
    process.stop()
    for obj in objects:
        if obj["kind"].startswith("Cluster"):
            subprocess.run(
                [kubectl_path(), "delete", obj["kind"], obj["metadata"]["name"],
                 "--ignore-not-found", "--wait=false"],
                capture_output=True, env=env, check=False, timeout=60,
            )  # fmt: skip
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        sys.stderr.write(f"--- operator log ---\n{process.log()[-20000:]}\n")


@pytest_asyncio.fixture
async def kube(control_plane: cp.ControlPlane, namespace: str) -> AsyncIterator[ClusterClient]:
    """A cluster-admin test client in the test's namespace (users and the kubelet's part)."""
    async with control_plane.admin(namespace) as client:
        yield client


async def wait_until(
    kube: ClusterClient,
    check: Any,
    *,
    timeout: float = 60.0,  # noqa: ASYNC109 (a polling deadline)
    what: str = "",
) -> Any:
    """Poll ``await check(kube)`` until it returns something true."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check(kube)
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            found: Mapping[str, Any] = item
            return found
    return None


async def cj_with(
    kube: ClusterClient,
    name: str,
    *,
    phase: str | None = None,
    reason: tuple[str, str] | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109
) -> Obj:
    """Wait until the CompositionJob has ``phase`` and/or condition ``reason=(type, reason)``."""

    async def check(client: ClusterClient) -> Obj | None:
        obj = await client.get_or_none(COMPOSITION_JOBS, name)
        if obj is None:
            return None
        if phase is not None and (obj.get("status") or {}).get("phase") != phase:
            return None
        if reason is not None:
            found = condition(obj, reason[0])
            if found is None or found.get("reason") != reason[1]:
                return None
        return obj

    found: Obj = await wait_until(kube, check, timeout=timeout, what=f"{name} {phase} {reason}")
    return found


async def pods_of(kube: ClusterClient, cj: str) -> list[Obj]:
    pods = await kube.list(PODS, label_selector="batch.kubernetes.io/job-name")
    return sorted(
        (p for p in pods if p["metadata"]["name"].startswith(f"{cj}-")),
        key=lambda p: p["metadata"]["creationTimestamp"] + p["metadata"]["name"],
    )


async def running_pod(kube: ClusterClient, cj: str, *, index: int = 0) -> Obj:
    """The ``index``-th pod (in creation order) of the CompositionJob, once it runs."""

    async def check(client: ClusterClient) -> Obj | None:
        pods = await pods_of(client, cj)
        if len(pods) > index and pods[index]["status"].get("phase") == "Running":
            return pods[index]
        return None

    found: Obj = await wait_until(kube, check, what=f"pod {index} of {cj} to run")
    return found


async def child_jobs(kube: ClusterClient) -> list[Obj]:
    return await kube.list(JOBS, label_selector="app.kubernetes.io/managed-by=compose-operator")
