"""Admission order under the per-namespace cap, and the permission list's shape."""

from __future__ import annotations

import datetime

from compose_api import models
from compose_operator import inventory, names, permissions, queueing

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
    decision = queueing.decide(entries, queueing.Limits(per_namespace=3))
    assert decision.admitted == {"uid-urgent", "uid-old"}
    assert decision.positions == {"uid-a-same-second": 1, "uid-b-same-second": 2}
    assert decision.depth == 2


def test_a_full_namespace_admits_nothing() -> None:
    decision = queueing.decide(
        [entry("x", running=True), entry("y", second=1)], queueing.Limits(per_namespace=1)
    )
    assert decision.admitted == frozenset()
    assert decision.positions == {"uid-y": 1}


def test_no_cap_admits_everything() -> None:
    decision = queueing.decide(
        [entry("x", running=True), entry("y"), entry("z")], queueing.Limits(per_namespace=0)
    )
    assert decision.admitted == {"uid-y", "uid-z"}
    assert decision.positions == {}
    assert decision.depth == 0


def _cj(name: str, *, suspend: bool = False) -> dict[str, object]:
    meta = {"name": name, "namespace": "studio", "uid": f"uid-{name}"}
    return {"metadata": meta, "spec": {"suspend": suspend}}


def _child(owner: str, *, suspend: bool, ours: bool) -> dict[str, object]:
    annotations = {names.SUSPENDED_ANNOTATION: "true"} if ours else {}
    labels = {names.UID_LABEL: f"uid-{owner}"}
    meta = {"name": f"{owner}-0", "labels": labels, "annotations": annotations}
    return {"metadata": meta, "spec": {"suspend": suspend}}


def test_a_resumed_job_held_by_the_operator_waits_for_a_slot_again() -> None:
    store = inventory.Inventory()
    for body, child in (
        (_cj("running"), _child("running", suspend=False, ours=False)),
        (_cj("paused", suspend=True), _child("paused", suspend=True, ours=True)),
        (_cj("resumed"), _child("resumed", suspend=True, ours=True)),
        (_cj("other"), _child("other", suspend=True, ours=False)),
    ):
        store.put(body)
        store.put_child("job", child, deleted=False)
    entries = {e.name: (e.running, e.waiting) for e in store.queue_entries("studio")}
    assert entries == {
        "running": (True, False),
        "resumed": (False, True),  # resumed, its Job still suspended by the operator
        "other": (True, False),  # a Job suspended by someone else still holds its slot
    }  # "paused", suspended by the user, neither holds nor wants a slot: the queue skips it


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
    assert not allowed("", "namespaces", "watch", True)  # cluster-wide: not listed by kopf
    assert allowed("", "namespaces", "watch", False)
    assert allowed("kopf.dev", "kopfpeerings", "patch", False)
    assert not allowed("kopf.dev", "kopfpeerings", "patch", True)
    assert allowed("kopf.dev", "clusterkopfpeerings", "patch", True)
    assert not allowed("", "secrets", "get", True)
    keys = [(p.api_group, p.resource) for p in permissions.REQUIRED_PERMISSIONS]
    assert len(keys) == len(set(keys))
    for item in permissions.REQUIRED_PERMISSIONS:
        assert item.verbs and item.why


def test_a_job_unsuspended_by_the_operator_keeps_its_slot_through_a_stale_event() -> None:
    store = inventory.Inventory()
    store.put(_cj("resumed"))
    store.put_child("job", _child("resumed", suspend=False, ours=False), deleted=False)
    store.unsuspended.add("uid-resumed")  # what the reconciler does when it unsuspends
    # An event from before the unsuspend arrives late: the job still holds its slot.
    store.put_child("job", _child("resumed", suspend=True, ours=True), deleted=False)
    assert [(e.running, e.waiting) for e in store.queue_entries("studio")] == [(True, False)]
    # The watch catches up: nothing is remembered any more.
    store.put_child("job", _child("resumed", suspend=False, ours=False), deleted=False)
    assert store.unsuspended == set()
