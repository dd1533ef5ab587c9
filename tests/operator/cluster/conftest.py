"""The real operator process against the real test control plane.

Each test gets a namespace and an operator that watches only it, logged in with the token of a
service account that holds exactly the chart's RBAC for that namespace (the chart's Role,
RoleBinding, ClusterRole and ClusterRoleBinding, rendered by ``helm template`` and applied with
``kubectl``); :func:`running_operator` also starts one with the chart's cluster-wide RBAC. The
Job controller, the garbage collector, the TTL controller and the scheduler are the real ones;
kwok runs the pods; the tests play only the inference container's start when kwok holds it
(:data:`~tests.support.control_plane.HELD_IMAGE`) and its end
(:func:`tests.support.control_plane.finish_pod`). The operator's requests are read from the API
server's audit log, by its service account (:func:`operator_requests`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import kopf
import pytest
import pytest_asyncio
import yaml

from compose_api import contract, models
from tests.operator.conftest import PROFILES_YAML, cj_body
from tests.operator.operator_process import OperatorProcess, operator_env
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.cluster_fixtures import control_plane, kubectl_path, namespace
from tests.support.resources import COMPOSITION_JOBS, JOBS, PODS, RequestRecord

__all__ = ["control_plane", "namespace"]

CHART = cp.REPO / "charts" / "nextunicorn-compose"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
MANAGED = "app.kubernetes.io/managed-by=compose-operator"
Obj = dict[str, Any]


def _helm() -> str:
    return str(pathlib.Path(kubectl_path()).with_name("helm"))


def chart_rbac(namespace: str, release: str, *, clusterwide: bool = False) -> list[Obj]:
    """The chart's RBAC objects (and service accounts) for an operator installed in
    ``namespace`` that watches only it, or every namespace."""
    watch = ["clusterWide=true"] if clusterwide else [f"watchNamespaces[0]={namespace}"]
    done = subprocess.run(
        [_helm(), "template", release, str(CHART), "--namespace", namespace, "--set", *watch,
         "--set", "networkPolicy.apiServerCidrs[0]=127.0.0.1/32"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] in RBAC_KINDS]


def kubectl_apply(plane: cp.ControlPlane, objects: list[Obj]) -> None:
    subprocess.run(
        [kubectl_path(), "apply", "-f", "-"], input=json.dumps({"apiVersion": "v1",
        "kind": "List", "items": objects}), capture_output=True, text=True,
        env=plane.kubectl_env(), check=True, timeout=60,
    )  # fmt: skip


@contextlib.contextmanager
def running_operator(
    plane: cp.ControlPlane,
    namespace: str,
    profiles_path: pathlib.Path,
    folder: pathlib.Path,
    settings: Mapping[str, str],
    *,
    clusterwide: bool = False,
) -> Iterator[OperatorProcess]:
    """The chart's RBAC applied, and ``compose-operator`` running as its service account;
    the cluster-scoped RBAC objects are removed afterwards (the namespace takes the rest)."""
    release = f"op-{namespace}"[:40].rstrip("-")
    objects = chart_rbac(namespace, release, clusterwide=clusterwide)
    kubectl_apply(plane, objects)
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    operator_sa = next(a for a in accounts if a.endswith("-operator"))
    inference_sa = next(a for a in accounts if a.endswith("-inference"))
    worker_sa = next(a for a in accounts if a.endswith("-worker"))
    user = f"system:serviceaccount:{namespace}:{operator_sa}"
    _wait_authorized(plane, user, namespace, clusterwide=clusterwide)
    kubeconfig = plane.service_account_kubeconfig(
        namespace, operator_sa, folder / "operator.kubeconfig"
    )
    env = operator_env(
        profiles_path,
        KUBECONFIG=str(kubeconfig),
        COMPOSE_INFERENCE_SERVICE_ACCOUNT=inference_sa,
        COMPOSE_WORKER_SERVICE_ACCOUNT=worker_sa,
        **({} if clusterwide else {"COMPOSE_NAMESPACES": namespace}),
    )
    env.update(settings)
    process = OperatorProcess(env, folder / "operator.log", user=user)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        for obj in objects:
            if obj["kind"].startswith("Cluster"):
                subprocess.run(
                    [kubectl_path(), "delete", obj["kind"], obj["metadata"]["name"],
                     "--ignore-not-found", "--wait=false"],
                    capture_output=True, env=plane.kubectl_env(), check=False, timeout=60,
                )  # fmt: skip


def _wait_authorized(
    plane: cp.ControlPlane, user: str, namespace: str, *, clusterwide: bool
) -> None:
    """Until the API server's authorizer has the new bindings (its RBAC cache follows them a
    moment later): the operator's first request must not be a 403 it would exit on."""
    checks = [{"group": models.GROUP, "resource": models.PLURAL, "verb": "watch"}]
    if clusterwide:
        checks.append({"group": "kopf.dev", "resource": "clusterkopfpeerings", "verb": "create"})
    else:
        checks[0]["namespace"] = namespace
    for attributes in checks:
        plane.wait_allowed(user, namespace, attributes)


