"""The chart's RBAC grants exactly what the code says it uses: every call, nothing more.

The operator and the gateway each keep ``REQUIRED_PERMISSIONS`` (their own tests check that every
request they make on the real API server, read from its audit log, is covered by it), and the
pool workers' ``compose_api.pools.WORKER_PERMISSIONS``. Here the rendered ClusterRoles and Roles
are compared with those lists, in cluster-wide and namespaced mode, verb by verb, both ways.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from compose_api import pools
from compose_gateway import permissions as gateway_permissions
from compose_operator import permissions as operator_permissions
from tests.deploy import helpers
from tests.deploy.helpers import Obj

Render = Callable[[str | None], list[Obj]]
Triples = set[tuple[str, str, str]]


def _expected(*, clusterwide: bool) -> tuple[Triples, Triples]:
    """(ClusterRole triples, per-namespace Role triples) the operator needs in one mode."""
    scope = operator_permissions.Scope
    cluster: Triples = set()
    namespace: Triples = set()
    for permission in operator_permissions.REQUIRED_PERMISSIONS:
        triples = {(permission.api_group, permission.resource, v) for v in permission.verbs}
        if permission.scope == scope.CLUSTER:
            cluster |= triples
        elif permission.scope == scope.NAMESPACED:
            (cluster if clusterwide else namespace).update(triples)
        elif permission.scope == scope.CLUSTERWIDE_ONLY and clusterwide:
            cluster |= triples
        elif permission.scope == scope.NAMESPACED_ONLY and not clusterwide:
            namespace |= triples
        elif permission.scope == scope.CLUSTER_NAMESPACED_ONLY and not clusterwide:
            cluster |= triples
    return cluster, namespace


def _operator_objects(objects: list[Obj], kind: str) -> list[Obj]:
    return [
        o
        for o in helpers.of_kind(objects, kind)
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]


def _operator_account(objects: list[Obj]) -> dict[str, str]:
    deployment = helpers.one(objects, "Deployment", "-operator")
    return {
        "kind": "ServiceAccount",
        "name": deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "namespace": helpers.NAMESPACE,
    }


def test_cluster_wide_rules_equal_the_operator_permissions(render: Render) -> None:
    objects = render("cluster-wide")
    cluster, namespace = _expected(clusterwide=True)
    assert namespace == set()
    (role,) = _operator_objects(objects, "ClusterRole")
    assert helpers.rule_triples(role["rules"]) == cluster
    assert _operator_objects(objects, "Role") == []
    (binding,) = _operator_objects(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [_operator_account(objects)]
    # Cluster-wide mode needs the ClusterKopfPeering, not KopfPeerings; kopf does not list
    # namespaces when it serves them all.
    assert ("", "namespaces", "watch") not in cluster
    assert not any(resource == "kopfpeerings" for _, resource, _ in cluster)


def test_namespaced_rules_equal_the_operator_permissions(render: Render) -> None:
    objects = render("namespaced")
    cluster, namespace = _expected(clusterwide=False)
    (cluster_role,) = _operator_objects(objects, "ClusterRole")
    assert helpers.rule_triples(cluster_role["rules"]) == cluster
    roles = _operator_objects(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert helpers.rule_triples(role["rules"]) == namespace
    bindings = _operator_objects(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert binding["subjects"] == [_operator_account(objects)]
    # Nothing namespaced is granted cluster-wide in namespaced mode.
    assert not any(resource in {"jobs", "pods", "compositionjobs"} for _, resource, _ in cluster)
    # kopf lists and watches namespaces even when limited to some: a cluster-level grant.
    assert ("", "namespaces", "list") in cluster


def test_every_operator_call_is_granted_in_its_mode(render: Render) -> None:
    """The operator's own coverage check (``allows``) agrees with what the chart grants."""
    for values, clusterwide in (("cluster-wide", True), (None, False), ("namespaced", False)):
        objects = render(values)
        granted: Triples = set()
        for kind in ("ClusterRole", "Role"):
            for role in _operator_objects(objects, kind):
                granted |= helpers.rule_triples(role["rules"])
        for group, resource, verb in granted:
            assert operator_permissions.allows(group, resource, verb, clusterwide=clusterwide), (
                group,
                resource,
                verb,
            )
        for permission in operator_permissions.REQUIRED_PERMISSIONS:
            for verb in permission.verbs:
                needed = operator_permissions.allows(
                    permission.api_group, permission.resource, verb, clusterwide=clusterwide
                )
                assert needed == ((permission.api_group, permission.resource, verb) in granted)


def test_gateway_role_equals_the_gateway_permissions(render: Render) -> None:
    objects = render("gateway")
    role = helpers.one(objects, "Role", "-gateway")
    expected = {
        (p.api_group, p.resource, verb)
        for p in gateway_permissions.REQUIRED_PERMISSIONS
        for verb in p.verbs
    }
    assert helpers.rule_triples(role["rules"]) == expected
    assert role["metadata"]["namespace"] == helpers.NAMESPACE
    gateway_rbac = [
        o
        for kind in ("ClusterRole", "ClusterRoleBinding")
        for o in helpers.of_kind(objects, kind)
        if "gateway" in o["metadata"]["name"]
    ]
    assert gateway_rbac == []


def _worker_objects(objects: list[Obj], kind: str) -> list[Obj]:
    return [
        o
        for o in helpers.of_kind(objects, kind)
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]


@pytest.mark.parametrize("values", [None, "namespaced", "cluster-wide", "pools", "pools-keda"])
def test_worker_roles_equal_the_worker_permissions(render: Render, values: str | None) -> None:
    objects = render(values)
    expected = {
        (group, resource, verb)
        for group, resource, verbs, _ in pools.WORKER_PERMISSIONS
        for verb in verbs
    }
    accounts = _worker_objects(objects, "ServiceAccount")
    roles = _worker_objects(objects, "Role")
    bindings = _worker_objects(objects, "RoleBinding")
    namespaces = sorted(o["metadata"]["namespace"] for o in accounts)
    assert namespaces
    assert sorted(o["metadata"]["namespace"] for o in roles) == namespaces
    assert sorted(o["metadata"]["namespace"] for o in bindings) == namespaces
    by_namespace = {o["metadata"]["namespace"]: o for o in roles}
    for binding in bindings:
        namespace = binding["metadata"]["namespace"]
        role = by_namespace[namespace]
        # Both ways: every permission is granted, and nothing else.
        assert helpers.rule_triples(role["rules"]) == expected
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        (account,) = [a for a in accounts if a["metadata"]["namespace"] == namespace]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": namespace}
        ]
    # Workers get nothing cluster-wide.
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        assert _worker_objects(objects, kind) == []
