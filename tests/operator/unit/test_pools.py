"""CompositionPools, pure: the workers' Deployment, the pool's size from its demand, its status,
and the views of worker Leases and pods."""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any

import pytest

from compose_api import models
from compose_api import pools as protocol
from compose_operator import pools, settings
from tests.operator.unit import expected_yaml
from tests.operator.unit.test_builders import make_settings
from tests.operator.unit.test_status import at

POOL_UID = "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"


def pool_body(name: str = "interactive", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": protocol.KIND,
        "metadata": {"name": name, "namespace": "studio", "uid": POOL_UID, "generation": 3},
        "spec": {"profile": "instantid-sdxl", **spec},
    }


def pool_view(**spec: Any) -> pools.PoolView:
    return pools.view_pool(pool_body(**spec))


@pytest.fixture
def config(tmp_path: pathlib.Path) -> settings.OperatorSettings:
    return make_settings(tmp_path, COMPOSE_MODEL_CACHE="/mnt/nvme/models")


def test_the_deployment_runs_warm_workers_of_the_profile(config: settings.OperatorSettings) -> None:
    pool = pool_view(maxReplicas=4, capacityType="on-demand", drainSeconds=120, leaseSeconds=20)
    profile = config.profiles["instantid-sdxl"]
    deployment = pools.build_deployment(pool, profile, config, replicas=2)
    expected_yaml.check("pool_deployment", deployment)
    # The fields that matter, asserted on their own so that a refreshed snapshot cannot bless a
    # regression.
    assert deployment["metadata"]["name"] == "interactive-workers"
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("CompositionPool", POOL_UID, True)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"] == {
        protocol.POOL_LABEL: "interactive",
        "app.kubernetes.io/component": "worker",
    }
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"][protocol.POOL_LABEL] == "interactive"
    pod = template["spec"]
    assert pod["terminationGracePeriodSeconds"] == 120  # drainSeconds: time to finish a job
    assert pod["restartPolicy"] == "Always"
    assert pod["serviceAccountName"] == "compose-worker"
    (container,) = pod["containers"]
    assert container["args"] == ["worker"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    values = [e["values"] for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]]
    assert ["on-demand"] in values and ["ON_DEMAND"] in values
    env = {item["name"]: item for item in container["env"]}
    assert env[protocol.POD_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env[protocol.POD_UID_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
    assert env[protocol.LEASE_SECONDS_ENV]["value"] == "20"
    assert json.loads(env[protocol.PROFILE_ENV]["value"])["name"] == "instantid-sdxl"
    assert env["COMPOSE_MODEL_CACHE"]["value"] == "/models"
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert cache["hostPath"]["path"] == "/mnt/nvme/models"  # shared with the node's Job pods


def test_a_changed_template_is_patched_and_a_same_one_is_not(
    config: settings.OperatorSettings,
) -> None:
    profile = config.profiles["instantid-sdxl"]
    wanted = pools.build_deployment(pool_view(), profile, config, replicas=1)
    body = {**wanted, "status": {"replicas": 1, "readyReplicas": 1}}
    found = pools.view_deployment(body)
    assert found is not None and found.existing == 1 and found.owner_uid == POOL_UID
    assert pools.deployment_patch(wanted, found) is None
    scaled = pools.build_deployment(pool_view(), profile, config, replicas=3)
    assert pools.deployment_patch(scaled, found) == {"spec": {"replicas": 3}}
    other = pools.build_deployment(
        pool_view(image="registry.example.com/w:2"), profile, config, replicas=1
    )
    patch = pools.deployment_patch(other, found)
    assert patch is not None and "replicas" not in patch["spec"]
    assert patch["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/w:2"


def spec(**fields: Any) -> protocol.CompositionPoolSpec:
    return protocol.CompositionPoolSpec.model_validate({"profile": "instantid-sdxl", **fields})


def test_the_pool_grows_to_its_demand_at_once_within_its_bounds() -> None:
    wide = spec(minReplicas=0, maxReplicas=4)
    first = pools.size(wide, current=0, demand=1, last_active=None, now=at(10))
    assert (first.desired, first.last_active, first.recheck_at) == (1, at(10), None)
    assert pools.size(wide, current=1, demand=9, last_active=at(10), now=at(11)).desired == 4
    assert (
        pools.size(
            spec(minReplicas=2, maxReplicas=4), current=None, demand=0, last_active=None, now=at(0)
        ).desired
        == 2
    )


def test_the_pool_shrinks_only_after_the_demand_stayed_below_its_size() -> None:
    wide = spec(minReplicas=0, maxReplicas=4, scaleToZeroAfterSeconds=60)
    # Busy at 3 until t=100; then one job left: the pool keeps 3 until t=160, then goes to 1.
    busy = pools.size(wide, current=3, demand=3, last_active=at(50), now=at(100))
    assert (busy.desired, busy.last_active) == (3, at(100))
    early = pools.size(wide, current=3, demand=1, last_active=at(100), now=at(159))
    assert (early.desired, early.recheck_at) == (3, at(160))
    due = pools.size(wide, current=3, demand=1, last_active=at(100), now=at(160))
    assert due.desired == 1
    # Idle: to zero (minReplicas) after the same time.
    assert pools.size(wide, current=1, demand=0, last_active=at(160), now=at(219)).desired == 1
    assert pools.size(wide, current=1, demand=0, last_active=at(160), now=at(220)).desired == 0
    # A pool kept at its minimum never goes below it.
    kept = spec(minReplicas=1, maxReplicas=2, scaleToZeroAfterSeconds=0)
    assert pools.size(kept, current=2, demand=0, last_active=at(0), now=at(1)).desired == 1


def test_external_scaling_follows_spec_replicas_clamped() -> None:
    external = spec(scaling="external", minReplicas=1, maxReplicas=3, replicas=7)
    assert pools.size(external, current=1, demand=0, last_active=None, now=at(0)).desired == 3
    unset = spec(scaling="external", minReplicas=1, maxReplicas=3)
    assert pools.size(unset, current=2, demand=5, last_active=None, now=at(0)).desired == 1


def lease(pod: str, instance: str, renewed: float, *, state: str = "ready") -> dict[str, Any]:
    body = protocol.lease_body(
        pool="interactive",
        namespace="studio",
        pod=pod,
        pod_uid="u-" + pod,
        instance=instance,
        lease_seconds=15,
        now=at(renewed),
        state=state,
    )
    return body


def test_worker_leases_are_read_and_counted_by_state() -> None:
    views = [protocol.view_lease(lease(f"w{i}", f"i{i}", 0)) for i in range(4)]
    views[3] = protocol.view_lease(lease("w3", "i3", 0, state=protocol.STATE_DRAINING))
    stale = protocol.view_lease(lease("w4", "i4", -20))
    found = [v for v in (*views, stale) if v is not None]
    assert len(found) == 5 and found[0].pool == "interactive" and found[0].instance == "i0"
    counted = pools.count_workers(found, {"w0/i0"}, at(5))
    assert counted == pools.Workers(ready=4, busy=1, idle=2, draining=1)
    assert protocol.view_lease({"metadata": {"name": "x"}, "spec": {}}) is None  # not a worker's


def test_the_status_says_how_many_workers_are_ready_and_why_not() -> None:
    pool = pool_view(maxReplicas=2)
    scaled = pools.Size(2, at(0))
    ready = pools.compute_status(
        pool,
        deployment=None,
        workers=pools.Workers(ready=1, busy=1),
        queued=3,
        running=1,
        scaled=scaled,
        problem=None,
        now=at(1),
    )
    available = {c.type: c for c in ready.conditions}[protocol.PoolConditionType.AVAILABLE]
    assert (available.status, available.reason) == ("True", "WorkersReady")
    assert (ready.queued, ready.running, ready.desired_replicas) == (3, 1, 2)
    assert (
        ready.selector
        == "app.kubernetes.io/component=worker,compose.nextunicorn.dev/pool=interactive"
    )
    stuck = pools.compute_status(
        pool,
        deployment=None,
        workers=pools.Workers(),
        queued=1,
        running=0,
        scaled=scaled,
        problem=("Unschedulable", "no GPU capacity: 0/3 nodes are available"),
        now=at(1),
    )
    available = {c.type: c for c in stuck.conditions}[protocol.PoolConditionType.AVAILABLE]
    assert (available.status, available.reason) == ("False", "Unschedulable")
    assert "0/3 nodes" in available.message
    zero = pools.compute_status(
        pool,
        deployment=None,
        workers=pools.Workers(),
        queued=0,
        running=0,
        scaled=pools.Size(0, None),
        problem=None,
        now=at(1),
    )
    assert {c.type: c.reason for c in zero.conditions}["Available"] == "ScaledToZero"
    # Counts alone changed: a write that may wait; a condition changed: one that may not.
    busier = ready.model_copy(update={"queued": 4})
    assert pools.counts_only(busier, ready)
    assert not pools.counts_only(stuck, ready)


def test_worker_pods_tell_why_they_do_not_serve() -> None:
    base = {
        "metadata": {
            "name": "w0",
            "namespace": "studio",
            "labels": {protocol.POOL_LABEL: "interactive"},
        }
    }
    pending = {
        **base,
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available",
                }
            ]
        },
    }
    found = pools.view_worker_pod(pending)
    assert found is not None and found.problem == (
        "Unschedulable",
        "no GPU capacity: 0/3 nodes are available",
    )
    pulling = {
        **base,
        "spec": {"nodeName": "gpu-1"},
        "status": {
            "containerStatuses": [
                {
                    "name": "worker",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                }
            ]
        },
    }
    found = pools.view_worker_pod(pulling)
    assert found is not None and found.problem is not None and found.node == "gpu-1"
    assert found.problem[0] == "ImagePullBackOff"
    spot = {
        **base,
        "status": {
            "conditions": [
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "TerminationByKubelet",
                    "message": "spot interruption",
                }
            ]
        },
    }
    found = pools.view_worker_pod(spot)
    assert found is not None and found.disrupted == "TerminationByKubelet: spot interruption"
    assert pools.view_worker_pod({"metadata": {"name": "job-pod", "labels": {}}}) is None


