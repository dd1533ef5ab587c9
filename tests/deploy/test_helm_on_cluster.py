"""`helm install`, `helm upgrade` and `helm uninstall` of the chart against the real test
control plane, with the default values and with the namespaced value set.

The API server checks what `helm template` cannot: admission of every object (RBAC escalation
rules for the Roles the chart grants, the Deployment's pod template, the PDB), the CRDs from the
chart's crds/ folder, and that an upgrade and an uninstall leave nothing behind.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.deploy import helpers
from tests.support import control_plane as cp

pytestmark = pytest.mark.timeout(300)
# The one value the chart requires and has no default for: the API server's address range, for
# the operator's NetworkPolicy egress (the test server listens on loopback).
REQUIRED = ("--set", "networkPolicy.apiServerCidrs[0]=127.0.0.1/32")


def run(tools: helpers.Tools, cluster: cp.ControlPlane, *args: str) -> str:
    done = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        env=cluster.kubectl_env(),
        check=False,
        timeout=180,
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def objects(tools: helpers.Tools, cluster: cp.ControlPlane, kind: str, *args: str) -> list[Any]:
    out = run(tools, cluster, tools.kubectl, "get", kind, "-o", "json", *args)
    items: list[Any] = json.loads(out)["items"]
    return items


def released(tools: helpers.Tools, cluster: cp.ControlPlane, kind: str, release: str) -> list[str]:
    selector = f"app.kubernetes.io/instance={release}"
    return sorted(
        f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
        for o in objects(tools, cluster, kind, "-A", "-l", selector)
    )


def test_install_upgrade_uninstall_with_default_values(
    tools: helpers.Tools, control_plane: cp.ControlPlane
) -> None:
    release, namespace = "nextunicorn-compose", "compose-default"
    run(
        tools, control_plane, tools.helm, "install", release, str(helpers.CHART),
        "--namespace", namespace, "--create-namespace", "--wait", "--timeout", "120s", *REQUIRED,
    )  # fmt: skip
    deployment = objects(tools, control_plane, "deployment", "-n", namespace)
    assert [d["metadata"]["name"] for d in deployment] == [f"{release}-operator"]
    assert deployment[0]["status"].get("readyReplicas") == deployment[0]["spec"]["replicas"]
    assert released(tools, control_plane, "clusterrole", release) == [f"/{release}-operator"]

    run(
        tools, control_plane, tools.helm, "upgrade", release, str(helpers.CHART),
        "--namespace", namespace, "--set", "operator.replicas=1", "--wait", "--timeout", "120s",
        *REQUIRED,
    )  # fmt: skip
    upgraded = objects(tools, control_plane, "deployment", "-n", namespace)[0]
    assert upgraded["spec"]["replicas"] == 1
    history = json.loads(
        run(tools, control_plane, tools.helm, "history", release, "-n", namespace, "-o", "json")
    )
    assert [h["status"] for h in history] == ["superseded", "deployed"]

    run(tools, control_plane, tools.helm, "uninstall", release, "-n", namespace, "--wait")
    for kind in ("deployment", "serviceaccount", "configmap", "clusterrole", "clusterrolebinding"):
        assert released(tools, control_plane, kind, release) == [], kind
    # The CRDs of crds/ stay, as Helm documents: deleting them would delete every job.
    crds = {o["metadata"]["name"] for o in objects(tools, control_plane, "crd")}
    assert "compositionjobs.compose.nextunicorn.dev" in crds


def test_install_namespaced_grants_roles_only_in_the_watched_namespaces(
    tools: helpers.Tools, control_plane: cp.ControlPlane
) -> None:
    release, namespace = "nextunicorn-compose-teams", "compose-teams"
    for team in ("team-a", "team-b"):
        control_plane.create_namespace(team)
    try:
        run(
            tools, control_plane, tools.helm, "install", release, str(helpers.CHART),
            "--namespace", namespace, "--create-namespace",
            "--values", str(helpers.VALUES / "namespaced.yaml"), "--wait", "--timeout", "120s",
            *REQUIRED,
        )  # fmt: skip
        roles = released(tools, control_plane, "role", release)
        assert roles == [f"team-a/{release}-operator", f"team-b/{release}-operator"]
        operator_sa = f"system:serviceaccount:{namespace}:{release}-operator"
        for team, expected in (("team-a", "yes"), ("team-b", "yes"), ("default", "no")):
            answer = subprocess.run(
                [tools.kubectl, "auth", "can-i", "create", "jobs.batch", "-n", team,
                 f"--as={operator_sa}"],
                capture_output=True, text=True, env=control_plane.kubectl_env(), check=False,
            )  # fmt: skip
            assert answer.stdout.strip() == expected, team
        run(
            tools, control_plane, tools.helm, "upgrade", release, str(helpers.CHART),
            "--namespace", namespace, "--values", str(helpers.VALUES / "namespaced.yaml"),
            "--set", "operator.replicas=1", "--wait", "--timeout", "120s", *REQUIRED,
        )  # fmt: skip
        run(tools, control_plane, tools.helm, "uninstall", release, "-n", namespace, "--wait")
        assert released(tools, control_plane, "role", release) == []
        assert released(tools, control_plane, "rolebinding", release) == []
    finally:
        for team in ("team-a", "team-b"):
            control_plane.delete_namespace(team)