@pytest.fixture
def profiles_path(tmp_path: pathlib.Path) -> pathlib.Path:
    """The operator tests' profiles, plus one that asks for an instance type no node has and
    two whose image no registry has (``missing-image``) or kwok holds (``held-image``)."""
    gpu = """\
  resources: {gpu: 1, cpu: "3", memory: 14Gi, ephemeralStorage: 30Gi}
  placement:
    instanceTypes: [g5.xlarge, g5.2xlarge]
  licence: {name: test}
"""
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
        + f"- name: missing-image\n  image: {cp.MISSING_IMAGE}\n{gpu}"
        + f"- name: held-image\n  image: {cp.HELD_IMAGE}\n{gpu}"
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
    with running_operator(
        control_plane, namespace, profiles_path, tmp_path, operator_settings
    ) as process:
        yield process
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            sys.stderr.write(f"--- operator log ---\n{process.log()[-20000:]}\n")


@pytest_asyncio.fixture
async def kube(control_plane: cp.ControlPlane, namespace: str) -> AsyncIterator[ClusterClient]:
    """A cluster-admin test client in the test's namespace (users and the kubelet's part)."""
    async with control_plane.admin(namespace) as client:
        yield client


def kopf_admin_login(plane: cp.ControlPlane) -> kopf.ConnectionInfo:
    """What ``kopf.login_with_kubeconfig`` makes of the admin's kubeconfig: base64 CA and
    client certificate data."""
    config = yaml.safe_load(plane.kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    return kopf.ConnectionInfo(
        server=cluster["server"],
        ca_data=cluster["certificate-authority-data"],
        certificate_data=user["client-certificate-data"],
        private_key_data=user["client-key-data"],
        default_namespace="default",
    )


# -- what the inference container reports --------------------------------------------------------


def report(code: contract.ExitCode, message: str = "") -> str:
    """The termination message the inference image writes for ``code`` (with a result for OK)."""
    result = None
    if code == contract.ExitCode.OK:
        result = models.Result(
            s3_uri="s3://results-bucket/x/result.png", sha256="ab" * 32, width=1024,
            height=1024, format=models.ImageFormat.PNG, bytes=1000, seed=42,
        )  # fmt: skip
    return contract.TerminationMessage(
        exit_code=int(code), reason=str(code.reason), message=message, result=result,
        timings=models.Timings(model_load=12.5, inference=8.25, upload=0.5),
    ).to_json()  # fmt: skip


async def create(kube: ClusterClient, namespace: str, name: str, **spec: Any) -> Obj:
    return await kube.create(COMPOSITION_JOBS, cj_body(name, namespace, **spec))


async def end(kube: ClusterClient, pod: Mapping[str, Any], code: contract.ExitCode) -> None:
    """The container ends with ``code`` and its report."""
    await cp.finish_pod(kube, pod, exit_code=int(code), message=report(code, "said"))


# -- waiting -----------------------------------------------------------------------------------


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


def condition(obj: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            found: Mapping[str, Any] = item
            return found
    return None


async def cj_with(
    kube: ClusterClient,
    name: str,
    *,
    phase: str | tuple[str, ...] | None = None,
    reason: tuple[str, str] | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109
) -> Obj:
    """Wait until the CompositionJob has ``phase`` (or one of them) and/or condition
    ``reason=(type, reason)``."""
    phases = (phase,) if isinstance(phase, str) else phase

    async def check(client: ClusterClient) -> Obj | None:
        obj = await client.get_or_none(COMPOSITION_JOBS, name)
        if obj is None:
            return None
        if phases is not None and (obj.get("status") or {}).get("phase") not in phases:
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


async def running_pod(
    kube: ClusterClient,
    cj: str,
    *,
    index: int = 0,
    timeout: float = 60.0,  # noqa: ASYNC109 (a polling deadline)
) -> Obj:
    """The ``index``-th pod (in creation order) of the CompositionJob, once it runs."""

    async def check(client: ClusterClient) -> Obj | None:
        pods = await pods_of(client, cj)
        if len(pods) > index and pods[index]["status"].get("phase") == "Running":
            return pods[index]
        return None

    try:
        found: Obj = await wait_until(
            kube, check, timeout=timeout, what=f"pod {index} of {cj} to run"
        )
    except AssertionError:
        everything = await kube.list(PODS, all_namespaces=True)
        print(
            "DEBUG pods:",
            [
                (
                    p["metadata"]["namespace"][:20],
                    p["metadata"]["name"][:20],
                    p["spec"].get("nodeName"),
                    p["status"].get("phase"),
                    bool(p["metadata"].get("deletionTimestamp")),
                    p["metadata"].get("finalizers"),
                    [
                        c.get("message")
                        for c in p["status"].get("conditions", [])
                        if c.get("type") == "PodScheduled"
                    ],
                )
                for p in everything
            ],
        )
        raise
    return found


async def bound_pod(kube: ClusterClient, cj: str, *, job: str | None = None) -> Obj:
    """The newest live pod of the CompositionJob (of its Job ``job``) once the scheduler has
    bound it to a node (kwok holds a pod of :data:`~tests.support.control_plane.HELD_IMAGE`
    there, Pending)."""

    def wanted(pod: Mapping[str, Any]) -> bool:
        labels = pod["metadata"].get("labels") or {}
        mine = job is None or labels.get("batch.kubernetes.io/job-name") == job
        return mine and not pod["metadata"].get("deletionTimestamp")

    async def check(client: ClusterClient) -> Obj | None:
        pods = [p for p in await pods_of(client, cj) if wanted(p)]
        return pods[-1] if pods and pods[-1]["spec"].get("nodeName") else None

    found: Obj = await wait_until(kube, check, what=f"a pod of {job or cj} bound to a node")
    return found


async def child_jobs(kube: ClusterClient, *, cj: str | None = None) -> list[Obj]:
    selector = f"compose.nextunicorn.dev/job={cj}" if cj else MANAGED
    return await kube.list(JOBS, label_selector=selector)


async def wait_jobs(kube: ClusterClient, count: int = 1, *, cj: str | None = None) -> list[Obj]:
    """Until at least ``count`` child Jobs (of ``cj``) exist."""

    async def check(client: ClusterClient) -> list[Obj] | None:
        jobs = await child_jobs(client, cj=cj)
        return jobs if len(jobs) >= count else None

    found: list[Obj] = await wait_until(kube, check, what=f"{count} child Jobs of {cj or 'any'}")
    return found


def counted_by_the_cap(job: Mapping[str, Any]) -> bool:
    """What the cap counts: a Job that may run pods (not suspended) and that the Job controller
    has not finished (one being deleted still counts, as `kubectl get jobs` shows it)."""
    finished = any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )
    return not finished and not job["spec"].get("suspend")


@contextlib.asynccontextmanager
async def most_counted(kube: ClusterClient) -> AsyncIterator[list[int]]:
    """Follows the Jobs from a watch: the list holds, once the block ends, the most Jobs
    :func:`counted_by_the_cap` counted at any one time."""
    listed = await kube.request("GET", f"/apis/batch/v1/namespaces/{kube.namespace}/jobs")
    assert not listed["items"]
    state: dict[str, Mapping[str, Any]] = {}
    most = [0]

    async def follow() -> None:
        version = listed["metadata"]["resourceVersion"]
        async for kind, job in kube.watch(JOBS, resource_version=version, label_selector=MANAGED):
            assert kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"), (kind, job)
            if kind == "DELETED":
                state.pop(job["metadata"]["name"], None)
            elif kind != "BOOKMARK":
                state[job["metadata"]["name"]] = job
            most[0] = max(most[0], sum(counted_by_the_cap(each) for each in state.values()))

    task = asyncio.create_task(follow())
    try:
        yield most
    finally:
        await asyncio.sleep(1.0)  # the watch's last events
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the operator's requests, from the audit log -----------------------------------------------


def operator_requests(
    plane: cp.ControlPlane, operator: OperatorProcess, *, since: int = 0
) -> list[RequestRecord]:
    """The operator's API requests, in the order they finished (a watch: as it started)."""
    return plane.request_records(user=operator.user, since=since)


def label_selector(record: RequestRecord) -> str | None:
    """The ``labelSelector`` a list or watch asked for."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(record.path).query)
    return (query.get("labelSelector") or [None])[0]


def field_selector(record: RequestRecord) -> str | None:
    """The ``fieldSelector`` a list or watch asked for."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(record.path).query)
    return (query.get("fieldSelector") or [None])[0]


async def status_patches(
    plane: cp.ControlPlane, operator: OperatorProcess, name: str, *, settle: float = 0.5
) -> int:
    """The operator's status patches of ``name`` so far (the audit log is written as each
    request ends: read it again until it has stopped changing for ``settle`` seconds)."""

    def count() -> int:
        return sum(
            1
            for r in operator_requests(plane, operator)
            if r.resource == models.PLURAL
            and r.subresource == "status"
            and r.verb == "patch"
            and r.name == name
        )

    seen = count()
    while True:
        await asyncio.sleep(settle)
        now = count()
        if now == seen:
            return now
        seen = now


async def rewind_to_intent(kube: ClusterClient, name: str) -> Obj:
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
