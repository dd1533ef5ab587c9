"""The views read once from watched bodies: a child kept slim, what counts as a change of it,
and what a Job view says (finished, held, replacing), read from JSON as a watch delivers it."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from compose_operator import names, observed

COUNTERS = {"active": 1, "ready": 1, "terminating": 0, "succeeded": 0, "failed": 2,
            "uncountedTerminatedPods": {}}  # fmt: skip


def _decoded(body: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(json.dumps(body))
    return decoded


def _job(**status: Any) -> dict[str, Any]:
    return _decoded({
        "metadata": {"name": "j-0", "namespace": "studio", "labels": {names.UID_LABEL: "uid-j"}},
        "spec": {"suspend": False, "template": {"spec": {"containers": []}}},
        "status": status,
    })  # fmt: skip


def test_a_slim_child_drops_managed_fields_its_template_and_its_pod_counters() -> None:
    managed = [{"manager": "kube-controller-manager"}]
    conditions = [{"type": "Complete", "status": "True"}]
    full = _decoded({
        "metadata": {"name": "j-0", "managedFields": managed},
        "spec": {"suspend": True, "template": {}, "backoffLimit": 2},
        "status": {**COUNTERS, "conditions": conditions},
    })  # fmt: skip
    kept = observed.slim(full)
    assert kept == {
        "metadata": {"name": "j-0"},
        "spec": {"suspend": True},
        "status": {"conditions": conditions},
    }
    assert "managedFields" in full["metadata"]  # the event's own body is left as it was
    # Nothing but what is dropped: nothing is left.
    bare = observed.slim(_decoded({"metadata": {"managedFields": managed}, "status": COUNTERS}))
    assert bare == {"metadata": {}, "status": {}}
    assert observed.slim({"spec": {"suspend": True, "parallelism": 1}}) == {
        "spec": {"suspend": True}
    }


def test_a_change_of_a_childs_spec_or_status_is_one_and_its_bookkeeping_is_not() -> None:
    before = observed.slim(_job(conditions=[]))
    assert observed.same(before, observed.slim(_job(conditions=[])))
    suspended = _job(conditions=[])
    suspended["spec"]["suspend"] = True
    assert not observed.same(before, observed.slim(suspended))
    complete = _job(conditions=[{"type": "Complete", "status": "True"}])
    assert not observed.same(before, observed.slim(complete))
    deleting = _job(conditions=[])
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:09Z"  # a key added
    assert not observed.same(before, observed.slim(deleting))
    relabelled = _job(conditions=[])
    relabelled["metadata"]["labels"]["team"] = "a"  # a key both have, changed
    assert not observed.same(before, observed.slim(relabelled))
    bookkeeping = _job(conditions=[])
    bookkeeping["metadata"].update(resourceVersion="9", generation=2, finalizers=["x"])
    assert observed.same(before, observed.slim(bookkeeping))


def test_a_job_is_finished_only_by_a_true_complete_or_failed_condition() -> None:
    def finished(*conditions: tuple[str, str]) -> bool:
        listed = [{"type": kind, "status": value} for kind, value in conditions]
        return observed.view_job(_job(conditions=listed)).finished

    assert finished(("Complete", "True"))
    assert finished(("Suspended", "False"), ("Failed", "True"))
    for value in ("False", "Unknown"):
        assert not finished(("Complete", value))
        assert not finished(("Failed", value))
    assert not finished(("Suspended", "True"))
    assert not finished()


def test_a_job_view_reads_its_marks_attempt_and_seed_from_the_job() -> None:
    def view(suspend: bool, **annotations: str) -> observed.JobView:
        job = _job(conditions=[])
        job["spec"]["suspend"] = suspend
        job["metadata"]["annotations"] = annotations
        job["metadata"]["labels"][names.ATTEMPT_LABEL] = "2"
        return observed.view_job(_decoded(job))

    held, replacing = names.SUSPENDED_ANNOTATION, names.REPLACES_ANNOTATION
    assert view(True, **{held: "true"}).held_by_operator
    assert not view(True).held_by_operator  # Kueue's: suspended, no mark of the operator's
    assert not view(False, **{held: "true"}).held_by_operator  # let go by someone else
    assert view(True, **{replacing: "j-0"}).replaces == "j-0"
    assert view(False, **{replacing: "j-0"}).replaces is None
    assert view(False).attempt == 2
    assert (view(False).name, view(False).namespace, view(False).owner) == (
        "j-0",
        "studio",
        "uid-j",
    )
    assert view(False, **{"compose.nextunicorn.dev/seed": "42"}).seed == 42
    assert view(False, **{"compose.nextunicorn.dev/seed": "forty-two"}).seed is None
    assert observed.view_job(_job(conditions=[])).attempt == 0  # no label: the first
    for label in ("x", None):
        job = _job(conditions=[])
        job["metadata"]["labels"][names.ATTEMPT_LABEL] = label
        assert observed.view_job(job).attempt == 0


def test_the_queue_reads_its_fields_once_and_an_invalid_one_as_its_default() -> None:
    body = _decoded({
        "metadata": {"name": "a", "namespace": "studio", "labels": {names.OWNER_LABEL: "key-1"},
                     "creationTimestamp": "2026-01-01T00:00:05Z"},
        "spec": {"profile": "smoke", "suspend": True,
                 "execution": {"priority": 5, "queueName": "gpu", "pool": "warm"}},
    })  # fmt: skip
    fields = observed.queue_fields(body)
    assert (fields.namespace, fields.name, fields.owner) == ("studio", "a", "key-1")
    assert (fields.priority, fields.kueue, fields.suspend) == (5, True, True)
    assert (fields.pool, fields.profile) == ("warm", "smoke")
    assert fields.created is not None and fields.created.second == 5
    bare = observed.queue_fields({"metadata": {}, "spec": {}})
    assert (bare.name, bare.owner, bare.priority, bare.created, bare.pool) == (
        "",
        "",
        0,
        None,
        None,
    )
    assert bare.profile == "instantid-sdxl"  # the CRD's default
    assert not (bare.kueue or bare.suspend)
    for priority in ("high", [1]):  # a ValueError and a TypeError: the spec is rejected later
        odd = observed.queue_fields({"spec": {"execution": {"priority": priority}}})
        assert odd.priority == 0
    late = observed.queue_fields({"metadata": {"creationTimestamp": "yesterday"}})
    assert late.created is None


def test_the_views_are_frozen() -> None:
    job = observed.view_job(_job(conditions=[]))
    spec = observed.read_spec({"spec": {}})
    fields = observed.queue_fields({})
    seen = observed.Observed(meta=None, previous=None, spec=None, spec_error=None)  # type: ignore[arg-type]
    for view in (job, spec, fields, seen):
        with pytest.raises(dataclasses.FrozenInstanceError):
            view.name = "changed"  # type: ignore[union-attr]
