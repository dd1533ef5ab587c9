"""The in-memory inventory: finished jobs are kept light, and what holds a slot is what the
Job controller shows (a Job that is neither Complete nor Failed)."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

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
    late = store.record_child("pod", _pod("done"), deleted=False)  # late pod events: not kept,
    assert late == ("uid-done", False)  # and not news
    assert store.pods_of("uid-done", "done-0") == []
    store.put_child("job", _job("done", complete=True), deleted=False)
    assert store.jobs_of("uid-done") == []
    assert store.queue_entries("studio") == []  # not even looked at any more


def test_a_job_that_finishes_after_its_job_keeps_nothing_of_it() -> None:
    store = inventory.Inventory()
    store.put(_cj("done"))
    store.put_child("job", _job("done", complete=True), deleted=False)  # the Job ended first
    assert len(store.jobs_of("uid-done")) == 1
    assert store.queue_entries("studio") == []  # its end is being written: it neither holds
    assert not store.holds_slot("uid-done")  # a slot nor waits for one
    store.finish("uid-done")
    assert store.jobs_of("uid-done") == []
    assert store.queue_entries("studio") == []


def test_an_event_older_than_our_write_keeps_the_newer_resource_version() -> None:
    from compose_api import models

    store = inventory.Inventory()
    body = _cj("job")
    body["metadata"]["resourceVersion"] = "300"
    store.put(body)
    store.record_write("uid-job", models.CompositionJobStatus(), "312")
    late = copy.deepcopy(body)
    late["metadata"]["resourceVersion"] = "311"  # written before ours, delivered after it
    store.put(late)
    assert store.resource_version("uid-job") == "312"
    later = copy.deepcopy(body)
    later["metadata"]["resourceVersion"] = "313"
    store.put(later)
    assert store.resource_version("uid-job") == "313"
    # Versions that are not etcd's integers cannot be compared: the one seen last.
    for seen in ("v-312", "314", "7e2"):
        opaque = copy.deepcopy(body)
        opaque["metadata"]["resourceVersion"] = seen
        store.put(opaque)
        assert store.resource_version("uid-job") == seen


def test_a_finished_jobs_job_still_running_keeps_its_slot_through_its_events() -> None:
    store = inventory.Inventory()
    store.put(_cj("done"))
    store.put_child("job", _job("done"), deleted=False)
    store.finish("uid-done")
    store.put_child("job", _job("done"), deleted=False)  # a later event: still running
    assert [e.uid for e in store.queue_entries("studio") if e.running] == ["uid-done"]
    store.put_child("job", _job("done", complete=True), deleted=False)
    assert store.queue_entries("studio") == []


def test_a_pod_event_is_news_only_when_it_changes_what_a_decision_reads() -> None:
    store = inventory.Inventory()
    store.put(_cj("job"))
    assert store.record_child("pod", _pod("job"), deleted=False) == ("uid-job", True)
    assert store.record_child("pod", _pod("job"), deleted=False) == ("uid-job", False)
    running = _pod("job")
    running["status"] = {"phase": "Running"}
    assert store.record_child("pod", running, deleted=False) == ("uid-job", True)
    assert store.record_child("pod", running, deleted=True) == ("uid-job", True)
    assert store.record_child("pod", running, deleted=True) == ("uid-job", False)


def test_a_job_the_user_suspends_frees_its_slot_before_its_job_is_suspended() -> None:
    store = inventory.Inventory()
    held = _cj("held")
    held["spec"]["suspend"] = True
    store.put(held)
    store.put_child("job", _job("held"), deleted=False)  # not suspended yet, still running
    assert store.queue_entries("studio") == []


def test_an_assignment_seen_on_the_watch_holds_a_slot() -> None:
    """A status written by another operator process (a peer before a handover): the job's
    worker holds the slot though this process never admitted it."""
    store = inventory.Inventory()
    store.put(_pool_cj("job"))
    assert [(e.running, e.waiting) for e in store.queue_entries("studio")] == [(False, True)]
    assigned = _pool_cj("job", status={"assignment": _assigned("w0/i").to_api()["assignment"]})
    store.put(assigned)
    assert store.assigned_to("studio", "w0/i") == "uid-job"
    assert [(e.running, e.waiting) for e in store.queue_entries("studio")] == [(True, False)]


def test_a_forgotten_pool_job_leaves_its_pool() -> None:
    store = inventory.Inventory()
    store.put(_pool_cj("gone"))
    store.put(_pool_cj("kept"))
    store.forget("uid-gone")
    assert store.pool_job_uids("studio", "warm") == {"uid-kept"}


def test_a_slot_is_held_by_a_running_job_only_and_never_for_kueue() -> None:
    store = inventory.Inventory()
    store.put(_cj("running"))
    store.put_child("job", _job("running"), deleted=False)
    store.put(_cj("waiting"))
    kueue = _cj("kueue")
    kueue["spec"]["execution"] = {"queueName": "team-a"}
    store.put(kueue)
    store.put_child("job", _job("kueue"), deleted=False)  # Kueue's to count, not the operator's
    held = {uid: store.holds_slot(uid) for uid in ("uid-running", "uid-waiting", "uid-kueue")}
    assert held == {"uid-running": True, "uid-waiting": False, "uid-kueue": False}
    assert not store.holds_slot("uid-unknown")
    assert (store.is_finished("uid-running"), store.is_finished("uid-unknown")) == (False, False)
    store.finish("uid-running")
    assert store.is_finished("uid-running")


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


def test_an_admission_read_from_a_decoded_status_holds_a_slot_unless_suspended() -> None:
    """After a restart the slots come from the statuses as decoded from the API server's JSON
    (strings equal to the operator's, not the same objects)."""
    store = inventory.Inventory()
    admitted = _cj("admitted")
    admitted["status"] = {"conditions": [_condition("Queued", "False")]}
    suspended = _cj("suspended")
    suspended["status"] = {
        "conditions": [_condition("Queued", "False"), _condition("Suspended", "True")]
    }
    for body in (admitted, suspended, _cj("new")):
        store.put(json.loads(json.dumps(body)))
    entries = {e.uid: (e.running, e.waiting) for e in store.queue_entries("studio")}
    assert entries == {
        "uid-admitted": (True, False),
        "uid-suspended": (False, True),  # held by the operator: it waits for a slot again
        "uid-new": (False, True),
    }


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
    # Our next write's echo carries the same report, decoded afresh: an echo all the same.
    store.record_write("uid-job", written)
    again = json.loads(json.dumps({**news, "status": {**news["status"], "phase": "Running"}}))
    assert store.is_status_echo(again)


def test_only_a_change_of_status_resource_version_or_managed_fields_is_our_echo() -> None:
    from compose_api import models

    store = inventory.Inventory()
    body = _cj("job")
    body.update(apiVersion="compose.nextunicorn.dev/v1alpha1", kind="CompositionJob")
    body["metadata"].update(
        resourceVersion="5", labels={"team": "a"}, managedFields=[{"manager": "gateway"}]
    )
    store.put(body)
    assert not store.is_status_echo(copy.deepcopy(body))  # this process wrote nothing yet
    store.record_write("uid-job", models.CompositionJobStatus(phase=models.Phase.STARTING))
    echo = json.loads(json.dumps(body))  # decoded afresh, as a watch event is: equal, not same
    echo["status"] = {"phase": "Starting"}
    echo["metadata"]["resourceVersion"] = "6"
    echo["metadata"]["managedFields"].append({"manager": "compose-operator"})
    assert store.is_status_echo(echo)

    def changed(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        news = copy.deepcopy(echo)
        edit(news)
        return news

    news = [
        changed(lambda b: b["metadata"]["labels"].update(team="b")),  # a key in both, changed
        changed(lambda b: b["metadata"].update(deletionTimestamp="2026-01-01T00:00:09Z")),  # added
        changed(lambda b: b["metadata"].pop("labels")),  # removed
        changed(lambda b: b.update(apiVersion="compose.nextunicorn.dev/v1beta1")),
        changed(lambda b: b.update(extra={"added": True})),  # a new top-level field
        changed(lambda b: b.pop("kind")),
        changed(lambda b: b["spec"].update(suspend=True)),
    ]
    assert [store.is_status_echo(each) for each in news] == [False] * len(news)


def _assigned(instance: str) -> Any:
    from compose_api import models

    assignment = {
        "pool": "warm",
        "worker": instance.split("/")[0],
        "workerInstance": instance,
        "attempt": 0,
        "assignedAt": "2026-01-01T00:00:00Z",
        "seed": 1,
        "outputBucket": "b",
        "outputKeyPrefix": "p/",
    }
    return models.CompositionJobStatus.model_validate({"assignment": assignment})


def test_busy_workers_are_told_apart_by_namespace() -> None:
    store = inventory.Inventory()
    for namespace in ("studio", "lab"):
        body = _pool_cj(f"job-{namespace}")
        body["metadata"]["namespace"] = namespace
        store.put(body)
        store.record_write(f"uid-job-{namespace}", _assigned(f"w0/{namespace}"))
    studio, lab = json.loads('["studio", "lab"]')  # equal names, not the same objects
    assert store.busy_instances(studio) == {"w0/studio"}
    assert store.busy_instances(lab) == {"w0/lab"}
    assert store.busy_instances("elsewhere") == set()


def test_a_job_that_lets_go_of_a_worker_another_job_now_has_does_not_free_it() -> None:
    from compose_api import models

    for stale, current in (("a", "b"), ("d", "c")):  # the stale uid sorting before and after
        store = inventory.Inventory()
        store.put(_pool_cj(stale))
        store.put(_pool_cj(current))
        store.record_write(f"uid-{stale}", _assigned("w0/i"))
        store.record_write(f"uid-{current}", _assigned("w0/i"))  # the worker took the next
        store.record_write(f"uid-{stale}", models.CompositionJobStatus())  # no assignment
        assert store.assigned_to("studio", "w0/i") == f"uid-{current}"
        store.record_write(f"uid-{current}", models.CompositionJobStatus())
        assert store.assigned_to("studio", "w0/i") is None


def _worker(namespace: str, pool: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A worker's Lease (renewed at the start of 2026, pod ``w0``, instance ``i``) and pod."""
    from compose_api import pools as protocol

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    lease = protocol.lease_body(
        pool=pool, namespace=namespace, pod="w0", pod_uid=f"u-{namespace}", instance="i",
        lease_seconds=15, now=now, state=protocol.STATE_READY,
    )  # fmt: skip
    labels = {protocol.POOL_LABEL: pool}
    pod = {"metadata": {"name": "w0", "namespace": namespace, "labels": labels}, "status": {}}
    return lease, pod


def test_a_pools_workers_are_those_of_its_name_in_its_namespace() -> None:
    store = inventory.Inventory()
    places = [("studio", "warm"), ("lab", "warm"), ("zoo", "warm"), ("studio", "cold"),
              ("studio", "zest")]  # fmt: skip
    for namespace, pool in places:  # namespaces and pools sorting before and after the one read
        lease, pod = _worker(namespace, pool)
        lease["metadata"]["name"] = pod["metadata"]["name"] = f"w0-{namespace}-{pool}"
        store.put_lease(lease, deleted=False)
        store.put_worker_pod(pod, deleted=False)
    # Equal to the stored names, not the same objects (as names decoded from two events are).
    namespace, pool = json.loads('["studio", "warm"]')
    assert [(lease.pool, lease.pod) for lease in store.pool_leases(namespace, pool)] == [
        ("warm", "w0")
    ]
    assert [pod.name for pod in store.pool_pods(namespace, pool)] == ["w0-studio-warm"]


def test_a_released_reservation_frees_that_namespaces_worker_only() -> None:
    from compose_operator import pooljobs

    store = inventory.Inventory()
    now = datetime.datetime(2026, 1, 1, 0, 0, 1, tzinfo=datetime.UTC)
    offer = pooljobs.Offer(pool="warm", pod="w0", instance="w0/i")
    for namespace, uid in (("studio", "uid-a"), ("lab", "uid-b"), ("zoo", "uid-c")):
        store.put_lease(_worker(namespace, "warm")[0], deleted=False)
        assert [w.pod for w in store.idle_workers(namespace, "warm", now)] == ["w0"]
        store.reserve(uid, namespace, offer)  # the same worker name in three namespaces
    store.release_offer(json.loads('"uid-b"'))  # uids sorting before and after it keep theirs
    idle = {
        ns: [w.pod for w in store.idle_workers(ns, "warm", now)] for ns in ("studio", "lab", "zoo")
    }
    assert idle == {"studio": [], "lab": ["w0"], "zoo": []}
    assert store.reserved("uid-b") is None and store.reserved("uid-a") == offer


def test_a_job_missing_from_the_standing_queue_or_left_in_it_is_drift() -> None:
    store = inventory.Inventory()
    store.put(_cj("a"))
    store.put(_cj("b"))
    standing = store.standing("studio")
    standing.put("uid-a", None)  # lost from the standing queue
    assert store.standing_drift("studio") == ["uid-a"]
    assert sorted(e.uid for e in store.standing("studio").entries()) == ["uid-a", "uid-b"]
    ghost = store.queue_entries("studio")[0]
    standing.put("uid-ghost", dataclasses.replace(ghost, uid="uid-ghost"))  # never a job here
    assert store.standing_drift("studio") == ["uid-ghost"]
    assert sorted(e.uid for e in store.standing("studio").entries()) == ["uid-a", "uid-b"]


def test_a_pools_deployment_is_kept_until_deleted_and_others_are_not() -> None:
    from compose_api import pools as protocol

    store = inventory.Inventory()
    labels = {protocol.POOL_LABEL: "warm"}
    deployment = {"metadata": {"name": "warm-workers", "namespace": "studio", "labels": labels}}
    view = store.put_deployment(deployment, deleted=False)
    assert view is not None and store.deployments == {("studio", "warm"): view}
    other = {"metadata": {"name": "web", "namespace": "studio"}}
    assert store.put_deployment(other, deleted=False) is None
    assert list(store.deployments) == [("studio", "warm")]
    store.put_deployment(deployment, deleted=True)
    assert store.deployments == {}


def _random_cj(rng: random.Random, index: int) -> dict[str, Any]:
    body = _cj(f"job-{index}", owner=rng.choice([None, "alice", "bob"]))
    body["metadata"]["creationTimestamp"] = f"2026-01-01T00:00:0{rng.randrange(4)}Z"
    execution: dict[str, Any] = {"priority": rng.choice([0, 0, 3])}
    if rng.random() < 0.15:
        execution["pool"] = "warm"
    if rng.random() < 0.1:
        execution["queueName"] = "kueue-queue"
    body["spec"]["execution"] = execution
    body["spec"]["suspend"] = rng.random() < 0.2
    if rng.random() < 0.2:
        body["status"] = {"conditions": [_condition("Queued", "False")]}
    return body


def _random_job(rng: random.Random, index: int) -> dict[str, Any]:
    job = _job(f"job-{index}", complete=rng.random() < 0.3)
    if rng.random() < 0.3:
        job["spec"]["suspend"] = True
        job["metadata"]["annotations"] = {names.SUSPENDED_ANNOTATION: "true"}
    return job


@pytest.mark.parametrize("seed", range(8))
def test_the_standing_queue_sees_every_change_a_full_recompute_sees(seed: int) -> None:
    """Every change that a job's queue entry reads reaches the namespace's standing queue: after
    each step of a random sequence it holds exactly the entries recomputed from scratch."""
    from compose_api import models

    rng = random.Random(seed)
    store = inventory.Inventory(default_pools={"fast": "warm"})
    phases = ["Queued", "Starting", "Running", "Succeeded", "Failed"]
    kinds: set[tuple[bool, bool]] = set()
    for _ in range(150):
        index = rng.randrange(8)
        uid = f"uid-job-{index}"
        step = rng.randrange(9)
        if step <= 1:
            store.put(_random_cj(rng, index))
        elif step == 2:
            store.put_child("job", _random_job(rng, index), deleted=rng.random() < 0.2)
        elif step == 3:
            store.admit(uid)
        elif step == 4:
            store.release(uid)
        elif step == 5:
            phase = rng.choice(phases)
            written = models.CompositionJobStatus.model_validate(
                {
                    "phase": phase,
                    "conditions": [_condition("Queued", rng.choice(["True", "False"]))],
                }
            )
            store.record_write(uid, written, str(rng.randrange(100)))
        elif step == 6:
            store.set_unsuspended(uid, rng.random() < 0.5)
        elif step == 7:
            store.forget(uid) if rng.random() < 0.3 else store.finish(uid)
        else:
            store.put_child("pod", _pod(f"job-{index}"), deleted=rng.random() < 0.3)
        assert store.standing_drift("studio") == []
        kinds.update((e.running, e.waiting) for e in store.standing("studio").entries())
    assert kinds >= {(True, False), (False, True)}  # the sequence had jobs holding and wanting


def test_a_missed_change_is_found_and_mended_by_the_full_recompute() -> None:
    store = inventory.Inventory()
    store.put(_cj("a"))
    assert [e.uid for e in store.standing("studio").entries()] == ["uid-a"]
    store.tracked["uid-a"].admitted = True  # changed behind the inventory's back
    store.tracked["uid-a"].revision += 1
    assert store.standing_drift("studio") == ["uid-a"]
    assert [e.running for e in store.standing("studio").entries()] == [True]
    assert store.standing_drift("studio") == []


def test_without_a_read_of_the_queue_no_change_is_kept_for_it() -> None:
    """Without caps nothing reads a namespace's queue: its changes are not collected (they would
    pile up for as long as the operator runs); the first read builds it from every job."""
    store = inventory.Inventory()
    for name in ("a", "b", "c"):
        store.put(_cj(name))
    store.admit("uid-a")
    store.finish("uid-c")
    assert dict(store._dirty) == {}
    standing = store.standing("studio")
    assert sorted((e.uid, e.running) for e in standing.entries()) == [
        ("uid-a", True),
        ("uid-b", False),
    ]
    store.admit("uid-b")  # read from now on: the change reaches the queue
    assert [e.running for e in store.standing("studio").entries()] == [True, True]
    assert store.standing_drift("studio") == []


def test_a_spec_is_validated_once_per_generation() -> None:
    from compose_operator import builders
    from tests.operator.conftest import cj_body

    store = inventory.Inventory()
    body = cj_body("edited", namespace="studio")
    body["metadata"].update(uid="uid-edited", generation=1)
    store.put(body)
    first = store.spec_of("uid-edited", body)
    assert first.spec is not None and first.error is None
    assert first.digest == builders.spec_hash(first.spec)
    # The same generation: the same view, whatever the body says (the API server bumps the
    # generation on every change of the spec).
    same = {**body, "spec": {**body["spec"], "params": {"seed": 7}}}
    assert store.spec_of("uid-edited", same) is first
    edited = {**same, "metadata": {**body["metadata"], "generation": 2}}
    second = store.spec_of("uid-edited", edited)
    assert second.generation == 2 and second.spec is not None
    assert second.spec.params.seed == 7 and second.digest != first.digest
    assert store.spec_of("uid-edited", edited) is second
    # An invalid spec is described, with no digest; and kept as well.
    broken = {**edited, "spec": {"profile": 5}, "metadata": {**edited["metadata"], "generation": 3}}
    invalid = store.spec_of("uid-edited", broken)
    assert invalid.spec is None and invalid.digest is None
    assert invalid.error is not None and "spec.profile" in invalid.error
    assert store.spec_of("uid-edited", broken) is invalid
    # Without a generation nothing is kept: validated every time.
    bare = {**body, "metadata": {k: v for k, v in body["metadata"].items() if k != "generation"}}
    assert store.spec_of("uid-edited", bare) is not store.spec_of("uid-edited", bare)
    # A finished job keeps none.
    store.finish("uid-edited")
    assert store.tracked["uid-edited"].spec is None
    assert store.spec_of("uid-edited", edited) is not store.spec_of("uid-edited", edited)


def test_a_new_attempt_replacing_a_job_holds_the_slot_before_and_after_the_old_one_goes() -> None:
    from compose_operator import plan

    store = inventory.Inventory()
    store.put(_cj("edited"))
    store.put_child("job", _job("edited"), deleted=False)
    replacing = plan.suspended(_job("edited"), True)  # suspended, as the replacement is made
    del replacing["metadata"]["annotations"][names.SUSPENDED_ANNOTATION]
    replacing["metadata"]["annotations"][names.REPLACES_ANNOTATION] = "edited-0"
    replacing["metadata"]["name"] = "edited-1"
    store.put_child("job", replacing, deleted=False)
    entries = [(e.uid, e.running, e.waiting) for e in store.queue_entries("studio")]
    assert entries == [("uid-edited", True, False)]
    store.put_child("job", _job("edited"), deleted=True)
    assert store.holds_slot("uid-edited")
    # Held by the operator instead (the user suspended the job meanwhile, then resumed it):
    # it waits for a slot again.
    store.put_child("job", plan.suspended(replacing, True), deleted=False)
    entries = [(e.uid, e.running, e.waiting) for e in store.queue_entries("studio")]
    assert entries == [("uid-edited", False, True)]
