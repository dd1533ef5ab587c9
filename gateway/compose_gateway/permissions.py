"""The exact Kubernetes API access the gateway needs, in one machine-readable place.

The gateway only ever touches CompositionJobs in its own namespace (``kubeapi.py`` makes every call
to the API). The Helm chart's gateway Role is rendered from the same list, and the
deployment tests compare the two, so the chart grants every call the gateway makes and nothing
more. The gateway's own tests check that every request it made on the real API server (its audit
log) is covered by :data:`REQUIRED_PERMISSIONS`, and every verb granted there used.

Why each verb:

- ``create``: ``POST /generate`` creates a CompositionJob.
- ``get``: ``GET /jobs/{id}``, the wait mode, and idempotent replays read one job.
- ``list``: ``GET /jobs`` (label selector on the owner label) and the background loop that
  learns when jobs with a pending callback end (it polls a list with a label selector rather
  than holding a watch: one small request every few seconds, nothing to resume after a restart).
- ``patch``: the callback loop records delivery in an annotation (at-least-once, not duplicated
  across restarts or replicas).
- ``delete``: ``DELETE /jobs/{id}`` cancels a job.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from compose_api import models


@dataclasses.dataclass(frozen=True)
class Permission:
    """One RBAC rule: verbs on a resource of an API group (``""`` is the core group)."""

    api_group: str
    resource: str
    verbs: tuple[str, ...]
    cluster_scoped: bool = False

    def as_rule(self) -> dict[str, Any]:
        """The rule as a Role's ``rules[]`` entry carries it."""
        return {
            "apiGroups": [self.api_group],
            "resources": [self.resource],
            "verbs": list(self.verbs),
        }


# Namespaced only: the gateway runs in one namespace and needs no ClusterRole.
REQUIRED_PERMISSIONS: tuple[Permission, ...] = (
    Permission(
        api_group=models.GROUP,
        resource=models.PLURAL,
        verbs=("create", "get", "list", "watch", "patch", "delete"),
    ),
)


def rbac_rules() -> list[dict[str, Any]]:
    """The rules of the gateway's Role, in the order of :data:`REQUIRED_PERMISSIONS`."""
    return [permission.as_rule() for permission in REQUIRED_PERMISSIONS]


def allows(*, verb: str, api_group: str, resource: str, subresource: str | None = None) -> bool:
    """Whether one API request (as an audit or request log names it) is covered by the rules."""
    name = f"{resource}/{subresource}" if subresource else resource
    return any(
        p.api_group == api_group and p.resource == name and verb in p.verbs
        for p in REQUIRED_PERMISSIONS
    )
