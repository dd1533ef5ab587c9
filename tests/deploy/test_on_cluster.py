"""The users' paths against the real test control plane, with their own tools.

``kubectl apply -k manifests/`` installs everything; each example (the pool examples too, their
ScaledObject against KEDA's CRD) is accepted and each file in ``manifests/examples/invalid/`` is
refused by the API server itself (structural schema, CEL
rules) with the message the file expects; ``kubectl get cj`` shows the printer columns; and a
CompositionJob applied with kubectl goes to Succeeded (or Failed with its reason) through the
real operator process, authenticated as the chart's operator service account (exactly the
chart's RBAC), and the real Job controller. The tests play only the inference container's end.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from compose_api import contract, models, pools
from tests.deploy import helpers
from tests.operator.operator_process import OperatorProcess, operator_env
from tests.support import control_plane as cp

pytestmark = pytest.mark.timeout(300)

NS = helpers.NAMESPACE
OPERATOR_SA = "nextunicorn-compose-operator"
GOOD = sorted(helpers.EXAMPLES.glob("*.yaml"))
BAD = sorted((helpers.EXAMPLES / "invalid").glob("*.yaml"))
POOL_EXAMPLES = sorted((helpers.EXAMPLES / "pools").glob("*.yaml"))
# Files under manifests/ other than the CRDs: what `kubectl delete` removes after the module.
INSTALLED = sorted(p for p in helpers.MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def kubectl(
    tools: helpers.Tools, cluster: cp.ControlPlane, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [tools.kubectl, *args],
        capture_output=True,
        text=True,
        env=cluster.kubectl_env(),
        check=False,
        timeout=120,
    )
    if check and done.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def installed(tools: helpers.Tools, control_plane: cp.ControlPlane) -> Iterator[cp.ControlPlane]:
    """`kubectl apply -k manifests/`, removed again (all but the CRDs) after the module."""
    kubectl(tools, control_plane, "apply", "-k", str(helpers.MANIFESTS))
    yield control_plane
    kubectl(tools, control_plane, "delete", "cjob", "--all", "-n", NS, "--wait=false", check=False)
    for path in INSTALLED:
        kubectl(
            tools,
            control_plane,
            "delete",
            "--ignore-not-found",
            "--wait=false",
            "-f",
            str(path),
            check=False,
        )


def expected_errors(path: pathlib.Path) -> list[str]:
    return re.findall(r"^# expected-error: (.+)$", path.read_text(), flags=re.MULTILINE)


def wait_for(predicate: Any, *, timeout: float = 120, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def test_kustomize_installs_the_operator_and_its_rbac(
    tools: helpers.Tools, installed: cp.ControlPlane
) -> None:
    deployment = json.loads(
        kubectl(tools, installed, "get", "deployment", "-n", NS, "-o", "json").stdout
    )["items"]
    assert [d["metadata"]["name"] for d in deployment] == ["nextunicorn-compose-operator"]
    # The Deployment controller and the scheduler are real: the operator pod lands on the CPU
    # node (the GPU nodes are tainted) and kwok runs it.
    pod = wait_for(
        lambda: next(
            (
                p
                for p in json.loads(
                    kubectl(
                        tools,
                        installed,
                        "get",
                        "pods",
                        "-n",
                        NS,
                        "-o",
                        "json",
                        "-l",
                        "app.kubernetes.io/component=operator",
                    ).stdout
                )["items"]
                if p["status"].get("phase") == "Running"
            ),
            None,
        ),
        what="the operator pod to run",
    )
    assert pod["spec"]["nodeName"] == "system-0"
    can = kubectl(
        tools,
        installed,
        "auth",
        "can-i",
        "create",
        "jobs.batch",
        "-n",
        NS,
        f"--as=system:serviceaccount:{NS}:{OPERATOR_SA}",
    )
    assert can.stdout.strip() == "yes"
    cannot = kubectl(
        tools,
        installed,
        "auth",
        "can-i",
        "create",
        "secrets",
        "-n",
        NS,
        f"--as=system:serviceaccount:{NS}:{OPERATOR_SA}",
        check=False,
    )
    assert cannot.stdout.strip() == "no"


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_every_example_is_accepted_and_defaulted(
    tools: helpers.Tools, installed: cp.ControlPlane, path: pathlib.Path
) -> None:
    kubectl(tools, installed, "apply", "-f", str(path))
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    out = kubectl(tools, installed, "get", "cjob", name, "-n", NS, "-o", "json").stdout
    stored = json.loads(out)
    # The server applied the schema's defaults.
    assert stored["spec"]["profile"] == models.CompositionJobSpec.model_fields["profile"].default
    assert stored["spec"]["params"]["steps"] >= 1
    kubectl(tools, installed, "delete", "-f", str(path), "--wait=false")


@pytest.mark.parametrize("path", POOL_EXAMPLES, ids=[p.stem for p in POOL_EXAMPLES])
def test_every_pool_example_is_accepted_and_defaulted(
    tools: helpers.Tools, installed: cp.ControlPlane, keda_crd: cp.ControlPlane, path: pathlib.Path
) -> None:
    kubectl(tools, installed, "apply", "-f", str(path))
    try:
        documents = helpers.parse_documents(path.read_text())
        assert any(doc["kind"] == pools.KIND for doc in documents)
        for doc in documents:
            kind = "cpool" if doc["kind"] == pools.KIND else "scaledobjects.keda.sh"
            name = doc["metadata"]["name"]
            out = kubectl(tools, installed, "get", kind, name, "-n", NS, "-o", "json").stdout
            stored = json.loads(out)
            if doc["kind"] == pools.KIND:
                # The server applied the schema's defaults.
                fields = pools.CompositionPoolSpec.model_fields
                assert stored["spec"]["leaseSeconds"] == fields["lease_seconds"].default
                assert stored["spec"]["profile"] == doc["spec"]["profile"]
            else:
                assert stored["spec"]["scaleTargetRef"]["kind"] == pools.KIND
    finally:
        kubectl(tools, installed, "delete", "-f", str(path), "--wait=false")


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_every_invalid_example_is_refused_by_the_server(
    tools: helpers.Tools, installed: cp.ControlPlane, path: pathlib.Path
) -> None:
    errors = expected_errors(path)
    assert errors, f"{path.name} states no expected-error"
    done = kubectl(tools, installed, "apply", "-f", str(path), check=False)
    assert done.returncode != 0, f"{path.name} was accepted"
    for expected in errors:
        assert expected in done.stderr, f"{path.name}: {expected!r} not in {done.stderr!r}"


def test_get_shows_the_printer_columns(tools: helpers.Tools, installed: cp.ControlPlane) -> None:
    kubectl(tools, installed, "apply", "-f", str(helpers.EXAMPLES / "01-simple.yaml"))
    table = kubectl(tools, installed, "get", "cjob", "-n", NS).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROFILE", "ATTEMPT", "AGE", "RESULT"]
    assert table[1].split()[0] == "simple"
    wide = kubectl(tools, installed, "get", "cjob", "-n", NS, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-2:] == ["MESSAGE", "SEED"]
    kubectl(tools, installed, "delete", "cjob", "simple", "-n", NS)


# -- a CompositionJob through the real operator and the real Job controller -----------------


def _profiles(tmp_path: pathlib.Path) -> pathlib.Path:
    """The profiles the chart mounts, read from the installed ConfigMap file."""
    config = next(
        doc
        for doc in yaml.safe_load_all((helpers.MANIFESTS / "configmap.yaml").read_text())
        if doc and doc.get("kind") == "ConfigMap"
    )
    path = tmp_path / "profiles.yaml"
    path.write_text(next(iter(config["data"].values())))
    return path


@pytest.fixture
def operator(installed: cp.ControlPlane, tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    """compose-operator on this machine, logged in as the chart's operator service account."""
    kubeconfig = installed.service_account_kubeconfig(NS, OPERATOR_SA, tmp_path / "sa.kubeconfig")
    env = operator_env(
        _profiles(tmp_path),
        KUBECONFIG=str(kubeconfig),
        COMPOSE_INFERENCE_SERVICE_ACCOUNT="nextunicorn-compose-inference",
    )
    env["COMPOSE_OUTPUT_BUCKET"] = "nextunicorn-compose-results"
    # Active/standby as the chart runs it: the operator creates its ClusterKopfPeering.
    env["COMPOSE_STANDALONE"] = "false"
    env["COMPOSE_PEERING_NAME"] = "nextunicorn-compose"
    env["COMPOSE_NAMESPACES"] = NS  # the manifests install the operator namespaced
    process = OperatorProcess(env, tmp_path / "operator.log")
    process.start()
    yield process
    process.stop()
    if "Traceback" in process.log():
        sys.stderr.write(f"--- operator log ---\n{process.log()[-20000:]}\n")


