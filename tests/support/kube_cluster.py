"""The Job controller and the kubelet, played by tests on top of the emulator.

The emulator runs no controllers. These functions write what the real ones would write, through
the API (so the code under test sees ordinary watch events): nodes with EKS/Karpenter labels,
the pod a Job controller creates from a Job's template, the pod's life as the scheduler and the
kubelet report it (scheduled, unschedulable, image pulling and back-off, running, terminated
with a termination message, disrupted like a spot interruption), and the Job status the Job
controller derives from its pods (``sync_job``: counters, podFailurePolicy, backoffLimit,
Complete/Failed with SuccessCriteriaMet/FailureTarget as Kubernetes 1.31+ writes them).

Every function takes the :class:`~tests.support.cluster_client.ClusterClient` first and returns the
object as stored after its write. Times default to now and can be passed in (``at=``).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from compose_api.kube import Conflict
from tests.support.cluster_client import ClusterClient, Obj
from tests.support.resources import JOBS, NODES, PODS

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_NAME_LABEL = "job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
LEGACY_CONTROLLER_UID_LABEL = "controller-uid"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
EKS_CAPACITY_TYPE_LABEL = "eks.amazonaws.com/capacityType"
GPU = "nvidia.com/gpu"
UNSCHEDULABLE_MESSAGE = (
    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are"
    " available: 3 No preemption victims found for incoming pod."
)
SPOT_MESSAGE = "Pod was terminated in response to imminent node shutdown."


def _now(at: datetime.datetime | None) -> str:
    moment = at or datetime.datetime.now(datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = obj["metadata"]
    return meta


def _condition(
    type_: str, status: str, *, reason: str = "", message: str = "", at: str
) -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": type_,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": at,
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _merge_conditions(
    existing: Sequence[Mapping[str, Any]], updates: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Replace conditions by type, keeping lastTransitionTime when the status is unchanged."""
    merged = [dict(c) for c in existing]
    for update in updates:
        for index, current in enumerate(merged):
            if current.get("type") == update["type"]:
                new = dict(update)
                if current.get("status") == update["status"]:
                    new["lastTransitionTime"] = current.get("lastTransitionTime")
                merged[index] = new
                break
        else:
            merged.append(dict(update))
    # None-valued keys are not stored by the API server; drop them for a clean merge patch.
    return [{k: v for k, v in c.items() if v is not None} for c in merged]


def _container_name(pod: Mapping[str, Any]) -> str:
    containers = pod.get("spec", {}).get("containers") or [{"name": "main"}]
    name: str = containers[0].get("name", "main")
    return name


def _image(pod: Mapping[str, Any]) -> str:
    containers = pod.get("spec", {}).get("containers") or [{}]
    image: str = containers[0].get("image", "")
    return image


# -- nodes ------------------------------------------------------------------------------------


