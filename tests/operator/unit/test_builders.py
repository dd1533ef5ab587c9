"""The child Job built for a CompositionJob, pinned against expected YAML."""

from __future__ import annotations

import copy
import datetime
import json
import pathlib
import re
from typing import Any

import pytest

from compose_api import contract, models
from compose_operator import builders, names, settings
from tests.operator.conftest import PROFILES_YAML, cj_body
from tests.operator.unit import expected_yaml

UID = "0b9d4c1e-2f1a-4a57-9f0e-6c1d2e3f4a5b"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"


def make_cj(name: str = "portrait", **spec: Any) -> models.CompositionJob:
    body = cj_body(name, namespace="studio", **spec)
    body["metadata"].update(
        uid=UID, generation=1, creationTimestamp="2026-01-01T00:00:00Z", resourceVersion="7"
    )
    return models.CompositionJob.model_validate(body)


def make_settings(tmp_path: pathlib.Path, **env: str) -> settings.OperatorSettings:
    path = tmp_path / "profiles.yaml"
    path.write_text(PROFILES_YAML)
    values = {
        "COMPOSE_PROFILES_PATH": str(path),
        "COMPOSE_OUTPUT_BUCKET": "results-bucket",
        "COMPOSE_OUTPUT_PREFIX": "compose",
        "COMPOSE_INFERENCE_IMAGE": "registry.example.com/compose-inference:1.0.0",
        "COMPOSE_AWS_REGION": "eu-west-1",
    }
    values.update(env)
    return settings.from_environment(values)


def _document(job: dict[str, Any]) -> dict[str, Any]:
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    value = next(item["value"] for item in env if item["name"] == contract.JOB_DOCUMENT_ENV)
    document: dict[str, Any] = json.loads(value)
    return document


def check_job(name: str, job: dict[str, Any]) -> None:
    """Pin the Job, with its JSON job document pinned apart (as YAML, to be readable)."""
    expected_yaml.check(f"{name}_document", _document(job))
    readable = copy.deepcopy(job)
    for item in readable["spec"]["template"]["spec"]["containers"][0]["env"]:
        if item["name"] == contract.JOB_DOCUMENT_ENV:
            item["value"] = f"<{name}_document.yaml as compact JSON>"
    expected_yaml.check(name, readable)


def test_default_job(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path)
    cj = make_cj()
    job = builders.build_job(cj, config.profiles["instantid-sdxl"], config, 0, 42)
    check_job("job_default", job)
    # The fields that matter, asserted on their own so that refreshing the snapshot cannot
    # bless a regression in them.
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"]["values"] == sorted(contract.PERMANENT_EXIT_CODES)
    assert pod["activeDeadlineSeconds"] == 600  # the spec's activeDeadlineSeconds, per pod
    assert spec["activeDeadlineSeconds"] == 60 + 600 * (2 + 1 + builders.INTERRUPTION_ALLOWANCE)
    assert spec["suspend"] is False
    assert pod["restartPolicy"] == "Never"
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "name": "portrait",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    document = _document(job)
    assert document["seed"] == 42
    assert document["spec"]["output"]["bucket"] == "results-bucket"


