"""Pure builders of the child objects of a CompositionJob: the batch/v1 Job and its job document.

Called by :mod:`compose_operator.reconciler` before it creates a Job; no I/O here, so the unit
tests pin the output against expected YAML. The Job carries everything the pod needs (the JSON
job document in one environment variable), so no other API object is created per job.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

from compose_api import contract, models, profiles
from compose_operator import names
from compose_operator.settings import OperatorSettings

SPOT_LABELS = {
    "karpenter.sh/capacity-type": {"spot": "spot", "on-demand": "on-demand"},
    "eks.amazonaws.com/capacityType": {"spot": "SPOT", "on-demand": "ON_DEMAND"},
}
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
RUN_AS = 10001
MODEL_CACHE_MOUNT = "/models"
SEED_ANNOTATION = f"{models.GROUP}/seed"
SPEC_HASH_ANNOTATION = f"{models.GROUP}/spec-hash"
# OTEL_SERVICE_NAME of the Job pods and of the pool workers (tracing_env).
INFERENCE_SERVICE_NAME = "compose-inference"
WORKER_SERVICE_NAME = "compose-worker"

# Spot interruptions absorbed within the Job's overall deadline (see build_job).
INTERRUPTION_ALLOWANCE = 3


class BuildError(ValueError):
    """The job cannot be built as configured; the message names the field at fault."""


def choose_seed(cj: models.CompositionJob) -> int:
    """``spec.params.seed``, or one derived from the uid: stable across retries and restarts."""
    if cj.spec.params.seed is not None:
        return cj.spec.params.seed
    uid = cj.metadata.uid or cj.metadata.name
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:4], "big")


def spec_hash(spec: models.CompositionJobSpec) -> str:
    """A digest of the parts of the spec that may change before the job starts (params and
    execution; inputs, output and profile are immutable, suspend acts on the Job itself)."""
    data = spec.model_dump(mode="json", by_alias=True, include={"params", "execution"})
    if data["execution"].get("pool") is None:
        # Fields added later hash as before while unset: an upgrade must not look like an edit.
        data["execution"].pop("pool", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def output_bucket(cj: models.CompositionJob, settings: OperatorSettings) -> str:
    bucket = cj.spec.output.bucket or settings.output_bucket
    if not bucket:
        raise BuildError(
            "spec.output.bucket: empty, and the operator has no default (COMPOSE_OUTPUT_BUCKET)"
        )
    return bucket


def output_key_prefix(cj: models.CompositionJob, settings: OperatorSettings) -> str:
    """``<prefix><namespace>/<name>/<uid>/``; the spec's prefix wins over the operator's."""
    prefix = cj.spec.output.prefix or settings.output_prefix
    meta = cj.metadata
    return posixpath.join(prefix, meta.namespace or "default", meta.name, meta.uid or "", "")


def build_job_document(
    cj: models.CompositionJob,
    profile: profiles.ModelProfile,
    settings: OperatorSettings,
    attempt: int,
    seed: int,
) -> contract.JobDocument:
    """The JSON document the pod reads from ``COMPOSE_JOB_DOCUMENT``; the bucket is resolved."""
    return contract.job_document(
        cj,
        profile,
        attempt=attempt,
        seed=seed,
        bucket=output_bucket(cj, settings),
        output_key_prefix=output_key_prefix(cj, settings),
    )


def _node_affinity(profile: profiles.ModelProfile, capacity: str) -> dict[str, Any] | None:
    base: list[dict[str, Any]] = []
    if profile.placement.instance_types:
        base.append(
            {
                "key": INSTANCE_TYPE_LABEL,
                "operator": "In",
                "values": list(profile.placement.instance_types),
            }
        )
    # "any" sorts before "on-demand" and "spot", the only other values (CapacityType), so `<=`
    # for `==` cannot change the result.
    if capacity == models.CapacityType.ANY:  # pragma: no mutate: *_Eq_LtE
        terms = [{"matchExpressions": base}] if base else []
    else:
        # Terms are ORed: nodes from Karpenter carry one label, EKS managed node groups the other.
        terms = [
            {
                "matchExpressions": [
                    *base,
                    {"key": key, "operator": "In", "values": [values[capacity]]},
                ]
            }
            for key, values in SPOT_LABELS.items()
        ]
    if not terms:
        return None
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    }


def _resources(profile: profiles.ModelProfile) -> dict[str, Any]:
    res = profile.resources
    requests: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    if res.ephemeral_storage:
        requests["ephemeral-storage"] = res.ephemeral_storage
        limits["ephemeral-storage"] = res.ephemeral_storage
    if res.gpu:
        requests["nvidia.com/gpu"] = res.gpu
        limits["nvidia.com/gpu"] = res.gpu
    return {"requests": requests, "limits": limits}


def _cache_volume(settings: OperatorSettings) -> dict[str, Any]:
    cache = settings.model_cache
    if cache is None:
        return {"name": "model-cache", "emptyDir": {}}
    if cache.startswith("/"):
        return {"name": "model-cache", "hostPath": {"path": cache, "type": "DirectoryOrCreate"}}
    return {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache}}


def storage_env(settings: OperatorSettings) -> list[dict[str, str]]:
    """What every inference container needs besides its work: region, S3 endpoint, model cache."""
    env = [
        {"name": "AWS_REGION", "value": settings.aws_region},
        {"name": "AWS_DEFAULT_REGION", "value": settings.aws_region},
        {"name": "COMPOSE_MODEL_CACHE", "value": MODEL_CACHE_MOUNT},
        {"name": "HF_HOME", "value": f"{MODEL_CACHE_MOUNT}/huggingface"},
        {"name": "HOME", "value": "/tmp"},
    ]
    if settings.s3_endpoint_url:
        env.append({"name": "COMPOSE_S3_ENDPOINT_URL", "value": settings.s3_endpoint_url})
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": settings.s3_endpoint_url})
    return env


def tracing_env(settings: OperatorSettings, service_name: str) -> list[dict[str, str]]:
    """The operator's OpenTelemetry export settings for an inference container, under its own
    service name; nothing when tracing is off."""
    if not settings.tracing_env:
        return []
    env = [{"name": name, "value": value} for name, value in sorted(settings.tracing_env.items())]
    return [*env, {"name": "OTEL_SERVICE_NAME", "value": service_name}]


def _env(document: contract.JobDocument, settings: OperatorSettings) -> list[dict[str, str]]:
    return [
        {"name": contract.JOB_DOCUMENT_ENV, "value": document.to_json()},
        *storage_env(settings),
        *tracing_env(settings, INFERENCE_SERVICE_NAME),
    ]


def inference_capacity(capacity_type: str, profile: profiles.ModelProfile) -> str:
    """The capacity type asked for, or the profile's default when the ask is 'any'."""
    # "any" sorts before "on-demand" and "spot", the only other values (CapacityType), so `<=`
    # for `==` cannot change the result.
    if (
        capacity_type == models.CapacityType.ANY  # pragma: no mutate: *_Eq_LtE
        and profile.placement.capacity_type
    ):
        return str(profile.placement.capacity_type)
    return capacity_type


