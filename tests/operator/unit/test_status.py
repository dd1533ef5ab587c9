"""Status mapping: what the child Job and its pods say, turned into the CompositionJob's status,
pinned against expected YAML (one file per situation)."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import pytest

from compose_api import contract, models
from compose_operator import status
from tests.operator.unit import expected_yaml
from tests.operator.unit.test_builders import make_cj, make_settings

T0 = datetime.datetime(2026, 1, 1, 0, 0, 0, tzinfo=datetime.UTC)
JOB = "portrait-080e0235-0"
NODES = {
    "gpu-1": {
        "node.kubernetes.io/instance-type": "g5.2xlarge",
        "karpenter.sh/capacity-type": "spot",
    },
    "od-1": {
        "node.kubernetes.io/instance-type": "g5.xlarge",
        "eks.amazonaws.com/capacityType": "ON_DEMAND",
    },
}


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def ts(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(
    *conditions: dict[str, Any], suspend: bool = False, start: float | None = 5
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": JOB, "namespace": "studio", "creationTimestamp": ts(5)},
        "spec": {"suspend": suspend},
        "status": {"conditions": list(conditions)},
    }
    if start is not None:
        body["status"]["startTime"] = ts(start)
    return body


def cond(kind: str, reason: str, message: str = "", status_: str = "True") -> dict[str, Any]:
    return {"type": kind, "status": status_, "reason": reason, "message": message}


def pod(
    name: str,
    created: float,
    *,
    phase: str = "Pending",
    node: str | None = None,
    conditions: list[dict[str, Any]] | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "creationTimestamp": ts(created), "labels": {"job-name": JOB}},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "conditions": conditions or []},
    }
    if state is not None:
        body["status"]["containerStatuses"] = [{"name": "compose", "state": state}]
        body["status"]["startTime"] = ts(created + 1)
    return body


def scheduled(at_: float) -> dict[str, Any]:
    return {"type": "PodScheduled", "status": "True", "lastTransitionTime": ts(at_)}


def terminated(code: int, started: float, finished: float, message: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "exitCode": code,
        "startedAt": ts(started),
        "finishedAt": ts(finished),
        "reason": "Completed" if code == 0 else "Error",
    }
    if message is not None:
        body["message"] = message
    return {"terminated": body}


def report(code: contract.ExitCode, message: str = "", *, result: bool = False) -> str:
    return contract.TerminationMessage(
        exit_code=int(code),
        reason=str(code.reason),
        message=message,
        result=models.Result(
            s3_uri="s3://results-bucket/compose/studio/portrait/u/result.png",
            sha256="ab" * 32,
            width=1024,
            height=1024,
            format=models.ImageFormat.PNG,
            seed=42,
        )
        if result
        else None,
        timings=models.Timings(fetch=0.5, model_load=20.0, inference=9.0, upload=0.25),
    ).to_json()


def succeeded_pod() -> dict[str, Any]:
    return pod(
        "p1",
        6,
        phase="Succeeded",
        node="gpu-1",
        conditions=[scheduled(8)],
        state=terminated(0, 20, 60, report(contract.ExitCode.OK, result=True)),
    )


SITUATIONS: dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]], float]] = {
    "created": (job(start=None), [], 6),
    "scheduling": (job(), [pod("p1", 6)], 7),
    "unschedulable": (
        job(),
        [pod("p1", 6, conditions=[cond("PodScheduled", "Unschedulable", "0/3 nodes", "False")])],
        20,
    ),
    "image_pulling": (
        job(),
        [
            pod(
                "p1",
                6,
                node="gpu-1",
                conditions=[scheduled(8)],
                state={"waiting": {"reason": "ContainerCreating"}},
            )
        ],
        20,
    ),
    "image_pull_back_off": (
        job(),
        [
            pod(
                "p1",
                6,
                node="gpu-1",
                conditions=[scheduled(8)],
                state={"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}},
            )
        ],
        20,
    ),
    "running": (
        job(),
        [
            pod(
                "p1",
                6,
                phase="Running",
                node="gpu-1",
                conditions=[scheduled(8)],
                state={"running": {"startedAt": ts(20)}},
            )
        ],
        30,
    ),
    "succeeded": (job(cond("Complete", "CompletionsReached")), [succeeded_pod()], 61),
    "succeeded_before_job_condition": (job(), [succeeded_pod()], 61),
    "no_face": (
        job(),
        [
            pod(
                "p1",
                6,
                phase="Failed",
                node="gpu-1",
                conditions=[scheduled(8)],
                state=terminated(
                    11, 20, 30, report(contract.ExitCode.NO_FACE, "no face in person")
                ),
            )
        ],
        31,
    ),
    "retrying_after_model_load_failure": (
        job(),
        [
            pod(
                "p1",
                6,
                phase="Failed",
                node="gpu-1",
                conditions=[scheduled(8)],
                state=terminated(
                    20, 20, 30, report(contract.ExitCode.MODEL_LOAD_FAILED, "bad sha")
                ),
            )
        ],
        31,
    ),
    "backoff_limit_after_model_load_failures": (
        job(cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")),
        [
            pod(
                "p1",
                6,
                phase="Failed",
                node="gpu-1",
                conditions=[scheduled(8)],
                state=terminated(
                    20, 20, 30, report(contract.ExitCode.MODEL_LOAD_FAILED, "bad sha")
                ),
            ),
            pod(
                "p2",
                40,
                phase="Failed",
                node="gpu-1",
                conditions=[scheduled(41)],
                state=terminated(
                    20, 42, 50, report(contract.ExitCode.MODEL_LOAD_FAILED, "bad sha")
                ),
            ),
        ],
        51,
    ),
    "crashed_without_message": (
        job(cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")),
        [
            pod(
                "p1",
                6,
                phase="Failed",
                node="gpu-1",
                conditions=[scheduled(8)],
                state=terminated(137, 20, 30, None),
            )
        ],
        31,
    ),
    "spot_interrupted": (
        job(),
        [
            pod(
                "p1",
                6,
                phase="Failed",
                node="gpu-1",
                conditions=[
                    scheduled(8),
                    cond("DisruptionTarget", "TerminationByKubelet", "node shutdown"),
                ],
                state=terminated(143, 20, 30, None),
            )
        ],
        31,
    ),
    "retried_after_spot_then_succeeded": (
        job(cond("Complete", "CompletionsReached")),
        [
            pod(
                "p0",
                1,
                phase="Failed",
                node="gpu-1",
                conditions=[scheduled(2), cond("DisruptionTarget", "TerminationByKubelet")],
                state=terminated(143, 3, 4, None),
            ),
            pod(
                "p1",
                6,
                phase="Succeeded",
                node="od-1",
                conditions=[scheduled(8)],
                state=terminated(0, 20, 60, report(contract.ExitCode.OK, result=True)),
            ),
        ],
        61,
    ),
    "deadline_exceeded": (
        job(cond("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")),
        [],
        700,
    ),
    "start_deadline_exceeded": (job(), [pod("p1", 6)], 66),
    "start_deadline_while_unschedulable": (
        job(),
        [pod("p1", 6, conditions=[cond("PodScheduled", "Unschedulable", "0/3 nodes", "False")])],
        66,
    ),
    "waiting_for_kueue": (job(suspend=True, start=None), [], 10),
}


# What matters in each snapshot, asserted on its own (so that refreshing the expected YAML
# cannot silently bless a regression): phase, the deciding condition, whether the Job is
# stopped, whether a result is reported, and the attempts' outcomes.
FACTS: dict[str, tuple[str, tuple[str, str], bool, bool, list[str]]] = {
    "created": ("Starting", ("Started", "JobCreated"), False, False, []),
    "scheduling": ("Starting", ("Started", "Scheduling"), False, False, ["Pending"]),
    "unschedulable": ("Starting", ("Started", "Unschedulable"), False, False, ["Pending"]),
    "image_pulling": ("Starting", ("Started", "ImagePulling"), False, False, ["Pending"]),
    "image_pull_back_off": ("Starting", ("Started", "ImagePullBackOff"), False, False, ["Pending"]),
    "running": ("Running", ("Started", "Running"), False, False, ["Running"]),
    "succeeded": ("Succeeded", ("Succeeded", "Completed"), False, True, ["Succeeded"]),
    "succeeded_before_job_condition": (
        "Succeeded", ("Succeeded", "Completed"), False, True, ["Succeeded"]
    ),
    "no_face": ("Failed", ("Failed", "NoFaceFound"), False, False, ["Failed"]),
    "retrying_after_model_load_failure": (
        "Starting", ("Started", "Retrying"), False, False, ["Failed"]
    ),
    "backoff_limit_after_model_load_failures": (
        "Failed", ("Failed", "ModelLoadFailed"), False, False, ["Failed", "Failed"]
    ),
    "crashed_without_message": (
        "Failed", ("Failed", "BackoffLimitExceeded"), False, False, ["Failed"]
    ),
    "spot_interrupted": ("Starting", ("Started", "SpotInterrupted"), False, False, ["Interrupted"]),
    "retried_after_spot_then_succeeded": (
        "Succeeded", ("Succeeded", "Completed"), False, True, ["Interrupted", "Succeeded"]
    ),
    "deadline_exceeded": ("Failed", ("Failed", "DeadlineExceeded"), False, False, []),
    "start_deadline_exceeded": (
        "Failed", ("Failed", "StartDeadlineExceeded"), True, False, ["Pending"]
    ),
    "start_deadline_while_unschedulable": (
        "Failed", ("Failed", "Unschedulable"), True, False, ["Pending"]
    ),
    "waiting_for_kueue": ("Queued", ("Queued", "WaitingForAdmission"), False, False, []),
}  # fmt: skip


def test_every_situation_has_its_facts() -> None:
    assert set(FACTS) == set(SITUATIONS)


@pytest.mark.parametrize("situation", sorted(SITUATIONS))
def test_status_from_the_cluster(situation: str, tmp_path: pathlib.Path) -> None:
    child, pods, now = SITUATIONS[situation]
    spec: dict[str, Any] = {}
    if situation == "waiting_for_kueue":
        spec["execution"] = {"queueName": "gpu-queue", "startDeadlineSeconds": 60}
    cj = make_cj(**spec)
    assert child is not None
    outcome = status.compute(
        cj, child, pods, now=at(now), settings=make_settings(tmp_path), seed=42, nodes=NODES
    )
    expected_yaml.check(
        f"status_{situation}",
        {
            "status": outcome.status.to_api(),
            "stopJob": outcome.stop_job,
            "events": [f"{t.type}={t.status} {t.reason}" for t in outcome.transitions],
        },
    )
    phase, (kind, reason), stop_job, has_result, outcomes = FACTS[situation]
    assert outcome.status.phase == phase
    deciding = next(c for c in outcome.status.conditions if c.type == kind)
    assert deciding.reason == reason
    assert outcome.stop_job is stop_job
    assert (outcome.status.result is not None) is has_result
    assert [a.outcome for a in outcome.status.attempts] == outcomes
    assert outcome.status.seed == 42
    if has_result:
        assert outcome.status.result is not None
        assert outcome.status.result.url == (
            "https://results-bucket.s3.eu-west-1.amazonaws.com/compose/studio/portrait/u/result.png"
        )


def test_rejected_and_queued_and_lost(tmp_path: pathlib.Path) -> None:
    cj = make_cj()
    rejected = status.rejected(
        cj.status, 1, models.Reason.INVALID_SPEC, "spec.params.steps: too small", now=at(1)
    )
    queued = status.waiting(cj, seed=42, queue=status.Queue(position=2, depth=5), now=at(1))
    lost = status.lost(cj, JOB, now=at(1))
    expected_yaml.check(
        "status_not_running",
        {
            "rejected": rejected.status.to_api(),
            "queued": queued.status.to_api(),
            "lost": lost.status.to_api(),
        },
    )
    assert rejected.status.phase == models.Phase.FAILED
    assert [(c.type, c.status, c.reason) for c in rejected.status.conditions] == [
        ("Accepted", "False", "InvalidSpec"),
        ("Failed", "True", "InvalidSpec"),
    ]
    assert queued.status.phase == models.Phase.QUEUED
    assert queued.status.queue_position == 2
    assert status.intent(queued.status.conditions) is None  # no Job is about to be created
    assert lost.status.phase == models.Phase.FAILED
    failed = next(c for c in lost.status.conditions if c.type == "Failed")
    assert (failed.reason, failed.message) == (
        "JobLost",
        f"job {JOB} disappeared before it finished",
    )


def test_transition_times_are_kept_while_nothing_changes(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path)
    cj = make_cj()
    running = SITUATIONS["running"]
    assert running[0] is not None
    first = status.compute(cj, running[0], running[1], now=at(30), settings=config, seed=42)
    again = status.compute(
        cj.model_copy(update={"status": first.status}),
        running[0],
        running[1],
        now=at(90),
        settings=config,
        seed=42,
    )
    assert again.transitions == []
    assert status.to_patch(again.status, first.status) is None
    assert [c.last_transition_time for c in again.status.conditions] == [
        c.last_transition_time for c in first.status.conditions
    ]
    done = status.compute(
        cj.model_copy(update={"status": first.status}),
        *SITUATIONS["succeeded"][:2],  # type: ignore[arg-type]
        now=at(120),
        settings=config,
        seed=42,
    )
    by_type = {str(c.type): c for c in done.status.conditions}
    started = by_type["Started"]
    assert started.last_transition_time == at(30)
    assert by_type["Succeeded"].last_transition_time == at(120)
    patch = status.to_patch(done.status, first.status)
    assert patch is not None
    assert patch["phase"] == "Succeeded"


def test_removed_fields_are_nulled_in_the_patch(tmp_path: pathlib.Path) -> None:
    cj = make_cj()
    queued = status.waiting(cj, seed=42, queue=status.Queue(position=1, depth=1), now=at(1))
    admitted = status.waiting(
        cj.model_copy(update={"status": queued.status}), seed=42, queue=None, now=at(2)
    )
    patch = status.to_patch(admitted.status, queued.status)
    assert patch is not None
    assert patch["queuePosition"] is None


def test_result_url_uses_the_configured_base(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path, COMPOSE_RESULT_URL_BASE="https://cdn.example.com/results/")
    assert (
        status.result_url("s3://bucket/a/b.png", config)
        == "https://cdn.example.com/results/a/b.png"
    )
    plain = make_settings(tmp_path)
    assert status.result_url("s3://bucket/a/b.png", plain) == (
        "https://bucket.s3.eu-west-1.amazonaws.com/a/b.png"
    )


def test_known_attempts_keep_their_index(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path)
    first = pod("z-first", 6, phase="Failed", node="gpu-1",
                conditions=[scheduled(6), cond("DisruptionTarget", "TerminationByKubelet")],
                state=terminated(143, 6, 6, None))  # fmt: skip
    interrupted = status.compute(
        make_cj(), job(), [first], now=at(7), settings=config, seed=42, nodes=NODES
    )
    second = pod("a-second", 6, node="gpu-1", conditions=[scheduled(6)])
    later = status.compute(
        make_cj().model_copy(update={"status": interrupted.status}),
        job(),
        [second, first],
        now=at(8),
        settings=config,
        seed=42,
    )
    assert [(a.index, a.pod_name) for a in later.status.attempts] == [
        (0, "z-first"),
        (1, "a-second"),
    ]
    assert later.status.attempt == 1
    assert {str(c.type): c.reason for c in later.status.conditions}["Started"] == "ImagePulling"


def test_an_unfinished_attempt_whose_pod_vanished_is_interrupted(tmp_path: pathlib.Path) -> None:
    config = make_settings(tmp_path)
    running = SITUATIONS["running"]
    assert running[0] is not None
    before = status.compute(
        make_cj(), running[0], running[1], now=at(30), settings=config, seed=1, nodes=NODES
    )
    after = status.compute(
        make_cj().model_copy(update={"status": before.status}),
        running[0],
        [],
        now=at(40),
        settings=config,
        seed=1,
    )
    attempt = after.status.attempts[0]
    assert attempt.outcome == models.AttemptOutcome.INTERRUPTED
    assert attempt.message == "the pod was deleted before it finished"
    assert attempt.instance_type == "g5.2xlarge"


@pytest.mark.parametrize("phase", ["Failed", "Running"])
def test_a_pod_that_succeeded_while_marked_for_disruption_keeps_its_result(phase: str) -> None:
    # The container exited 0, but the drain won the race for the pod's phase: the branch for
    # exit code 0 while the phase is not Succeeded decides, not the phase.
    raced = pod(
        "p0",
        1,
        phase=phase,
        node="gpu-1",
        conditions=[scheduled(2), cond("DisruptionTarget", "EvictionByEvictionAPI", "drain")],
        state=terminated(0, 3, 9, report(contract.ExitCode.OK, result=True)),
    )
    view = status.view_pod(raced)
    assert view.outcome == models.AttemptOutcome.SUCCEEDED
    assert view.exit_code == 0
    assert view.report is not None
    assert view.report.result is not None
    # The same pod without the exit code is the interruption it looks like.
    unfinished = pod(
        "p0",
        1,
        phase=phase,
        node="gpu-1",
        conditions=[scheduled(2), cond("DisruptionTarget", "EvictionByEvictionAPI", "drain")],
        state=terminated(143, 3, 9, None),
    )
    assert status.view_pod(unfinished).outcome == models.AttemptOutcome.INTERRUPTED


def test_the_intent_to_create_the_job_is_recorded_and_then_replaced(tmp_path: pathlib.Path) -> None:
    cj = make_cj()
    intent = status.waiting(cj, seed=42, queue=None, now=at(1), creating=JOB)
    assert intent.status.phase == models.Phase.STARTING
    recorded = status.intent(intent.status.conditions)
    assert recorded is not None
    assert (recorded.status, recorded.reason) == ("Unknown", "JobCreated")
    assert recorded.last_transition_time == at(1)
    # Queued or held by the user: nothing is about to be created.
    queued = status.waiting(cj, seed=42, queue=status.Queue(1, 1), now=at(1), creating=JOB)
    assert status.intent(queued.status.conditions) is None
    held = status.waiting(make_cj(suspend=True), seed=42, queue=None, now=at(1), creating=JOB)
    assert status.intent(held.status.conditions) is None

    created = status.compute(
        cj.model_copy(update={"status": intent.status}),
        job(start=None),
        [],
        now=at(6),
        settings=make_settings(tmp_path),
        seed=42,
    )
    assert status.intent(created.status.conditions) is None
    started = next(c for c in created.status.conditions if c.type == "Started")
    assert (started.status, started.reason, started.last_transition_time) == (
        "True",
        "JobCreated",
        at(6),
    )


def test_a_resumed_job_held_behind_the_cap_is_queued(tmp_path: pathlib.Path) -> None:
    cj = make_cj()
    outcome = status.compute(
        cj,
        job(suspend=True, start=None),
        [],
        now=at(6),
        settings=make_settings(tmp_path),
        seed=42,
        queue=status.Queue(position=2, depth=3),
    )
    assert outcome.status.phase == models.Phase.QUEUED
    assert outcome.status.queue_position == 2
    queued = next(c for c in outcome.status.conditions if c.type == "Queued")
    assert queued.reason == "WaitingForCapacity"
    assert queued.message == "waiting for a free slot in namespace studio: position 2"
