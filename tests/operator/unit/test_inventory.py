"""The in-memory inventory: finished jobs are kept light, and what holds a slot is what the
Job controller shows (a Job that is neither Complete nor Failed)."""

from __future__ import annotations

from typing import Any

from compose_gateway import naming
from compose_operator import inventory, names


def _cj(name: str, *, phase: str | None = None, owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "studio", "uid": f"uid-{name}"}
    if owner is not None:
        meta["labels"] = {names.OWNER_LABEL: owner}
    body: dict[str, Any] = {"metadata": meta, "spec": {"params": {"prompt": "x" * 10_000}}}
    if phase is not None:
        body["status"] = {"phase": phase}
    return body


def _job(owner: str, *, complete: bool = False) -> dict[str, Any]:
    conditions = [{"type": "Complete", "status": "True"}] if complete else []
    labels = {names.UID_LABEL: f"uid-{owner}"}
    return {
        "metadata": {"name": f"{owner}-0", "namespace": "studio", "labels": labels},
        "spec": {"suspend": False, "template": {"spec": {"containers": [{"env": "x" * 10_000}]}}},
        "status": {"conditions": conditions},
    }


def _pod(owner: str) -> dict[str, Any]:
    labels = {names.UID_LABEL: f"uid-{owner}", "job-name": f"{owner}-0"}
    return {"metadata": {"name": f"{owner}-pod", "labels": labels}, "spec": {}, "status": {}}


def test_a_finished_job_keeps_no_body_status_or_pods_only_its_live_job() -> None:
    store = inventory.Inventory()
    store.put(_cj("done"))
    store.put_child("job", _job("done"), deleted=False)
    store.put_child("pod", _pod("done"), deleted=False)
    assert store.job("uid-done", "done-0") is not None
    assert "template" not in store.job("uid-done", "done-0").body["spec"]  # type: ignore[union-attr]
    store.finish("uid-done")
    assert store.body("uid-done") is None
    assert store.pods_of("uid-done", "done-0") == []
    # Its Job is not Complete yet: it still holds the slot.
    assert [e.uid for e in store.queue_entries("studio") if e.running] == ["uid-done"]
    store.put_child("pod", _pod("done"), deleted=False)  # late pod events are not kept
    assert store.pods_of("uid-done", "done-0") == []
    store.put_child("job", _job("done", complete=True), deleted=False)
    assert store.jobs_of("uid-done") == []
    assert store.queue_entries("studio") == []  # not even looked at any more


def test_a_job_seen_finished_after_a_restart_is_not_kept() -> None:
    store = inventory.Inventory()
    store.put(_cj("old", phase="Succeeded"))
    assert store.is_finished("uid-old")
    assert store.body("uid-old") is None
    assert store.is_status_echo(_cj("old", phase="Succeeded"))  # nothing to reconcile
    store.put_child("job", _job("old", complete=True), deleted=False)
    assert store.jobs_of("uid-old") == []


def test_an_admission_holds_its_slot_until_released() -> None:
    store = inventory.Inventory()
    store.put(_cj("next", owner="alice"))
    (entry,) = store.queue_entries("studio")
    assert (entry.waiting, entry.running, entry.owner) == (True, False, "alice")
    store.admit("uid-next")
    assert [(e.waiting, e.running) for e in store.queue_entries("studio")] == [(False, True)]
    store.release("uid-next")  # its intent write failed: no Job was created
    assert [(e.waiting, e.running) for e in store.queue_entries("studio")] == [(True, False)]


def test_the_owner_label_is_the_gateways() -> None:
    assert names.OWNER_LABEL == naming.OWNER_LABEL


def _pool_cj(name: str, *, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body = _cj(name)
    body["spec"]["execution"] = {"pool": "warm"}
    if status is not None:
        body["status"] = status
    return body


def _condition(kind: str, state: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": state,
        "reason": "R",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def test_a_pool_job_holds_its_slot_from_admission_and_gives_it_back_when_suspended() -> None:
    from compose_api import models

    store = inventory.Inventory()
    store.put(_pool_cj("new"))
    store.put(_pool_cj("waiting", status={"conditions": [_condition("Queued", "False")]}))
    assigned = {
        "pool": "warm",
        "worker": "w0",
        "workerInstance": "w0/i",
        "attempt": 0,
        "assignedAt": "2026-01-01T00:00:00Z",
        "seed": 1,
        "outputBucket": "b",
        "outputKeyPrefix": "p/",
    }
    store.put(
        _pool_cj(
            "busy", status={"conditions": [_condition("Queued", "False")], "assignment": assigned}
        )
    )
    entries = {e.uid: (e.running, e.waiting) for e in store.queue_entries("studio")}
    # As read after a restart: the admitted and the assigned hold a slot, the new one wants one.
    assert entries == {
        "uid-new": (False, True),
        "uid-waiting": (True, False),
        "uid-busy": (True, False),
    }
    assert store.pool_job_uids("studio", "warm") == {"uid-new", "uid-waiting", "uid-busy"}
    assert store.assigned_to("studio", "w0/i") == "uid-busy"
    # Suspended (as the operator writes it): the slot is given back.
    suspended = models.CompositionJobStatus.model_validate(
        {"conditions": [_condition("Queued", "False"), _condition("Suspended", "True")]}
    )
    store.record_write("uid-waiting", suspended, "12")
    entries = {e.uid: e.running for e in store.queue_entries("studio")}
    assert entries.get("uid-waiting") is not True
    assert store.resource_version("uid-waiting") == "12"
    # Finished: not a pool job any more, and its worker is free.
    store.finish("uid-busy")
    assert store.assigned_to("studio", "w0/i") is None
    assert "uid-busy" not in store.pool_job_uids("studio", "warm")


def test_a_workers_report_is_news_not_the_echo_of_our_write() -> None:
    from compose_api import models

    store = inventory.Inventory()
    body = _pool_cj("job", status={"conditions": [_condition("Queued", "False")]})
    store.put(body)
    written = models.CompositionJobStatus.model_validate(body["status"])
    store.record_write("uid-job", written)
    echo = {**body, "status": {**body["status"], "phase": "Starting"}}
    assert store.is_status_echo(echo)
    report = {
        "attempt": 0,
        "worker": "w0",
        "workerInstance": "w0/i",
        "acceptedAt": "2026-01-01T00:00:01Z",
    }
    news = {**body, "status": {**body["status"], "workerReport": report}}
    assert not store.is_status_echo(news)
    store.put(news)
    found = store.worker_report("uid-job")
    assert found is not None and found.worker_instance == "w0/i"