def inference_pod_spec(
    profile: profiles.ModelProfile,
    settings: OperatorSettings,
    container: dict[str, Any],
    *,
    capacity: str,
    service_account: str,
    priority_class_name: str | None,
    restart_policy: str,
    grace_seconds: int,
) -> dict[str, Any]:
    """The pod spec shared by a Job's pod and a pool's worker: GPU placement, hardening, volumes.

    ``container`` gets the image pull policy, resources, security context and mounts here."""
    container.setdefault("imagePullPolicy", "IfNotPresent")
    container["resources"] = _resources(profile)
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    container["volumeMounts"] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT},
    ]
    pod_spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "serviceAccountName": service_account,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
            _cache_volume(settings),
        ],
    }
    tolerations = [dict(item) for item in profile.placement.tolerations]
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if profile.placement.node_selector:
        pod_spec["nodeSelector"] = dict(profile.placement.node_selector)
    affinity = _node_affinity(profile, capacity)
    if affinity:
        pod_spec["affinity"] = affinity
    if priority_class_name:
        pod_spec["priorityClassName"] = priority_class_name
    return pod_spec


def _pod_failure_policy() -> dict[str, Any]:
    permanent = sorted(int(code) for code in contract.PERMANENT_EXIT_CODES)
    return {
        "rules": [
            # First: a pod lost to node disruption (spot interruption, drain) is replaced without
            # counting against backoffLimit, whatever its exit code was.
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            # Bad input fails the Job at once: a retry would fail again.
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": names.CONTAINER_NAME,
                    "operator": "In",
                    "values": permanent,
                },
            },
        ]
    }