async def ensure_node(
    kube: ClusterClient,
    name: str,
    *,
    instance_type: str = "g5.xlarge",
    capacity_type: str = "spot",
    gpus: int = 1,
    zone: str = "us-east-1a",
) -> Obj:
    """A GPU node labelled the way EKS and Karpenter label g5 nodes (created if absent)."""
    existing = await kube.get_or_none(NODES, name)
    if existing is not None:
        return existing
    body = {
        "metadata": {
            "name": name,
            "labels": {
                INSTANCE_TYPE_LABEL: instance_type,
                CAPACITY_TYPE_LABEL: capacity_type,
                EKS_CAPACITY_TYPE_LABEL: "SPOT" if capacity_type == "spot" else "ON_DEMAND",
                "topology.kubernetes.io/zone": zone,
                "kubernetes.io/hostname": name,
                "nvidia.com/gpu.present": "true",
            },
        },
        "spec": {"taints": [{"key": GPU, "value": "true", "effect": "NoSchedule"}]},
    }
    try:
        await kube.create(NODES, body)
    except Conflict:
        return await kube.get(NODES, name)  # created meanwhile by a concurrent caller
    capacity = {GPU: str(gpus), "cpu": "4", "memory": "16Gi"}
    return await kube.patch_status(
        NODES,
        name,
        {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    )


# -- the Job controller: pods ----------------------------------------------------------------


async def create_pod_for_job(
    kube: ClusterClient,
    job: Mapping[str, Any],
    *,
    node: str | None = None,
    instance_type: str = "g5.xlarge",
    capacity_type: str = "spot",
    name: str | None = None,
    at: datetime.datetime | None = None,
) -> Obj:
    """Create the pod the Job controller would create from ``job``'s template.

    With ``node`` the pod is also scheduled there (the node is created with the given instance
    and capacity type if absent); without it the pod stays Pending and unscheduled. The Job's
    status gets ``active`` and ``startTime`` as the controller writes them.
    """
    meta = _meta(job)
    namespace = meta["namespace"]
    template = copy.deepcopy(job.get("spec", {}).get("template", {}))
    template_meta = template.get("metadata") or {}
    labels = dict(template_meta.get("labels") or {})
    labels.update(
        {
            JOB_NAME_LABEL: meta["name"],
            LEGACY_JOB_NAME_LABEL: meta["name"],
            CONTROLLER_UID_LABEL: meta["uid"],
            LEGACY_CONTROLLER_UID_LABEL: meta["uid"],
        }
    )
    suffix = "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
    pod_meta: dict[str, Any] = {
        "name": name or f"{meta['name']}-{suffix}",
        "namespace": namespace,
        "labels": labels,
        "annotations": dict(template_meta.get("annotations") or {}),
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    pod = await kube.create(
        PODS, {"metadata": pod_meta, "spec": template.get("spec") or {}}, namespace=namespace
    )
    await sync_job(kube, job, at=at)
    if node is not None:
        pod = await mark_scheduled(
            kube, pod, node=node, instance_type=instance_type, capacity_type=capacity_type, at=at
        )
    return pod


async def pods_of_job(kube: ClusterClient, job: Mapping[str, Any]) -> list[Obj]:
    """The Job's pods, found by label as the Job controller finds them."""
    meta = _meta(job)
    return await kube.list(
        PODS,
        namespace=meta["namespace"],
        label_selector=f"{CONTROLLER_UID_LABEL}={meta['uid']}",
    )


# -- the scheduler and the kubelet: pod transitions ---------------------------------------------


async def _pod_status(
    kube: ClusterClient, pod: Mapping[str, Any], status: Mapping[str, Any]
) -> Obj:
    meta = _meta(pod)
    current = await kube.get(PODS, meta["name"], namespace=meta["namespace"])
    update = dict(status)
    if "conditions" in update:
        update["conditions"] = _merge_conditions(
            current.get("status", {}).get("conditions") or [], update["conditions"]
        )
    return await kube.patch_status(PODS, meta["name"], update, namespace=meta["namespace"])


async def mark_scheduled(
    kube: ClusterClient,
    pod: Mapping[str, Any],
    *,
    node: str = "gpu-node-1",
    instance_type: str = "g5.xlarge",
    capacity_type: str = "spot",
    at: datetime.datetime | None = None,
) -> Obj:
    """Bind the pod to ``node`` (created if absent): ``spec.nodeName`` and PodScheduled=True."""
    await ensure_node(kube, node, instance_type=instance_type, capacity_type=capacity_type)
    meta = _meta(pod)
    # A real scheduler binds through pods/binding; the emulator accepts the plain patch.
    await kube.patch(PODS, meta["name"], {"spec": {"nodeName": node}}, namespace=meta["namespace"])
    now = _now(at)
    return await _pod_status(
        kube,
        pod,
        {
            "phase": "Pending",
            "hostIP": "10.0.0.10",
            "conditions": [_condition("PodScheduled", "True", at=now)],
            "qosClass": "Burstable",
        },
    )


async def mark_unschedulable(
    kube: ClusterClient,
    pod: Mapping[str, Any],
    *,
    message: str = UNSCHEDULABLE_MESSAGE,
    at: datetime.datetime | None = None,
) -> Obj:
    """What the scheduler writes when no node has a free GPU."""
    condition = _condition(
        "PodScheduled", "False", reason="Unschedulable", message=message, at=_now(at)
    )
    return await _pod_status(kube, pod, {"phase": "Pending", "conditions": [condition]})


def _waiting(pod: Mapping[str, Any], reason: str, message: str = "") -> dict[str, Any]:
    state: dict[str, Any] = {"reason": reason}
    if message:
        state["message"] = message
    return {
        "name": _container_name(pod),
        "image": _image(pod),
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": {"waiting": state},
    }


async def mark_image_pulling(
    kube: ClusterClient, pod: Mapping[str, Any], *, at: datetime.datetime | None = None
) -> Obj:
    """Scheduled, containers being created while the image is pulled."""
    now = _now(at)
    return await _pod_status(
        kube,
        pod,
        {
            "phase": "Pending",
            "startTime": now,
            "conditions": [
                _condition("PodReadyToStartContainers", "True", at=now),
                _condition("Initialized", "True", at=now),
                _condition("Ready", "False", reason="ContainersNotReady", at=now),
                _condition("ContainersReady", "False", reason="ContainersNotReady", at=now),
            ],
            "containerStatuses": [_waiting(pod, "ContainerCreating")],
        },
    )


async def mark_image_pull_backoff(
    kube: ClusterClient,
    pod: Mapping[str, Any],
    *,
    reason: str = "ImagePullBackOff",
    message: str | None = None,
    at: datetime.datetime | None = None,
) -> Obj:
    """The image cannot be pulled: ErrImagePull first, then ImagePullBackOff."""
    text = message or f'Back-off pulling image "{_image(pod)}"'
    now = _now(at)
    return await _pod_status(
        kube,
        pod,
        {
            "phase": "Pending",
            "startTime": now,
            "conditions": [_condition("Ready", "False", reason="ContainersNotReady", at=now)],
            "containerStatuses": [_waiting(pod, reason, text)],
        },
    )


async def mark_running(
    kube: ClusterClient, pod: Mapping[str, Any], *, at: datetime.datetime | None = None
) -> Obj:
    """The container started: phase Running, running state with ``startedAt``, Ready."""
    now = _now(at)
    return await _pod_status(
        kube,
        pod,
        {
            "phase": "Running",
            "startTime": now,
            "podIP": "10.1.0.20",
            "conditions": [
                _condition("PodReadyToStartContainers", "True", at=now),
                _condition("Initialized", "True", at=now),
                _condition("Ready", "True", at=now),
                _condition("ContainersReady", "True", at=now),
            ],
            "containerStatuses": [
                {
                    "name": _container_name(pod),
                    "image": _image(pod),
                    "imageID": f"{_image(pod)}@sha256:{'0' * 64}",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        },
    )


async def mark_terminated(
    kube: ClusterClient,
    pod: Mapping[str, Any],
    *,
    exit_code: int,
    message: str | None = None,
    reason: str | None = None,
    at: datetime.datetime | None = None,
) -> Obj:
    """The container exited with ``exit_code`` and ``message`` (the termination message JSON).

    Phase becomes Succeeded on 0 and Failed otherwise (restartPolicy Never).
    """
    meta = _meta(pod)
    current = await kube.get(PODS, meta["name"], namespace=meta["namespace"])
    statuses = current.get("status", {}).get("containerStatuses") or [{}]
    running = statuses[0].get("state", {}).get("running") or {}
    now = _now(at)
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": running.get("startedAt", now),
        "finishedAt": now,
        "containerID": f"containerd://{secrets.token_hex(32)}",
    }
    if message is not None:
        terminated["message"] = message
    return await _pod_status(
        kube,
        current,
        {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [
                _condition("PodReadyToStartContainers", "False", at=now),
                _condition("Ready", "False", reason="PodCompleted", at=now),
                _condition("ContainersReady", "False", reason="PodCompleted", at=now),
            ],
            "containerStatuses": [
                {
                    "name": _container_name(current),
                    "image": _image(current),
                    "imageID": f"{_image(current)}@sha256:{'0' * 64}",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {"terminated": terminated},
                }
            ],
        },
    )


async def mark_disrupted(
    kube: ClusterClient,
    pod: Mapping[str, Any],
    *,
    reason: str = "TerminationByKubelet",
    message: str = SPOT_MESSAGE,
    exit_code: int = 143,
    delete: bool = False,
    at: datetime.datetime | None = None,
) -> Obj:
    """A spot interruption: DisruptionTarget=True, the container killed, phase Failed.

    ``delete=True`` then removes the pod, as happens when Karpenter drains and deletes the node.
    Other real reasons: DeletionByTaintManager, EvictionByEvictionAPI, PreemptionByScheduler.
    """
    now = _now(at)
    await _pod_status(
        kube,
        pod,
        {
            "conditions": [
                _condition("DisruptionTarget", "True", reason=reason, message=message, at=now)
            ]
        },
    )
    result = await mark_terminated(kube, pod, exit_code=exit_code, reason="Error", at=at)
    if delete:
        meta = _meta(pod)
        await kube.delete(PODS, meta["name"], namespace=meta["namespace"])
    return result


# -- the Job controller: Job status ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PodOutcome:
    """What the Job controller reads from one finished pod."""

    name: str
    succeeded: bool
    exit_code: int | None
    disrupted: bool


def _outcome(pod: Mapping[str, Any]) -> PodOutcome | None:
    status = pod.get("status", {})
    phase = status.get("phase")
    if phase not in ("Succeeded", "Failed"):
        return None
    exit_code = None
    for container in status.get("containerStatuses") or []:
        terminated = container.get("state", {}).get("terminated")
        if terminated is not None:
            exit_code = terminated.get("exitCode")
    disrupted = any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return PodOutcome(_meta(pod)["name"], phase == "Succeeded", exit_code, disrupted)


def _policy_action(
    job: Mapping[str, Any], pod: Mapping[str, Any], outcome: PodOutcome
) -> tuple[str, int | None]:
    """The first matching podFailurePolicy rule's action (FailJob/Ignore/Count) and its index."""
    rules = job.get("spec", {}).get("podFailurePolicy", {}).get("rules") or []
    conditions = pod.get("status", {}).get("conditions") or []
    for index, rule in enumerate(rules):
        on_exit = rule.get("onExitCodes")
        if on_exit is not None and outcome.exit_code is not None:
            values = set(on_exit.get("values") or [])
            inside = outcome.exit_code in values
            if (on_exit.get("operator") == "In") == inside:
                return str(rule["action"]), index
        for pattern in rule.get("onPodConditions") or []:
            for condition in conditions:
                if condition.get("type") == pattern.get("type") and condition.get(
                    "status"
                ) == pattern.get("status", "True"):
                    return str(rule["action"]), index
    return "Count", None


async def sync_job(
    kube: ClusterClient,
    job: Mapping[str, Any],
    *,
    at: datetime.datetime | None = None,
) -> Obj:
    """Write the Job's status from its pods as the Job controller does.

    Counts active, succeeded and failed pods (pods failed by a podFailurePolicy ``Ignore`` rule,
    such as spot interruptions, are not counted), and when the Job is done sets
    SuccessCriteriaMet + Complete, or FailureTarget + Failed with reason PodFailurePolicy
    (a ``FailJob`` rule) or BackoffLimitExceeded (failed > backoffLimit). It does not create
    replacement pods: the test calls :func:`create_pod_for_job` again when it wants one.
    """
    meta = _meta(job)
    current = await kube.get(JOBS, meta["name"], namespace=meta["namespace"])
    status = current.get("status") or {}
    if _finished(status):
        return current
    now = _now(at)
    pods = await pods_of_job(kube, current)
    active = succeeded = failed = 0
    fail_job: str | None = None
    for pod in pods:
        outcome = _outcome(pod)
        if outcome is None:
            active += 1
            continue
        if outcome.succeeded:
            succeeded += 1
            continue
        action, index = _policy_action(current, pod, outcome)
        if action == "Ignore":
            continue
        failed += 1
        if action == "FailJob" and fail_job is None:
            fail_job = (
                f"Container {_container_name(pod)} for pod {meta['namespace']}/{outcome.name}"
                f" failed with exit code {outcome.exit_code} matching FailJob rule at index {index}"
            )
    update: dict[str, Any] = {
        "active": active,
        "succeeded": succeeded,
        "failed": failed,
        "terminating": 0,
        "ready": sum(1 for p in pods if _ready(p)),
        "uncountedTerminatedPods": {},
    }
    if pods and not status.get("startTime"):
        update["startTime"] = now
    backoff_limit = int(current.get("spec", {}).get("backoffLimit", 6))
    completions = int(current.get("spec", {}).get("completions", 1) or 1)
    conditions: list[dict[str, Any]] = []
    if succeeded >= completions:
        update.update(active=0, completionTime=now)
        conditions = [
            _condition("SuccessCriteriaMet", "True", reason="CompletionsReached",
                       message="Reached expected number of succeeded pods", at=now),
            _condition("Complete", "True", reason="CompletionsReached",
                       message="Reached expected number of succeeded pods", at=now),
        ]  # fmt: skip
    elif fail_job is not None:
        conditions = _failed_conditions("PodFailurePolicy", fail_job, now)
    elif failed > backoff_limit:
        conditions = _failed_conditions(
            "BackoffLimitExceeded", "Job has reached the specified backoff limit", now
        )
    if conditions:
        update["conditions"] = _merge_conditions(status.get("conditions") or [], conditions)
    return await kube.patch_status(JOBS, meta["name"], update, namespace=meta["namespace"])


def _failed_conditions(reason: str, message: str, now: str) -> list[dict[str, Any]]:
    return [
        _condition("FailureTarget", "True", reason=reason, message=message, at=now),
        _condition("Failed", "True", reason=reason, message=message, at=now),
    ]


def _ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def _finished(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


async def fail_job(
    kube: ClusterClient,
    job: Mapping[str, Any],
    *,
    reason: str = "DeadlineExceeded",
    message: str = "Job was active longer than specified deadline",
    at: datetime.datetime | None = None,
) -> Obj:
    """Fail the Job outright, as the controller does on activeDeadlineSeconds (its pods go)."""
    meta = _meta(job)
    current = await kube.get(JOBS, meta["name"], namespace=meta["namespace"])
    now = _now(at)
    for pod in await pods_of_job(kube, current):
        if _outcome(pod) is None:
            await kube.delete(PODS, _meta(pod)["name"], namespace=meta["namespace"])
    status = current.get("status") or {}
    update = {
        "active": 0,
        "failed": int(status.get("failed", 0)) + int(status.get("active", 0)),
        "conditions": _merge_conditions(
            status.get("conditions") or [], _failed_conditions(reason, message, now)
        ),
    }
    return await kube.patch_status(JOBS, meta["name"], update, namespace=meta["namespace"])


async def set_job_suspended(
    kube: ClusterClient,
    job: Mapping[str, Any],
    suspended: bool,
    *,
    at: datetime.datetime | None = None,
) -> Obj:
    """The Suspended condition the controller writes when ``spec.suspend`` flips."""
    meta = _meta(job)
    current = await kube.get(JOBS, meta["name"], namespace=meta["namespace"])
    now = _now(at)
    condition = (
        _condition("Suspended", "True", reason="JobSuspended", message="Job suspended", at=now)
        if suspended
        else _condition("Suspended", "False", reason="JobResumed", message="Job resumed", at=now)
    )
    update: dict[str, Any] = {
        "conditions": _merge_conditions(
            (current.get("status") or {}).get("conditions") or [], [condition]
        )
    }
    if suspended:
        update["active"] = 0
        for pod in await pods_of_job(kube, current):
            if _outcome(pod) is None:
                await kube.delete(PODS, _meta(pod)["name"], namespace=meta["namespace"])
    return await kube.patch_status(JOBS, meta["name"], update, namespace=meta["namespace"])


def condition(obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of ``type_`` in ``obj.status.conditions``, or None."""
    if obj is None:
        return None
    for item in obj.get("status", {}).get("conditions") or []:
        if item.get("type") == type_:
            found: Mapping[str, Any] = item
            return found
    return None
