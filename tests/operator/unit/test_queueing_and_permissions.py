"""Admission order under the per-namespace cap, and the permission list's shape."""

from __future__ import annotations

import datetime

from compose_api import models
from compose_operator import permissions, queueing

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def entry(
    name: str, *, priority: int = 0, second: int = 0, running: bool = False
) -> queueing.Entry:
    return queueing.Entry(
        uid=f"uid-{name}",
        name=name,
        priority=priority,
        created=T0 + datetime.timedelta(seconds=second),
        running=running,
        waiting=not running,
    )


def test_free_slots_go_by_priority_then_creation_then_name() -> None:
    entries = [
        entry("busy", running=True),
        entry("old", second=1),
        entry("b-same-second", second=2),
        entry("a-same-second", second=2),
        entry("urgent", priority=5, second=9),
    ]
    decision = queueing.decide(entries, cap=3)
    assert decision.admitted == {"uid-urgent", "uid-old"}
    assert decision.positions == {"uid-a-same-second": 1, "uid-b-same-second": 2}
    assert decision.depth == 2


def test_a_full_namespace_admits_nothing() -> None:
    decision = queueing.decide([entry("x", running=True), entry("y", second=1)], cap=1)
    assert decision.admitted == frozenset()
    assert decision.positions == {"uid-y": 1}


def test_no_cap_admits_everything() -> None:
    decision = queueing.decide([entry("x", running=True), entry("y"), entry("z")], cap=0)
    assert decision.admitted == {"uid-y", "uid-z"}
    assert decision.positions == {}


def test_permissions_cover_kopf_and_the_operator() -> None:
    def allowed(
        group: str, resource: str, verb: str, clusterwide: bool, sub: str | None = None
    ) -> bool:
        return permissions.allows(group, resource, verb, clusterwide=clusterwide, subresource=sub)

    assert allowed(models.GROUP, "compositionjobs", "watch", True)
    assert allowed(models.GROUP, "compositionjobs", "patch", True, "status")
    assert not allowed(models.GROUP, "compositionjobs", "patch", True)  # never the spec
    assert not allowed(models.GROUP, "compositionjobs", "update", True)
    assert allowed("batch", "jobs", "create", False)
    assert allowed("", "namespaces", "watch", True)
    assert allowed("", "namespaces", "watch", False)
    assert allowed("kopf.dev", "kopfpeerings", "patch", False)
    assert not allowed("kopf.dev", "kopfpeerings", "patch", True)
    assert allowed("kopf.dev", "clusterkopfpeerings", "patch", True)
    assert not allowed("", "secrets", "get", True)
    keys = [(p.api_group, p.resource) for p in permissions.REQUIRED_PERMISSIONS]
    assert len(keys) == len(set(keys))
    for item in permissions.REQUIRED_PERMISSIONS:
        assert item.verbs and item.why
