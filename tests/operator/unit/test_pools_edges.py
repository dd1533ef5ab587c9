"""The edges of the pools' pure functions: pods and Deployments decoded from the API, patches
that shrink as well as grow, the scaling clock, and the messages of the pool's status."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import pytest

from compose_api import pools as protocol
from compose_operator import pools, settings
from tests.operator.unit.test_builders import make_settings
from tests.operator.unit.test_pools import POOL_UID, pool_body, pool_view, spec
from tests.operator.unit.test_status import at


def from_api(value: Any) -> Any:
    """``value`` as decoded from the API server's JSON: its strings are new objects."""
    return json.loads(json.dumps(value))


def worker_pod(*conditions: dict[str, Any], **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": "w0",
            "namespace": "studio",
            "labels": {protocol.POOL_LABEL: "interactive"},
        },
        "status": {"conditions": list(conditions), **status},
    }
    return from_api(body)


def condition(kind: str, state: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": state, "reason": reason, "message": message}


def test_only_a_true_disruption_condition_marks_a_worker_disrupted() -> None:
    for state in ("False", "Unknown"):
        found = pools.view_worker_pod(worker_pod(condition("DisruptionTarget", state, "x")))
        assert found is not None and found.disrupted is None
    found = pools.view_worker_pod(
        worker_pod(condition("DisruptionTarget", "True", "EvictionByEvictionAPI", "drain"))
    )
    assert found is not None and found.disrupted == "EvictionByEvictionAPI: drain"


def test_only_an_unschedulable_pod_is_short_of_capacity() -> None:
    unschedulable = condition("PodScheduled", "False", "Unschedulable", "0/3 nodes")
    found = pools.view_worker_pod(worker_pod(unschedulable))
    assert found is not None
    assert found.problem == ("Unschedulable", "no GPU capacity: 0/3 nodes")
    # Held by a scheduling gate, or scheduled since: no capacity problem.
    for other in (
        condition("PodScheduled", "False", "SchedulingGated"),
        condition("PodScheduled", "True", "Unschedulable"),
    ):
        found = pools.view_worker_pod(worker_pod(other))
        assert found is not None and found.problem is None


def test_a_worker_pod_reads_its_namespace_and_its_waiting_message() -> None:
    waiting = {"reason": "ImagePullBackOff", "message": "manifest unknown"}
    found = pools.view_worker_pod(
        worker_pod(containerStatuses=[{"name": "worker", "state": {"waiting": waiting}}])
    )
    assert found is not None
    assert (found.name, found.namespace) == ("w0", "studio")
    assert found.problem == ("ImagePullBackOff", "ImagePullBackOff: manifest unknown")


def test_a_deployment_is_read_by_name_and_counts(config: settings.OperatorSettings) -> None:
    profile = config.profiles["instantid-sdxl"]
    wanted = pools.build_deployment(pool_view(), profile, config, replicas=3)
    found = pools.view_deployment(from_api({**wanted, "status": {"replicas": 3}}))
    assert found is not None
    assert (found.name, found.existing, found.ready) == ("interactive-workers", 3, 0)
    assert found.owner_uid == POOL_UID
    ready = pools.view_deployment(from_api({**wanted, "status": {"readyReplicas": 2}}))
    assert ready is not None and ready.ready == 2


@pytest.fixture
def config(tmp_path: pathlib.Path) -> settings.OperatorSettings:
    return make_settings(tmp_path, COMPOSE_MODEL_CACHE="/mnt/nvme/models")


def test_the_deployment_is_patched_down_as_well_as_up(config: settings.OperatorSettings) -> None:
    profile = config.profiles["instantid-sdxl"]
    big = pools.build_deployment(pool_view(), profile, config, replicas=5)
    found = pools.view_deployment(from_api(big))
    assert found is not None
    small = pools.build_deployment(pool_view(), profile, config, replicas=2)
    assert pools.deployment_patch(small, found) == {"spec": {"replicas": 2}}
    # Any other template hash is patched, whichever way it sorts.
    stale = dataclasses.replace(found, template_hash="f" * 16)
    patch = pools.deployment_patch(big, stale)
    assert patch is not None and "template" in patch["spec"]
    stale = dataclasses.replace(found, template_hash="0" * 16)
    patch = pools.deployment_patch(big, stale)
    assert patch is not None and "template" in patch["spec"]


def test_an_externally_scaled_pool_is_active_while_it_has_demand() -> None:
    external = spec(scaling="external", minReplicas=0, maxReplicas=3, replicas=2)
    busy = pools.size(external, current=2, demand=1, last_active=at(0), now=at(10))
    assert busy.last_active == at(10)
    idle = pools.size(external, current=2, demand=0, last_active=at(0), now=at(10))
    assert idle.last_active == at(0)


def test_demand_below_a_pools_minimum_does_not_keep_it_active() -> None:
    # Two workers kept by minReplicas, one job: the pool is not filled by its demand.
    kept = spec(minReplicas=2, maxReplicas=4)
    found = pools.size(kept, current=2, demand=1, last_active=at(0), now=at(10))
    assert (found.desired, found.last_active) == (2, at(0))


def test_a_worker_being_deleted_is_no_reason_the_pool_does_not_start() -> None:
    def worker(name: str, problem: tuple[str, str] | None, deleting: bool) -> pools.WorkerPod:
        return pools.WorkerPod(name, "studio", "interactive", None, deleting, None, problem)

    old = worker("a", ("ImagePullBackOff", "old image"), deleting=True)
    assert pools.problem_of([old, worker("b", None, deleting=False)]) is None
    new = worker("c", ("Unschedulable", "no GPU capacity"), deleting=False)
    assert pools.problem_of([old, new]) == ("Unschedulable", "no GPU capacity")


def test_pods_the_deployment_cannot_create_are_why_its_workers_do_not_start(
    config: settings.OperatorSettings,
) -> None:
    profile = config.profiles["instantid-sdxl"]
    wanted = pools.build_deployment(pool_view(), profile, config, replicas=1)
    refused = 'pods "interactive-workers-5d8f-x" is forbidden: exceeded quota: gpus'
    failure = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}
    found = pools.view_deployment(
        from_api({**wanted, "status": {"conditions": [{**failure, "message": refused}]}})
    )
    assert found is not None and found.replica_failure == refused
    expected = ("PodCreateFailed", f"the workers' pods cannot be created: {refused}")
    assert pools.problem_of([], found) == expected
    # A pod's own problem comes first; a failure that is over (False) is none.
    pod = pools.WorkerPod("w0", "studio", "interactive", None, False, None, ("Unschedulable", "x"))
    assert pools.problem_of([pod], found) == ("Unschedulable", "x")
    over = pools.view_deployment(
        from_api({**wanted, "status": {"conditions": [{**failure, "status": "False"}]}})
    )
    assert over is not None and over.replica_failure is None
    assert pools.problem_of([], over) is None
    # Each try names a new pod: left out, the same answer reads the same.
    tries = [
        f'pods "interactive-workers-5d8f9c-{suffix}" is forbidden: exceeded quota: gpus'
        for suffix in ("x7k2p", "q9z4m")
    ]
    read = [
        pools.view_deployment(
            from_api({**wanted, "status": {"conditions": [{**failure, "message": text}]}})
        )
        for text in tries
    ]
    assert [view.replica_failure for view in read if view is not None] == [
        'pods "interactive-workers-5d8f9c-" is forbidden: exceeded quota: gpus'
    ] * 2
    # Without a message, the condition's reason says what it can.
    bare = pools.view_deployment(from_api({**wanted, "status": {"conditions": [failure]}}))
    assert bare is not None and bare.replica_failure == "FailedCreate"


