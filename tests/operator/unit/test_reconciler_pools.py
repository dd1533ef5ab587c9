"""The reconciler's side of the pool hand-off: the idle worker it offers and assigns with a
conditional write (and none for a job behind the caps or already assigned), the fresh read and
second decision when that write meets a newer version, the worker's Lease read from the API
server before a worker is called lost and looked at again when it runs out, the offer it gives
back when the assignment was not written, the pool it wakes when a pool job is assigned or goes,
and the node and disruption of the assigned worker that the status reads.

The reconciler runs as in the operator, with the clocks in the test's hands and an in-memory
client that records its requests. The same hand-off between real worker processes and the real
control plane is in ``tests/operator/cluster/test_pools.py``.
"""

from __future__ import annotations

import copy
import datetime
import pathlib
from collections.abc import Mapping
from typing import Any, cast

import pytest

from compose_api import kube
from compose_api import pools as protocol
from compose_operator import kubeapi, reconciler
from tests.operator.unit import test_reconciler_timing as timing
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_pools import pool_body

NAMESPACE = "studio"
POOL = "interactive"
WORKER = "interactive-workers-7d9f-abcde"
INSTANCE = f"{WORKER}/run-1"
POOL_KEY = (NAMESPACE, POOL)
LEASE_KEY = (NAMESPACE, WORKER)
START = timing.START


class Api(timing.Api):
    """The recording client, with the reads a pool job makes: the worker's Lease and, after a
    conflict, the CompositionJob itself."""

    def __init__(self) -> None:
        super().__init__()
        self.patches: list[tuple[dict[str, Any], str | None]] = []
        self.leases: dict[str, dict[str, Any]] = {}
        self.fresh: dict[str, Any] | None = None  # what a read of the CompositionJob returns
        self.failures: list[kube.KubeError] = []  # the answers to the next status writes

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, resource_version: Any
    ) -> dict[str, Any]:
        if self.failures:
            failure = self.failures.pop(0)
            self.requests.append(f"patch status: {failure.status}")
            raise failure
        self.patches.append((copy.deepcopy(dict(patch)), resource_version))
        return await super().patch_status(namespace, name, patch, resource_version=resource_version)

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.requests.append(f"get lease {name}")
        found = self.leases.get(name)
        return copy.deepcopy(found) if found is not None else None

    async def get_composition_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.requests.append(f"get {name}")
        return copy.deepcopy(self.fresh)

    async def node_labels(self, name: str) -> dict[str, str]:
        return {"node.kubernetes.io/instance-type": f"type of {name}"}

    # The pool's own reconcile, which a pool job's changes set going (not what these tests read).
    async def create_deployment(self, deployment: Mapping[str, Any]) -> None:
        return None

    async def patch_pool_status(self, namespace: str, name: str, patch: Any) -> None:
        return None


def conflict() -> kube.KubeError:
    return kube.Conflict(409, "Conflict", "the object has been modified")


def lease(
    *, renewed: datetime.datetime = START, instance: str = "run-1", state: str = "ready"
) -> dict[str, Any]:
    """The worker's Lease as the API server holds it (15 s, renewed at ``renewed``)."""
    return protocol.lease_body(
        pool=POOL,
        namespace=NAMESPACE,
        pod=WORKER,
        pod_uid="worker-pod-uid",
        instance=instance,
        lease_seconds=15,
        now=renewed,
        state=state,
    )


def worker_pod(*, node: str, disrupted: bool = False) -> dict[str, Any]:
    conditions = []
    if disrupted:
        reason, message = "TerminationByKubelet", "node shutdown"
        conditions.append(
            {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message}
        )
    return {
        "metadata": {"name": WORKER, "namespace": NAMESPACE, "labels": {protocol.POOL_LABEL: POOL}},
        "spec": {"nodeName": node},
        "status": {"phase": "Running", "conditions": conditions},
    }


def job_body(**status: Any) -> dict[str, Any]:
    cj = make_cj(execution={"startDeadlineSeconds": 600, "pool": POOL})
    body = cj.model_dump(mode="json", by_alias=True, exclude_none=True)
    if status:
        body["status"] = status
    return body


