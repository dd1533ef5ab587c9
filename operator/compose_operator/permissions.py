"""Exactly the Kubernetes API permissions the operator uses: its own calls and kopf's.

The chart's RBAC is checked against :data:`REQUIRED_PERMISSIONS` by the deployment tests, and the
operator's cluster tests check that every request it made on the real API server (its audit log)
is covered by it (:func:`allows`) and every permission it grants is used. Keep this list in
step with :mod:`compose_operator.kubeapi` and the resources :mod:`compose_operator.handlers`
watches.
"""

from __future__ import annotations

import dataclasses
import enum

from compose_api import models, pools


class Scope(enum.StrEnum):
    """Where a rule belongs in RBAC."""

    NAMESPACED = "namespaced"  # a Role per watched namespace, or the ClusterRole cluster-wide
    CLUSTER = "cluster"  # cluster-scoped resources: always a ClusterRole
    CLUSTERWIDE_ONLY = "clusterwide-only"  # needed only when the operator watches all namespaces
    NAMESPACED_ONLY = "namespaced-only"  # needed only when it watches a list of namespaces
    # cluster-scoped resources needed only when it watches a list of namespaces (a ClusterRole)
    CLUSTER_NAMESPACED_ONLY = "cluster-namespaced-only"


@dataclasses.dataclass(frozen=True)
class Permission:
    api_group: str  # "" for the core group
    resource: str  # "jobs", "compositionjobs/status", ...
    verbs: tuple[str, ...]
    scope: Scope
    why: str


REQUIRED_PERMISSIONS: tuple[Permission, ...] = (
    Permission(models.GROUP, models.PLURAL, ("list", "watch", "get", "delete"), Scope.NAMESPACED,
               "the operator watches CompositionJobs; retention reads a finished one again when "
               "it is due and deletes it (ttlSecondsAfterFinished)"),
    Permission(models.GROUP, f"{models.PLURAL}/status", ("patch",), Scope.NAMESPACED,
               "the operator writes status (never spec)"),
    Permission("batch", "jobs", ("list", "watch", "get", "create", "patch", "delete"),
               Scope.NAMESPACED,
               "child Jobs: watched, created (adopted on 409), suspended, deleted on deadline"),
    Permission("", "pods", ("list", "watch"), Scope.NAMESPACED,
               "pod conditions, container states and termination messages of child Jobs"),
    Permission(models.GROUP, pools.PLURAL, ("list", "watch"), Scope.NAMESPACED,
               "kopf watches CompositionPools"),
    Permission(models.GROUP, f"{pools.PLURAL}/status", ("patch",), Scope.NAMESPACED,
               "the operator writes the pools' status (never their spec)"),
    Permission("apps", "deployments", ("list", "watch", "create", "patch"), Scope.NAMESPACED,
               "each pool's Deployment of workers: watched, created, scaled and updated; deleted "
               "with its pool by the garbage collector"),
    Permission("coordination.k8s.io", "leases", ("list", "watch", "get"), Scope.NAMESPACED,
               "the pool workers' Leases: which workers are warm, ready, busy or lost"),
    Permission("", "events", ("create", "list", "watch"), Scope.NAMESPACED,
               "Kubernetes Events for the transitions a user reads (posted by the operator); "
               "the Job controller's FailedCreate Events of Jobs (watched: why a pod is not "
               "created)"),
    Permission("", "nodes", ("get",), Scope.CLUSTER,
               "instance type and capacity type of the node an attempt ran on"),
    Permission("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch"),
               Scope.CLUSTER, "kopf discovers and re-scans the CRDs it serves"),
    Permission("", "namespaces", ("list", "watch"), Scope.CLUSTER_NAMESPACED_ONLY,
               "kopf and the operator list and watch namespaces when limited to "
               "COMPOSE_NAMESPACES (they may be glob patterns); cluster-wide it needs them "
               "discoverable only"),
    Permission("kopf.dev", "clusterkopfpeerings", ("list", "watch", "patch", "create"),
               Scope.CLUSTERWIDE_ONLY,
               "active/standby peering, cluster-wide (the operator creates the object and "
               "watches it to stand by while a peer outranks it)"),
    Permission("kopf.dev", "kopfpeerings", ("list", "watch", "patch", "create"),
               Scope.NAMESPACED_ONLY,
               "active/standby peering per namespace (the operator creates the objects and "
               "watches them to stand by while a peer outranks it)"),
)  # fmt: skip


def allows(
    api_group: str, resource: str, verb: str, *, clusterwide: bool, subresource: str | None = None
) -> bool:
    """Whether the listed permissions cover one request (as RBAC matches it)."""
    name = f"{resource}/{subresource}" if subresource else resource
    for item in REQUIRED_PERMISSIONS:
        if item.scope == Scope.CLUSTERWIDE_ONLY and not clusterwide:
            continue
        if item.scope in (Scope.NAMESPACED_ONLY, Scope.CLUSTER_NAMESPACED_ONLY) and clusterwide:
            continue
        if item.api_group == api_group and item.resource == name and verb in item.verbs:
            return True
    return False
