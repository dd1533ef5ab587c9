"""The Kubernetes resources the tests name, and one API request as RBAC and the audit log see it.

:class:`ResourceSpec` says where a resource is served and how the API server treats writes to it
(a ``/status`` subresource, the status a new object starts with); the emulator
(tests/support/kube_emulator.py) serves exactly these, and the tests' client
(tests/support/cluster_client.py) builds its paths from them. :class:`RequestRecord` is one
request, from the emulator's request log or the real API server's audit log
(:meth:`tests.support.control_plane.ControlPlane.request_records`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

TEST_CLIENT_USER_AGENT = "compose-test-client"


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """One served resource: what discovery says about it and how writes treat it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()
    # The status the API server gives a new object (pods start Pending).
    initial_status: Mapping[str, Any] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    @property
    def qualified(self) -> str:
        """How the API server names the resource in messages: ``jobs.batch``, ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


COMPOSITION_JOBS = ResourceSpec(
    "compose.nextunicorn.dev",
    "v1alpha1",
    "compositionjobs",
    "CompositionJob",
    status_subresource=True,
    short_names=("cj",),
)
COMPOSITION_POOLS = ResourceSpec(
    "compose.nextunicorn.dev",
    "v1alpha1",
    "compositionpools",
    "CompositionPool",
    status_subresource=True,
    short_names=("cpool",),
)
JOBS = ResourceSpec("batch", "v1", "jobs", "Job", status_subresource=True)
DEPLOYMENTS = ResourceSpec("apps", "v1", "deployments", "Deployment", status_subresource=True)
PODS = ResourceSpec(
    "", "v1", "pods", "Pod", status_subresource=True, short_names=("po",),
    initial_status={"phase": "Pending"},
)  # fmt: skip
EVENTS = ResourceSpec("", "v1", "events", "Event", short_names=("ev",))
EVENTS_V1 = ResourceSpec("events.k8s.io", "v1", "events", "Event", short_names=("ev",))
NAMESPACES = ResourceSpec(
    "", "v1", "namespaces", "Namespace", namespaced=False, status_subresource=True,
    short_names=("ns",), initial_status={"phase": "Active"},
)  # fmt: skip
NODES = ResourceSpec(
    "", "v1", "nodes", "Node", namespaced=False, status_subresource=True, short_names=("no",)
)
CONFIG_MAPS = ResourceSpec("", "v1", "configmaps", "ConfigMap", short_names=("cm",))
CRDS = ResourceSpec(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
    namespaced=False, status_subresource=True, short_names=("crd", "crds"),
)  # fmt: skip
KOPF_PEERINGS = ResourceSpec("kopf.dev", "v1", "kopfpeerings", "KopfPeering")
CLUSTER_KOPF_PEERINGS = ResourceSpec(
    "kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False
)
LEASES = ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease")

DEFAULT_RESOURCES: tuple[ResourceSpec, ...] = (
    COMPOSITION_JOBS,
    JOBS,
    PODS,
    EVENTS,
    EVENTS_V1,
    NAMESPACES,
    NODES,
    CONFIG_MAPS,
    CRDS,
    KOPF_PEERINGS,
    CLUSTER_KOPF_PEERINGS,
    LEASES,
)


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One API request as RBAC sees it, plus who made it and how it ended."""

    method: str
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    group: str | None  # None for non-resource URLs such as /api, /apis, /version
    version: str | None
    resource: str | None
    subresource: str | None
    namespace: str | None
    name: str | None
    path: str
    user_agent: str
    status: int  # 0 while a watch is still streaming
    # when the request arrived: time.monotonic() in the emulator, the audit log's
    # requestReceivedTimestamp (seconds since the epoch) on the real control plane
    at: float
    # the request's body, where the audit policy keeps it (the real control plane keeps those of
    # status patches of CompositionJobs); None elsewhere
    body: Any = None

    @property
    def is_resource_request(self) -> bool:
        return self.resource is not None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestRecord:
        return cls(**data)