@pytest.mark.parametrize(
    ("ready", "desired", "message"),
    [
        (1, 2, "1 of 2 workers ready"),
        (2, 2, "2 of 2 workers ready"),
        (3, 2, "3 workers ready, scaling down to 2"),
    ],
)
def test_the_available_message_counts_workers_against_the_size(
    ready: int, desired: int, message: str
) -> None:
    found = pools.compute_status(
        pool_view(maxReplicas=4),
        deployment=None,
        workers=pools.Workers(ready=ready),
        queued=0,
        running=0,
        scaled=pools.Size(desired, at(0)),
        problem=None,
        now=at(1),
    )
    assert found.message == message


def test_an_unreadable_pool_status_reads_as_empty() -> None:
    body = pool_body()
    body["status"] = {"readyWorkers": "many"}
    view = pools.view_pool(body)
    assert view.spec is not None
    assert view.status == protocol.CompositionPoolStatus()


def test_no_workers_is_the_default_count_and_views_are_frozen() -> None:
    assert pools.Workers() == pools.Workers(ready=0, busy=0, idle=0, draining=0)
    for value in (pool_view(), pools.Size(1, None)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.__setattr__("name", "other")


def test_an_available_condition_that_turns_true_gets_a_new_transition_time() -> None:
    starting = pools.compute_status(
        pool_view(maxReplicas=2),
        deployment=None,
        workers=pools.Workers(),
        queued=1,
        running=0,
        scaled=pools.Size(1, at(0)),
        problem=None,
        now=at(1),
    )
    body = pool_body(maxReplicas=2)
    body["status"] = starting.model_dump(mode="json", by_alias=True, exclude_none=True)
    ready = pools.compute_status(
        pools.view_pool(body),
        deployment=None,
        workers=pools.Workers(ready=1, idle=1),
        queued=0,
        running=0,
        scaled=pools.Size(1, at(0)),
        problem=None,
        now=at(30),
    )
    available = {c.type: c for c in ready.conditions}[protocol.PoolConditionType.AVAILABLE]
    assert (available.status, available.last_transition_time) == ("True", at(30))
    accepted = {c.type: c for c in ready.conditions}[protocol.PoolConditionType.ACCEPTED]
    assert accepted.last_transition_time == at(1)  # unchanged: True before and after


def test_a_pools_status_is_read_from_its_body() -> None:
    body = pool_body()
    body["status"] = {"readyWorkers": 2, "desiredReplicas": 3}
    view = pools.view_pool(from_api(body))
    assert (view.status.ready_workers, view.status.desired_replicas) == (2, 3)
    assert view.deleting is False
    kept = pools.PoolView("studio", "p", "u", 1, None, None, view.status)
    assert kept.deleting is False  # only a deletionTimestamp says so


def _counted_from_the_api(state: str) -> pools.Workers:
    """One worker's Lease in ``state``, as the API server answers it, counted a second later."""
    body = protocol.lease_body(
        pool="interactive",
        namespace="studio",
        pod="w0",
        pod_uid="u",
        instance="run-1",
        lease_seconds=15,
        now=at(0),
        state=state,
    )
    found = protocol.view_lease(from_api(body))
    assert found is not None
    return pools.count_workers([found], set(), at(1))


def test_an_idle_worker_read_from_the_api_is_counted_idle() -> None:
    workers = _counted_from_the_api(protocol.STATE_READY)
    assert (workers.ready, workers.idle, workers.busy) == (1, 1, 0)


def test_a_worker_pod_view_is_frozen() -> None:
    found = pools.view_worker_pod(worker_pod())
    assert found is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.__setattr__("name", "other")


def test_a_ready_worker_is_not_disrupted() -> None:
    ready = worker_pod(condition("PodScheduled", "True"), condition("Ready", "True"))
    found = pools.view_worker_pod(ready)
    assert found is not None and found.disrupted is None and found.problem is None


def test_an_available_condition_that_turns_false_gets_a_new_transition_time() -> None:
    ready = pools.compute_status(
        pool_view(maxReplicas=2),
        deployment=None,
        workers=pools.Workers(ready=1, idle=1),
        queued=0,
        running=0,
        scaled=pools.Size(1, at(0)),
        problem=None,
        now=at(1),
    )
    body = pool_body(maxReplicas=2)
    body["status"] = ready.model_dump(mode="json", by_alias=True, exclude_none=True)
    gone = pools.compute_status(
        pools.view_pool(body),
        deployment=None,
        workers=pools.Workers(),
        queued=1,
        running=0,
        scaled=pools.Size(1, at(0)),
        problem=None,
        now=at(30),
    )
    available = {c.type: c for c in gone.conditions}[protocol.PoolConditionType.AVAILABLE]
    assert (available.status, available.last_transition_time) == ("False", at(30))
    assert gone.replicas == 0  # no Deployment: no worker pod exists


def test_an_idle_pool_at_its_minimum_keeps_its_last_active_time() -> None:
    idle = pools.size(spec(minReplicas=0, maxReplicas=2), current=0, demand=0,
                      last_active=at(3), now=at(50))  # fmt: skip
    assert (idle.desired, idle.last_active) == (0, at(3))


def test_a_deployment_without_a_status_has_no_pods_yet(config: settings.OperatorSettings) -> None:
    profile = config.profiles["instantid-sdxl"]
    fresh = pools.build_deployment(pool_view(), profile, config, replicas=1)
    found = pools.view_deployment(from_api(fresh))
    assert found is not None and (found.existing, found.ready) == (0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.__setattr__("name", "other")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pools.Workers().__setattr__("ready", 1)


def test_a_worker_with_its_containers_ready_is_not_disrupted() -> None:
    up = worker_pod(condition("ContainersReady", "True"), condition("Initialized", "True"))
    found = pools.view_worker_pod(up)
    assert found is not None and found.disrupted is None


def test_a_draining_worker_read_from_the_api_is_counted_draining() -> None:
    workers = _counted_from_the_api(protocol.STATE_DRAINING)
    assert (workers.ready, workers.draining, workers.idle) == (1, 1, 0)


def test_a_pool_and_its_deployment_read_their_generation_and_namespace(
    config: settings.OperatorSettings,
) -> None:
    view = pools.view_pool(from_api(pool_body()))
    assert (view.namespace, view.generation) == ("studio", 3)
    profile = config.profiles["instantid-sdxl"]
    found = pools.view_deployment(
        from_api(pools.build_deployment(view, profile, config, replicas=1))
    )
    assert found is not None and found.namespace == "studio"