def test_spot_kueue_job_with_cache_and_endpoint(tmp_path: pathlib.Path) -> None:
    config = make_settings(
        tmp_path,
        COMPOSE_MODEL_CACHE="/var/cache/models",
        COMPOSE_S3_ENDPOINT_URL="http://minio.storage:9000",
        COMPOSE_INFERENCE_SERVICE_ACCOUNT="composer",
        COMPOSE_JOB_TTL_SECONDS="120",
    )
    cj = make_cj(
        execution={
            "capacityType": "spot",
            "queueName": "gpu-queue",
            "priorityClassName": "batch-high",
            "backoffLimit": 1,
            "startDeadlineSeconds": 300,
            "activeDeadlineSeconds": 900,
        },
        output={"bucket": "own-bucket", "prefix": "team/", "format": "webp"},
    )
    job = builders.build_job(cj, config.profiles["instantid-sdxl"], config, 2, 7)
    check_job("job_spot_kueue", job)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    assert spec["suspend"] is True  # Kueue unsuspends it on admission
    assert job["metadata"]["labels"][names.KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert job["metadata"]["name"].endswith("-2")  # the attempt
    assert spec["ttlSecondsAfterFinished"] == 120
    assert spec["backoffLimit"] == 1
    assert pod["activeDeadlineSeconds"] == 900
    assert spec["activeDeadlineSeconds"] == 300 + 900 * (1 + 1 + builders.INTERRUPTION_ALLOWANCE)
    assert pod["priorityClassName"] == "batch-high"
    # On spot, a pod lost to an interruption must be replaced without spending a retry: the
    # DisruptionTarget rule comes first, before the exit codes that fail the Job.
    ignore, fail = spec["podFailurePolicy"]["rules"]
    assert ignore == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert (fail["action"], fail["onExitCodes"]["operator"]) == ("FailJob", "In")
    assert fail["onExitCodes"]["values"] == sorted(contract.PERMANENT_EXIT_CODES)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["serviceAccountName"] == "composer"
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    spot = [e for term in terms for e in term["matchExpressions"] if e["key"] != INSTANCE_TYPE]
    assert spot == [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]},
        {"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": ["SPOT"]},
    ]
    assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["volumes"][2] == {
        "name": "model-cache",
        "hostPath": {"path": "/var/cache/models", "type": "DirectoryOrCreate"},
    }
    assert job["metadata"]["ownerReferences"][0]["uid"] == UID
    document = _document(job)
    assert document["seed"] == 7
    assert document["spec"]["output"]["bucket"] == "own-bucket"
    assert document["outputKeyPrefix"] == f"team/studio/portrait/{UID}/"


def test_an_explicit_seed_of_zero_is_kept() -> None:
    assert builders.choose_seed(make_cj(params={"seed": 0})) == 0
    assert builders.choose_seed(make_cj(params={"seed": 1})) == 1


@pytest.mark.parametrize("attempt", [0, 1])
def test_a_suspended_composition_gets_a_suspended_job_on_every_attempt(
    attempt: int, tmp_path: pathlib.Path
) -> None:
    # Attempt 1 is the rebuild after a spec change: it must not start a held job.
    config = make_settings(tmp_path)
    cj = make_cj(suspend=True)
    job = builders.build_job(cj, config.profiles["instantid-sdxl"], config, attempt, 42)
    assert job["spec"]["suspend"] is True
    running = builders.build_job(make_cj(), config.profiles["instantid-sdxl"], config, attempt, 1)
    assert running["spec"]["suspend"] is False


def test_job_document_round_trips_through_the_contract(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path)
    job = builders.build_job(make_cj(), config.profiles["instantid-sdxl"], config, 0, 42)
    document = contract.JobDocument.model_validate(_document(job))
    assert document.spec.output.bucket == "results-bucket"  # resolved from the settings
    assert document.output_key_prefix == f"compose/studio/portrait/{UID}/"
    assert document.seed == 42
    assert document.profile.name == "instantid-sdxl"


def test_pod_failure_policy_follows_the_exit_code_table(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path)
    job = builders.build_job(make_cj(), config.profiles["instantid-sdxl"], config, 0, 1)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    fail = rules[1]
    assert fail["action"] == "FailJob"
    assert set(fail["onExitCodes"]["values"]) == {int(c) for c in contract.PERMANENT_EXIT_CODES}
    assert job["spec"]["podReplacementPolicy"] == "Failed"


def test_cpu_profile_requests_no_gpu_and_keeps_on_demand(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path)
    job = builders.build_job(make_cj(), config.profiles["smoke"], config, 0, 1)
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"]
    assert pod["containers"][0]["image"] == "registry.example.com/compose-inference:smoke"
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [t["matchExpressions"][0]["values"] for t in terms["nodeSelectorTerms"]] == [
        ["on-demand"],
        ["ON_DEMAND"],
    ]


def test_missing_bucket_names_the_field(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path, COMPOSE_OUTPUT_BUCKET="")
    with pytest.raises(builders.BuildError, match=r"spec\.output\.bucket"):
        builders.build_job(make_cj(), config.profiles["instantid-sdxl"], config, 0, 1)


def test_seed_is_stable_when_not_given() -> None:
    cj = make_cj(params={})
    assert builders.choose_seed(cj) == builders.choose_seed(cj)
    other = cj.model_copy(update={"metadata": cj.metadata.model_copy(update={"uid": "other"})})
    assert builders.choose_seed(other) != builders.choose_seed(cj)
    assert 0 <= builders.choose_seed(cj) < 2**32