def operator(
    tmp_path: pathlib.Path, *, idle_worker: bool = True, **env: str
) -> tuple[reconciler.Reconciler, Api, timing.Clock, str]:
    """A reconciler that knows the pool, one pool job, and (by default) one idle worker;
    ``env``: more of the operator's settings."""
    api, clock = Api(), timing.Clock()
    jobs = reconciler.Reconciler(
        make_settings(tmp_path, **env),
        cast(kubeapi.KubeClient, api),
        clock=lambda: clock.wall,
        monotonic=lambda: clock.monotonic,
    )
    jobs.inventory.put_pool(pool_body(), deleted=False)
    if idle_worker:
        jobs.inventory.put_lease(lease(), deleted=False)
    uid = jobs.inventory.put(job_body())
    return jobs, api, clock, uid


def written(api: Api) -> dict[str, Any]:
    """The last status patch, as the API server stored it (camelCase, JSON values)."""
    return api.patches[-1][0]


def conditions(patch: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in patch.get("conditions") or []}


async def assigned(tmp_path: pathlib.Path) -> tuple[reconciler.Reconciler, Api, timing.Clock, str]:
    """A pool job assigned to the idle worker; its status as written is in the inventory."""
    jobs, api, clock, uid = operator(tmp_path)
    await jobs.reconcile(uid)
    assert jobs.inventory.assigned_to(NAMESPACE, INSTANCE) == uid
    api.requests.clear()
    api.patches.clear()
    return jobs, api, clock, uid