def test_an_invalid_pool_is_rejected_with_the_field() -> None:
    pool = pools.view_pool(pool_body(minReplicas=3, maxReplicas=1))
    assert pool.spec is None and pool.spec_error is not None
    assert "minReplicas must not exceed maxReplicas" in pool.spec_error
    written = pools.rejected(pool, "InvalidSpec", pool.spec_error, now=at(0))
    accepted = {c.type: c for c in written.conditions}[protocol.PoolConditionType.ACCEPTED]
    assert (accepted.status, accepted.reason) == ("False", "InvalidSpec")
    later = pools.rejected(
        pools.PoolView(**{**pool.__dict__, "status": written}),
        "InvalidSpec",
        pool.spec_error,
        now=at(60),
    )
    kept = {c.type: c for c in later.conditions}[protocol.PoolConditionType.ACCEPTED]
    assert kept.last_transition_time == at(0)  # unchanged status keeps its transition time
    assert pools.status_patch(later, written) is None


def test_settings_read_the_default_pools(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path, COMPOSE_DEFAULT_POOLS="instantid-sdxl=interactive, smoke=s1")
    assert config.default_pools == {"instantid-sdxl": "interactive", "smoke": "s1"}
    with pytest.raises(
        settings.SettingsError, match=r"COMPOSE_DEFAULT_POOLS: .*expected profile=pool"
    ):
        make_settings(tmp_path, COMPOSE_DEFAULT_POOLS="instantid-sdxl")
    with pytest.raises(settings.SettingsError, match=r"COMPOSE_DEFAULT_POOLS: .*'Bad_Pool'"):
        make_settings(tmp_path, COMPOSE_DEFAULT_POOLS="smoke=Bad_Pool")


def test_the_lease_protocol_round_trips() -> None:
    body = lease("w0", "abc", 0)
    assert body["metadata"]["ownerReferences"][0] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "w0",
        "uid": "u-w0",
    }
    view = protocol.view_lease(body)
    assert view is not None and view.fresh(at(14.9)) and not view.fresh(at(15))
    assert view.expires_at() == at(15)
    renewed = {**body, "spec": {**body["spec"], **protocol.renew_patch(at(10))["spec"]}}
    again = protocol.view_lease(renewed)
    assert again is not None and again.fresh(at(24)) and again.takes_work(at(24))
    draining = protocol.state_patch(protocol.STATE_DRAINING, at(11))
    assert draining["metadata"]["annotations"][protocol.STATE_ANNOTATION] == "draining"
    assert protocol.micro_time(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)) == (
        "2026-01-01T00:00:00.000000Z"
    )