@pytest.mark.parametrize(
    "name",
    ["a", "portrait", "x" * 63, "y" * 253, "Weird.Name.With.Dots", "a" * 40 + "." + "b" * 40],
)
def test_job_names_are_valid_dns_labels(name: str) -> None:
    result = names.job_name(name, UID, 3)
    assert len(result) <= 63
    assert names.job_name(name, UID, 3) == result
    assert result.endswith("-3")
    assert result != names.job_name(name, "another-uid", 3)
    assert re.fullmatch(models.DNS_LABEL_PATTERN, result)
    label = names.label_value(name)
    assert len(label) <= 63


def test_creation_time_does_not_matter_to_the_job(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path)
    first = make_cj()
    later = first.model_copy(
        update={
            "metadata": first.metadata.model_copy(
                update={"creation_timestamp": datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)}
            )
        }
    )
    profile = config.profiles["instantid-sdxl"]
    assert builders.build_job(first, profile, config, 0, 1) == builders.build_job(
        later, profile, config, 0, 1
    )


def test_spec_hash_follows_params_and_execution_only() -> None:
    base = make_cj()
    assert builders.spec_hash(base.spec) == builders.spec_hash(make_cj().spec)
    assert builders.spec_hash(make_cj(suspend=True).spec) == builders.spec_hash(base.spec)
    assert builders.spec_hash(make_cj(params={"seed": 42, "steps": 31}).spec) != (
        builders.spec_hash(base.spec)
    )
    changed = make_cj(execution={"startDeadlineSeconds": 60, "activeDeadlineSeconds": 601})
    assert builders.spec_hash(changed.spec) != builders.spec_hash(base.spec)


def test_the_job_deadline_leaves_room_for_spot_interruptions(tmp_path: pathlib.Path) -> None:
    """Interrupted pods do not count against backoffLimit; they must not eat the retries' time."""
    cj = make_cj(
        execution={"backoffLimit": 0, "startDeadlineSeconds": 60, "activeDeadlineSeconds": 600}
    )
    config = make_settings(tmp_path)
    job = builders.build_job(cj, config.profiles["instantid-sdxl"], config, 0, 1)
    pod_deadline = job["spec"]["template"]["spec"]["activeDeadlineSeconds"]
    assert pod_deadline == 600
    # One counted attempt plus the allowance of interrupted ones, after the start deadline.
    assert job["spec"]["activeDeadlineSeconds"] >= 60 + 600 * (1 + builders.INTERRUPTION_ALLOWANCE)


def test_an_explicit_capacity_type_wins_over_the_profiles_default(tmp_path: pathlib.Path) -> None:
    # The smoke profile defaults to on-demand; only an ask of "any" takes that default.
    config = make_settings(tmp_path)
    smoke = config.profiles["smoke"]
    spot = builders.build_job(make_cj(execution={"capacityType": "spot"}), smoke, config, 0, 1)
    terms = spot["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert [t["matchExpressions"][0]["values"] for t in terms] == [["spot"], ["SPOT"]]
    assert builders.inference_capacity("on-demand", smoke) == "on-demand"
    assert builders.inference_capacity("any", smoke) == "on-demand"
    assert builders.inference_capacity("any", config.profiles["instantid-sdxl"]) == "any"


def test_the_job_deadline_counts_every_retry(tmp_path: pathlib.Path) -> None:
    # backoffLimit 4: 1 + 4 counted attempts and the interruption allowance, after the start
    # deadline (a limit whose bits overlap the allowance's, so `|` or `^` for `+` would show).
    cj = make_cj(
        execution={"backoffLimit": 4, "startDeadlineSeconds": 60, "activeDeadlineSeconds": 600}
    )
    config = make_settings(tmp_path)
    job = builders.build_job(cj, config.profiles["instantid-sdxl"], config, 0, 1)
    allowance = builders.INTERRUPTION_ALLOWANCE
    assert job["spec"]["activeDeadlineSeconds"] == 60 + 600 * (4 + 1 + allowance)


def test_a_derived_seed_spans_32_bits() -> None:
    # A derived seed takes 4 bytes of the uid's digest: over 64 uids, one at least reaches past
    # 24 bits (each misses with odds 1/256), and none reaches 32.
    seeds = [
        builders.choose_seed(
            make_cj(params={}).model_copy(
                update={"metadata": make_cj().metadata.model_copy(update={"uid": f"uid-{i}"})}
            )
        )
        for i in range(64)
    ]
    assert max(seeds) >= 2**24
    assert all(0 <= seed < 2**32 for seed in seeds)