async def test_an_idle_worker_is_assigned_with_a_write_at_the_version_read(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, _, uid = operator(tmp_path)
    await jobs.reconcile(uid)
    patch, version = api.patches[-1]
    assert version == "7"  # the resourceVersion of the body the decision read
    assert patch["assignment"]["workerInstance"] == INSTANCE
    assert conditions(patch)["Started"] == ("Unknown", "AssignedToWorker")
    # The offer became the assignment: the worker is busy, nothing is given back to the pool.
    assert jobs.inventory.reserved(uid) is None
    assert jobs.inventory.assigned_to(NAMESPACE, INSTANCE) == uid
    assert jobs.inventory.idle_workers(NAMESPACE, POOL, START) == []
    assert POOL_KEY in jobs.pools._pending  # the pool's status is due to show the worker busy


def reservations(jobs: reconciler.Reconciler, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The jobs a worker is set aside for from here on, each time, even if it is given back."""
    made: list[str] = []
    reserve = jobs.inventory.reserve

    def recorded(uid: str, namespace: str, offer: Any) -> None:
        made.append(uid)
        reserve(uid, namespace, offer)

    monkeypatch.setattr(jobs.inventory, "reserve", recorded)
    return made


async def test_a_pool_job_behind_the_caps_has_no_worker_set_aside(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the namespace's one slot taken, a pool job waits for the slot before it waits for
    a worker: no worker is reserved for it, not even for the length of its reconcile."""
    jobs, api, _, uid = operator(tmp_path, COMPOSE_MAX_RUNNING_PER_NAMESPACE="1")
    first = job_body()
    first["metadata"].update(uid="first-uid", name="first")
    jobs.inventory.admit(jobs.inventory.put(first))
    made = reservations(jobs, monkeypatch)
    await jobs.reconcile(uid)
    assert made == []
    assert conditions(written(api))["Queued"] == ("True", "WaitingForCapacity")
    assert [w.pod for w in jobs.inventory.idle_workers(NAMESPACE, POOL, START)] == [WORKER]


async def test_an_assigned_job_has_no_second_worker_set_aside(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, _, _, uid = await assigned(tmp_path)
    second = "interactive-workers-7d9f-fghij"
    jobs.inventory.put_lease(
        protocol.lease_body(pool=POOL, namespace=NAMESPACE, pod=second, pod_uid="second-uid",
                            instance="run-1", lease_seconds=15, now=START, state="ready"),
        deleted=False,
    )  # fmt: skip
    made = reservations(jobs, monkeypatch)
    await jobs.reconcile(uid)
    assert made == []
    assert [w.pod for w in jobs.inventory.idle_workers(NAMESPACE, POOL, START)] == [second]


async def test_a_conflicting_assignment_is_decided_again_on_the_fresh_job(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, _, uid = operator(tmp_path)
    api.failures = [conflict()]
    fresh = job_body()
    fresh["metadata"]["resourceVersion"] = "9"  # a worker's write came first
    api.fresh = fresh
    await jobs.reconcile(uid)
    assert api.requests == ["patch status: 409", "get portrait", "patch status Starting"]
    assert [version for _, version in api.patches] == ["9"]
    assert uid not in jobs._failed
    assert jobs.inventory.assigned_to(NAMESPACE, INSTANCE) == uid


async def test_a_job_deleted_during_its_assignment_gives_its_worker_back(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, _, uid = operator(tmp_path)
    api.failures = [conflict()]
    api.fresh = None  # gone when read again
    await jobs.reconcile(uid)
    assert api.requests == ["patch status: 409", "get portrait"]
    assert uid not in jobs._failed
    # The reserved worker is free again, and the pool offers it to its next job.
    assert jobs.inventory.reserved(uid) is None
    assert [w.pod for w in jobs.inventory.idle_workers(NAMESPACE, POOL, START)] == [WORKER]
    assert POOL_KEY in jobs.pools._dispatching


async def test_a_failed_assignment_gives_its_worker_back(tmp_path: pathlib.Path) -> None:
    jobs, api, _, uid = operator(tmp_path)
    api.failures = [conflict() for _ in range(5)]  # every try meets a newer version
    api.fresh = job_body()
    await jobs.reconcile(uid)
    assert uid in jobs._failed  # left to the sweep, after a bounded number of decisions
    assert api.requests.count("get portrait") == reconciler._MAX_PLANS
    assert jobs.inventory.reserved(uid) is None
    assert POOL_KEY in jobs.pools._dispatching


@pytest.mark.parametrize(
    "failure",
    [kube.error_for(500, "InternalError", "etcd timeout"), kube.error_for(403, "Forbidden", "no")],
)
async def test_a_conditional_write_that_fails_otherwise_is_an_error(
    tmp_path: pathlib.Path, failure: kube.KubeError
) -> None:
    jobs, api, _, uid = operator(tmp_path)
    api.failures = [failure]
    api.fresh = job_body()
    await jobs.reconcile(uid)
    assert api.requests == [f"patch status: {failure.status}"]  # not read again
    assert uid in jobs._failed
    assert jobs.inventory.reserved(uid) is None  # the worker goes back to the pool


async def test_a_conflict_on_a_write_that_names_no_version_is_an_error(
    tmp_path: pathlib.Path,
) -> None:
    # No idle worker: the job's "waiting for a worker" write is not conditional.
    jobs, api, _, uid = operator(tmp_path, idle_worker=False)
    api.failures = [conflict()]
    await jobs.reconcile(uid)
    assert api.requests == ["patch status: 409"]  # not read again
    assert uid in jobs._failed


async def test_a_waiting_pool_job_names_the_pool_and_its_problem(tmp_path: pathlib.Path) -> None:
    jobs, api, _, uid = operator(tmp_path, idle_worker=False)
    pending = worker_pod(node="")
    pending["spec"] = {}
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    unschedulable["message"] = "0/3 nodes are available"
    pending["status"] = {"phase": "Pending", "conditions": [unschedulable]}
    jobs.inventory.put_worker_pod(pending, deleted=False)
    await jobs.reconcile(uid)
    patch, version = api.patches[-1]
    assert version is None
    assert conditions(patch)["Started"] == ("Unknown", "Unschedulable")
    started = next(c for c in patch["conditions"] if c["type"] == "Started")
    assert f"waiting for a worker of pool {POOL}" in started["message"]
    assert "0/3 nodes are available" in started["message"]


async def test_a_pool_that_is_not_there_is_named_in_the_status(tmp_path: pathlib.Path) -> None:
    jobs, api, _, uid = operator(tmp_path)
    jobs.inventory.put_pool(pool_body(), deleted=True)
    await jobs.reconcile(uid)
    assert conditions(written(api))["Started"] == ("Unknown", "PoolNotFound")
    assert jobs.inventory.reserved(uid) is None


async def test_a_lease_the_watch_has_not_shown_is_read_before_the_worker_is_called_lost(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, _, uid = await assigned(tmp_path)
    jobs.inventory.put_lease(lease(), deleted=True)  # the watch lags behind
    api.leases[WORKER] = lease()
    await jobs.reconcile(uid)
    assert api.requests == [f"get lease {WORKER}"]  # and no write: the worker is there
    assert jobs.inventory.leases[LEASE_KEY].instance == "run-1"  # kept for the next decision
    # A timer looks again when the Lease runs out unless renewed (15 s, to the whole second).
    assert 15 < timing.due_in(jobs, uid) <= 16


async def test_a_lease_about_to_run_out_is_looked_at_again_as_it_does(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, clock, uid = await assigned(tmp_path)
    renewed = START + datetime.timedelta(seconds=0.7)  # runs out at 15.7 s
    jobs.inventory.put_lease(lease(renewed=renewed), deleted=False)
    clock.advance(15.5)
    await jobs.reconcile(uid)
    assert api.requests == []  # the worker is there: nothing to read or write
    # The timer fires at the first whole second after the Lease runs out (16 s): in half a
    # second, not later.
    assert timing.due_in(jobs, uid) <= 0.5


async def test_a_worker_whose_lease_is_gone_is_lost(tmp_path: pathlib.Path) -> None:
    jobs, api, clock, uid = await assigned(tmp_path)
    clock.advance(30)  # the Lease the inventory holds ran out 15 s ago
    await jobs.reconcile(uid)
    assert api.requests[0] == f"get lease {WORKER}"
    assert LEASE_KEY not in jobs.inventory.leases  # the read found none: it is gone here too
    patch, version = api.patches[-1]
    assert version == "11"  # conditional, at the version the assignment's write returned
    assert patch["assignment"] is None
    assert conditions(patch)["Started"] == ("Unknown", "WaitingForWorker")
    assert patch["message"].startswith(f"worker {WORKER} was lost;")


async def test_a_worker_that_restarted_is_told_from_one_that_was_lost(
    tmp_path: pathlib.Path,
) -> None:
    jobs, api, clock, uid = await assigned(tmp_path)
    clock.advance(30)
    api.leases[WORKER] = lease(renewed=clock.wall, instance="run-2")  # a new process holds it
    await jobs.reconcile(uid)
    assert jobs.inventory.leases[LEASE_KEY].instance == "run-2"
    assert written(api)["message"].startswith(f"worker {WORKER} restarted;")


def accepted(jobs: reconciler.Reconciler, uid: str, *, node: str) -> None:
    """The worker's report that it took the job, on ``node``, as the watch shows it."""
    body = job_body(**copy.deepcopy(jobs.inventory.status_of(uid).to_api()))
    body["metadata"]["resourceVersion"] = "12"
    body["status"]["workerReport"] = {
        "attempt": 0,
        "worker": WORKER,
        "workerInstance": INSTANCE,
        "nodeName": node,
        "acceptedAt": START.strftime(timing.TIME),
    }
    jobs.inventory.put(body)


@pytest.mark.parametrize("disrupted", [True, False])
async def test_a_lost_worker_whose_pod_was_disrupted_ends_its_attempt_interrupted(
    tmp_path: pathlib.Path, disrupted: bool
) -> None:
    jobs, api, clock, uid = await assigned(tmp_path)
    jobs.inventory.put_worker_pod(worker_pod(node="gpu-9", disrupted=disrupted), deleted=False)
    accepted(jobs, uid, node="gpu-9")
    clock.advance(30)
    await jobs.reconcile(uid)
    attempt = written(api)["attempts"][-1]
    if disrupted:  # not counted against the job's retries
        assert (attempt["outcome"], attempt["reason"]) == ("Interrupted", "SpotInterrupted")
        assert attempt["message"].endswith("TerminationByKubelet: node shutdown")
    else:
        assert (attempt["outcome"], attempt["reason"]) == ("Failed", "WorkerLost")


async def test_the_workers_node_is_the_one_its_report_names(tmp_path: pathlib.Path) -> None:
    jobs, api, _, uid = await assigned(tmp_path)
    jobs.inventory.put_worker_pod(worker_pod(node="gpu-from-pod"), deleted=False)
    accepted(jobs, uid, node="gpu-from-report")
    await jobs.reconcile(uid)
    patch = written(api)
    assert conditions(patch)["Started"] == ("True", "Running")
    assert patch["attempts"][-1]["instanceType"] == "type of gpu-from-report"


async def test_a_pool_job_that_goes_wakes_its_pool(tmp_path: pathlib.Path) -> None:
    jobs, _, _, uid = await assigned(tmp_path)
    jobs.pools._dispatching.clear()
    jobs.forget(copy.deepcopy(jobs.inventory.body(uid) or {}))
    assert POOL_KEY in jobs.pools._pending  # its size and status are reconciled soon
    assert POOL_KEY in jobs.pools._dispatching  # and its freed worker offered at once


@pytest.mark.parametrize("pool", [True, False])
async def test_only_a_pool_job_that_goes_wakes_a_pool(tmp_path: pathlib.Path, pool: bool) -> None:
    api = Api()
    jobs = reconciler.Reconciler(make_settings(tmp_path), cast(kubeapi.KubeClient, api))
    body = job_body() if pool else make_cj().model_dump(mode="json", by_alias=True)
    jobs.inventory.put(body)
    jobs.forget(body)
    assert (POOL_KEY in jobs.pools._pending) is pool