def _report(code: contract.ExitCode, message: str = "") -> str:
    result = None
    if code == contract.ExitCode.OK:
        result = models.Result(
            s3_uri="s3://nextunicorn-compose-results/results/simple/result.png",
            sha256="cd" * 32,
            width=1024,
            height=1024,
            format=models.ImageFormat.PNG,
            bytes=2_000_000,
            seed=7,
        )
    return contract.TerminationMessage(
        exit_code=int(code),
        reason=str(code.reason),
        message=message,
        result=result,
        timings=models.Timings(model_load=20.0, inference=18.5, upload=0.4),
    ).to_json()


def _cj(cluster: cp.ControlPlane, name: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.request(
        "GET", f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{NS}/{models.PLURAL}/{name}"
    )
    return body


def _running_pod(cluster: cp.ControlPlane, cj: str) -> dict[str, Any] | None:
    pods = cluster.request("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector=job-name")["items"]
    return next(
        (
            p
            for p in pods
            if p["status"].get("phase") == "Running" and p["metadata"]["name"].startswith(cj)
        ),
        None,
    )


def _finish(cluster: cp.ControlPlane, pod: dict[str, Any], code: contract.ExitCode) -> None:
    async def finish() -> None:
        async with cluster.admin(NS) as kube:
            await cp.finish_pod(kube, pod, exit_code=int(code), message=_report(code, "no face"))

    asyncio.run(finish())


def _apply_simple(tools: helpers.Tools, cluster: cp.ControlPlane, name: str) -> None:
    body = yaml.safe_load((helpers.EXAMPLES / "01-simple.yaml").read_text())
    body["metadata"]["name"] = name
    kubectl_input = json.dumps(body)
    done = subprocess.run(
        [tools.kubectl, "apply", "-f", "-"],
        input=kubectl_input,
        capture_output=True,
        text=True,
        env=cluster.kubectl_env(),
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_applied_job_succeeds_through_the_real_job_controller(
    tools: helpers.Tools, installed: cp.ControlPlane, operator: OperatorProcess
) -> None:
    _apply_simple(tools, installed, "through")
    pod = wait_for(lambda: _running_pod(installed, "through"), what="the inference pod to run")
    # The scheduler placed the GPU pod on a g5 node, through the GPU taint.
    assert pod["spec"]["nodeName"].startswith("gpu-")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    wait_for(
        lambda: _cj(installed, "through").get("status", {}).get("phase") == "Running",
        what="phase Running",
    )
    _finish(installed, pod, contract.ExitCode.OK)
    cj = wait_for(
        lambda: (
            (c := _cj(installed, "through")).get("status", {}).get("phase") == "Succeeded" and c
        ),
        what="phase Succeeded",
    )
    assert cj["status"]["result"]["s3Uri"].endswith("/result.png")
    attempt = cj["status"]["attempts"][0]
    assert attempt["nodeName"] == pod["spec"]["nodeName"]
    # Read from the node the scheduler chose: the g5 labels of the fake GPU nodes.
    assert attempt["instanceType"] in {"g5.xlarge", "g5.2xlarge"}
    assert attempt["outcome"] == "Succeeded"

    # The real Job controller marked the child Job complete.
    def complete() -> bool:
        job = installed.request("GET", f"/apis/batch/v1/namespaces/{NS}/jobs")["items"][0]
        conditions = job["status"].get("conditions") or []
        return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)

    wait_for(complete, what="the Job controller to mark the Job Complete")
    described = kubectl(tools, installed, "describe", "cjob", "through", "-n", NS).stdout
    assert "Events:" in described
    assert "Succeeded" in described.split("Events:")[1]
    peering = installed.request(
        "GET", f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings/nextunicorn-compose"
    )
    assert peering["status"], "no operator is registered in the peering object"
    row = kubectl(tools, installed, "get", "cjob", "through", "-n", NS).stdout.splitlines()[1]
    assert row.split()[1] == "Succeeded"
    kubectl(tools, installed, "delete", "cjob", "through", "-n", NS)


def test_applied_job_with_no_face_fails_with_its_reason(
    tools: helpers.Tools, installed: cp.ControlPlane, operator: OperatorProcess
) -> None:
    _apply_simple(tools, installed, "faceless")
    pod = wait_for(lambda: _running_pod(installed, "faceless"), what="the inference pod to run")
    _finish(installed, pod, contract.ExitCode.NO_FACE)
    cj = wait_for(
        lambda: (c := _cj(installed, "faceless")).get("status", {}).get("phase") == "Failed" and c,
        what="phase Failed",
    )
    failed = next(c for c in cj["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NoFaceFound"
    assert "no face" in failed["message"]
    # podFailurePolicy (FailJob on the bad-input exit codes) is applied by the real controller:
    # no second pod was started although backoffLimit allows retries.
    pods = installed.request("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector=job-name")
    names = [p["metadata"]["name"] for p in pods["items"]]
    assert [n for n in names if n.startswith("faceless-")] == [pod["metadata"]["name"]]

    def job_failed() -> dict[str, Any] | None:
        job = installed.request("GET", f"/apis/batch/v1/namespaces/{NS}/jobs")["items"][0]
        assert job["spec"]["backoffLimit"] > 0
        conditions = job["status"].get("conditions") or []
        return next((c for c in conditions if c["type"] == "Failed"), None)

    assert wait_for(job_failed, what="the Job to fail")["reason"] == "PodFailurePolicy"
    kubectl(tools, installed, "delete", "cjob", "faceless", "-n", NS)
