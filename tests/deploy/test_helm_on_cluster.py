"""`helm install`, `helm upgrade` and `helm uninstall` of the chart against the real test
control plane, with the default values, the namespaced value set, and pools from values.

The API server checks what `helm template` cannot: admission of every object (RBAC escalation
rules for the Roles the chart grants, the Deployment's pod template, the PDB), the CRDs from the
chart's crds/ folder, the CompositionPools against their CRD and the ScaledObjects against KEDA's,
what the workers' account may do (`kubectl auth can-i`), and that an upgrade and an uninstall leave
nothing behind.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import pytest
import yaml

from compose_api import models, pools
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
        assert roles == [
            f"team-a/{release}-operator",
            f"team-a/{release}-worker",
            f"team-b/{release}-operator",
            f"team-b/{release}-worker",
        ]
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


def _can_i(
    tools: helpers.Tools, cluster: cp.ControlPlane, user: str, namespace: str, *args: str
) -> str:
    done = subprocess.run(
        [tools.kubectl, "auth", "can-i", *args, "-n", namespace, f"--as={user}"],
        capture_output=True, text=True, env=cluster.kubectl_env(), check=False, timeout=60,
    )  # fmt: skip
    return done.stdout.strip()


def _granted(
    tools: helpers.Tools, cluster: cp.ControlPlane, user: str, namespace: str
) -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) ``user`` may use in ``namespace``: the API server's own
    answer (a SelfSubjectRulesReview made as that user, what `kubectl auth can-i --list` shows)."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    done = subprocess.run(
        [tools.kubectl, "create", "--validate=false", "-f", "-", "-o", "json", f"--as={user}"],
        input=json.dumps(review), capture_output=True, text=True, env=cluster.kubectl_env(),
        check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)["status"]
    assert not status.get("incomplete"), status
    return helpers.rule_triples(status["resourceRules"])


def test_install_with_pools_creates_them_and_the_worker_identity(
    tools: helpers.Tools, keda_crd: cp.ControlPlane, tmp_path: pathlib.Path
) -> None:
    cluster = keda_crd
    release, namespace, team = "nextunicorn-compose-pools", "compose-pools", "pools-team"
    cluster.create_namespace(team)
    values = tmp_path / "pools.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "watchNamespaces": [team],
                "operator": {"replicas": 1},
                "pools": {
                    "defaultPools": {"instantid-sdxl": "interactive"},
                    "keda": {"serverAddress": "http://prometheus.monitoring.svc:9090"},
                    "list": [
                        {
                            "name": "interactive",
                            "namespace": team,
                            "spec": {"profile": "instantid-sdxl", "minReplicas": 1},
                            "keda": {"enabled": True},
                        },
                        {"name": "batch", "namespace": team, "spec": {"profile": "instantid-sdxl"}},
                    ],
                },
            }
        )
    )
    try:
        run(
            tools, cluster, tools.helm, "install", release, str(helpers.CHART),
            "--namespace", namespace, "--create-namespace", "--values", str(values),
            "--wait", "--timeout", "120s", *REQUIRED,
        )  # fmt: skip
        # The pools, as the API server stored them: accepted and defaulted by the CRD.
        stored = {p["metadata"]["name"]: p for p in objects(tools, cluster, "cpool", "-n", team)}
        assert set(stored) == {"interactive", "batch"}
        assert stored["interactive"]["spec"]["scaling"] == pools.Scaling.EXTERNAL
        assert stored["batch"]["spec"]["scaling"] == pools.Scaling.OPERATOR
        fields = pools.CompositionPoolSpec.model_fields
        assert stored["batch"]["spec"]["maxReplicas"] == fields["max_replicas"].default
        # The ScaledObject, admitted by KEDA's CRD (structural schema and CEL rule).
        (scaled,) = objects(tools, cluster, "scaledobjects.keda.sh", "-n", team)
        assert scaled["spec"]["scaleTargetRef"] == {
            "apiVersion": models.API_VERSION,
            "kind": pools.KIND,
            "name": "interactive",
        }
        assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 1)
        # KEDA's (and an HPA's) way in: the pool's /scale subresource.
        run(tools, cluster, tools.kubectl, "scale", "cpool/interactive", "-n", team,
            "--replicas=1")  # fmt: skip
        scale = cluster.request(
            "GET",
            f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{team}/{pools.PLURAL}"
            "/interactive/scale",
        )
        assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1

        # The workers' identity in the pool namespace.
        for kind in ("serviceaccount", "role", "rolebinding"):
            assert f"{team}/{release}-worker" in released(tools, cluster, kind, release), kind
        worker = f"system:serviceaccount:{team}:{release}-worker"
        nobody = f"system:serviceaccount:{team}:nobody"
        expected = {
            (group, resource, verb)
            for group, resource, verbs, _ in pools.WORKER_PERMISSIONS
            for verb in verbs
        }
        # Exactly the worker permissions beyond what any account of the namespace gets.
        granted = _granted(tools, cluster, worker, team) - _granted(tools, cluster, nobody, team)
        assert granted == expected
        for args, answer in (
            (("patch", "compositionjobs.compose.nextunicorn.dev", "--subresource=status"), "yes"),
            (("watch", "compositionjobs.compose.nextunicorn.dev"), "yes"),
            (("create", "leases.coordination.k8s.io"), "yes"),
            (("update", "leases.coordination.k8s.io"), "no"),
            (("patch", "compositionjobs.compose.nextunicorn.dev"), "no"),
            (("create", "pods"), "no"),
            (("get", "secrets"), "no"),
            (("patch", "compositionpools.compose.nextunicorn.dev", "--subresource=scale"), "no"),
        ):
            assert _can_i(tools, cluster, worker, team, *args) == answer, args
        # Nothing outside its namespace.
        assert (
            _can_i(tools, cluster, worker, "default", "create", "leases.coordination.k8s.io")
            == "no"
        )

        run(tools, cluster, tools.helm, "uninstall", release, "-n", namespace, "--wait")
        for kind in ("cpool", "scaledobjects.keda.sh", "serviceaccount", "role", "rolebinding"):
            assert released(tools, cluster, kind, release) == [], kind
    finally:
        cluster.delete_namespace(team)