def build_job(
    cj: models.CompositionJob,
    profile: profiles.ModelProfile,
    settings: OperatorSettings,
    attempt: int,
    seed: int,
) -> dict[str, Any]:
    """The child batch/v1 Job of one attempt of ``cj``. Raises BuildError naming the field."""
    meta = cj.metadata
    if not meta.uid:
        raise BuildError("metadata.uid: empty; the object does not come from the API server")
    execution = cj.spec.execution
    document = build_job_document(cj, profile, settings, attempt, seed)
    labels = names.labels(meta.name, meta.uid, attempt, profile.name)
    job_labels = dict(labels)
    if execution.queue_name:
        job_labels[names.KUEUE_QUEUE_LABEL] = execution.queue_name
    container: dict[str, Any] = {
        "name": names.CONTAINER_NAME,
        "image": profile.image or settings.inference_image,
        "env": _env(document, settings),
        "terminationMessagePath": contract.TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec = inference_pod_spec(
        profile,
        settings,
        container,
        capacity=inference_capacity(str(execution.capacity_type), profile),
        service_account=settings.inference_service_account,
        priority_class_name=execution.priority_class_name,
        restart_policy="Never",
        grace_seconds=30,
    )
    # Each pod may run this long. The Job as a whole gets room for the start deadline, the
    # counted retries and up to INTERRUPTION_ALLOWANCE spot interruptions, which podFailurePolicy
    # does not count against backoffLimit but which do spend the Job's wall-clock time.
    pod_spec["activeDeadlineSeconds"] = execution.active_deadline_seconds
    job_deadline = execution.start_deadline_seconds + execution.active_deadline_seconds * (
        execution.backoff_limit + 1 + INTERRUPTION_ALLOWANCE
    )

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.job_name(meta.name, meta.uid, attempt),
            "namespace": meta.namespace or "default",
            "labels": job_labels,
            "annotations": {SEED_ANNOTATION: str(seed), SPEC_HASH_ANNOTATION: spec_hash(cj.spec)},
            "ownerReferences": [
                {
                    "apiVersion": models.API_VERSION,
                    "kind": models.KIND,
                    "name": meta.name,
                    "uid": meta.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "backoffLimit": execution.backoff_limit,
            "activeDeadlineSeconds": job_deadline,
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            # With a podFailurePolicy only "Failed" is allowed: a replacement pod is created once
            # the disrupted one has fully terminated, so two GPU pods never overlap.
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": _pod_failure_policy(),
            "completions": 1,
            "parallelism": 1,
            "suspend": bool(execution.queue_name) or cj.spec.suspend,
            "template": {
                "metadata": {
                    "labels": labels,
                    # Karpenter must not consolidate a node away under a running GPU job.
                    "annotations": {"karpenter.sh/do-not-disrupt": "true"},
                },
                "spec": pod_spec,
            },
        },
    }
