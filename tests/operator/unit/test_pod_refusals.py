"""The Job controller's word that it cannot create a Job's pod (its FailedCreate Event): read
from the Event, kept by the inventory for the job that owns the Job, and shown by the status
as a warning while no pod of that Job has started since."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import pytest

from compose_api import models
from compose_operator import inventory, status
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_inventory import _cj, _job
from tests.operator.unit.test_status import JOB, NODES, at, job, pod, scheduled, ts

Reason = models.Reason
QUOTA = (
    'pods "portrait-080e0235-0-x1" is forbidden: exceeded quota: gpus, requested: '
    "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: "
    "requests.nvidia.com/gpu=4"
)


def failed_create(
    job_name: str = JOB,
    *,
    message: str = f"Error creating: {QUOTA}",
    seconds: float = 8,
    namespace: str = "studio",
    **fields: Any,
) -> dict[str, Any]:
    """A FailedCreate Event as the Job controller's recorder posts it (core/v1)."""
    body: dict[str, Any] = {
        "metadata": {"name": f"{job_name}.1", "namespace": namespace},
        "involvedObject": {"kind": "Job", "namespace": namespace, "name": job_name},
        "reason": "FailedCreate",
        "message": message,
        "type": "Warning",
        "lastTimestamp": ts(seconds),
    }
    body.update(fields)
    # As the watch decodes it: its strings equal the operator's literals but are not them.
    decoded: dict[str, Any] = json.loads(json.dumps(body))
    return decoded


# -- reading the Event --------------------------------------------------------------------------


def test_a_failed_create_is_read_without_the_recorders_prefixes() -> None:
    refusal = status.read_refusal(failed_create())
    assert refusal == status.Refusal(JOB, QUOTA, at(8))
    combined = failed_create(message=f"(combined from similar events): Error creating: {QUOTA}")
    assert status.read_refusal(combined) == status.Refusal(JOB, QUOTA, at(8))


@pytest.mark.parametrize(
    "change",
    [
        # Other reasons and kinds, sorting before and after the ones read.
        {"reason": "SuccessfulCreate"},
        {"reason": "BackoffLimitExceeded"},
        {"involvedObject": {"kind": "ReplicaSet", "namespace": "studio", "name": JOB}},
        {"involvedObject": {"kind": "CronJob", "namespace": "studio", "name": JOB}},
        {"involvedObject": {"kind": "Job", "namespace": "studio"}},  # no name
        {"lastTimestamp": None},  # and no eventTime, no creationTimestamp: undated
    ],
)
def test_other_events_are_no_refusal(change: dict[str, Any]) -> None:
    assert status.read_refusal(failed_create(**change)) is None


def test_an_event_without_its_last_timestamp_is_dated_by_its_event_time_or_creation() -> None:
    by_event_time = failed_create(lastTimestamp=None, eventTime="2026-01-01T00:00:09.000000Z")
    assert status.read_refusal(by_event_time) == status.Refusal(JOB, QUOTA, at(9))
    created = failed_create(lastTimestamp=None)
    created["metadata"]["creationTimestamp"] = ts(7)
    assert status.read_refusal(created) == status.Refusal(JOB, QUOTA, at(7))


def test_the_pod_each_try_names_is_left_out_so_that_the_same_answer_reads_the_same() -> None:
    tries = [
        f'Error creating: Pod "{JOB}-{suffix}" is invalid: must be less than or equal to 1'
        for suffix in ("bngp4", "x67zb")
    ]
    read = [status.read_refusal(failed_create(message=text)) for text in tries]
    assert (
        read[0]
        == read[1]
        == status.Refusal(JOB, f'Pod "{JOB}-" is invalid: must be less than or equal to 1', at(8))
    )
    # Only a pod of this Job is shortened, and only a whole generated name.
    other = f'Error creating: Pod "other-0-bngp4" and "{JOB}-bngp4x" stay'
    kept = status.read_refusal(failed_create(message=other))
    assert kept is not None and kept.message == other.removeprefix("Error creating: ")


def test_a_refusal_is_a_value_the_inventory_hands_out_unchanged() -> None:
    refusal = status.read_refusal(failed_create())
    assert refusal is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        refusal.message = "changed"  # type: ignore[misc]
    assert hash(refusal) == hash(status.Refusal(JOB, QUOTA, at(8)))


def test_a_long_answer_is_cut_to_what_the_status_keeps() -> None:
    long = "x" * (status.REFUSAL_CHARS + 1)
    refusal = status.read_refusal(failed_create(message=f"Error creating: {long}"))
    assert refusal is not None and refusal.message == "x" * status.REFUSAL_CHARS


# -- the inventory ------------------------------------------------------------------------------


def _store() -> inventory.Inventory:
    store = inventory.Inventory()
    store.put(_cj("quota"))
    store.put_child("job", _job("quota"), deleted=False)
    return store


def test_a_refusal_is_kept_for_the_job_that_owns_the_job() -> None:
    store = _store()
    assert store.record_refusal(failed_create("quota-0")) == "uid-quota"
    assert store.refusals["uid-quota"] == status.Refusal("quota-0", QUOTA, at(8))
    # The same Event again (a resync) is no news; a later one is, and replaces it.
    assert store.record_refusal(failed_create("quota-0")) is None
    later = failed_create("quota-0", message="Error creating: later", seconds=20)
    assert store.record_refusal(later) == "uid-quota"
    assert store.refusals["uid-quota"].message == "later"
    # An older one, coming late, changes nothing.
    assert store.record_refusal(failed_create("quota-0", seconds=10)) is None
    assert store.refusals["uid-quota"].message == "later"
    # Another answer within the same second (timestamps have one-second resolution) is news:
    # the watch hands them on in order.
    same_second = failed_create("quota-0", message="Error creating: same second", seconds=20)
    assert store.record_refusal(same_second) == "uid-quota"
    assert store.refusals["uid-quota"].message == "same second"


def test_a_refusal_for_a_job_not_ours_or_finished_is_not_kept() -> None:
    store = _store()
    assert store.record_refusal(failed_create("someone-elses-0")) is None
    assert store.record_refusal(failed_create("quota-0", namespace="elsewhere")) is None
    assert store.record_refusal({"reason": "FailedCreate"}) is None
    assert store.refusals == {}
    store.finish("uid-quota")
    assert store.record_refusal(failed_create("quota-0")) is None
    assert store.refusals == {}


@pytest.mark.parametrize("end", ["finish", "forget"])
def test_a_refusal_goes_with_its_job(end: str) -> None:
    store = _store()
    store.record_refusal(failed_create("quota-0"))
    getattr(store, end)("uid-quota")
    assert "uid-quota" not in store.refusals


# -- the status ---------------------------------------------------------------------------------


def _compute(
    tmp_path: pathlib.Path,
    pods: list[dict[str, Any]],
    seconds: float,
    refusal: status.Refusal | None,
    previous: status.Outcome | None = None,
) -> status.Outcome:
    cj = make_cj()
    if previous is not None:
        cj = cj.model_copy(update={"status": previous.status})
    return status.compute(
        cj,
        job(),
        pods,
        now=at(seconds),
        settings=make_settings(tmp_path),
        seed=1,
        nodes=NODES,
        refusal=refusal,
    )


def started(outcome: status.Outcome) -> tuple[str, str, str]:
    found = next(c for c in outcome.status.conditions if c.type == "Started")
    return str(found.status), found.reason, found.message


def test_a_job_with_no_pod_shows_the_refusal_as_a_warning(tmp_path: pathlib.Path) -> None:
    # The Event's Job name equals the Job's, as read from the API: not the same object.
    outcome = _compute(tmp_path, [], 10, status.Refusal("".join(JOB), QUOTA, at(8)))
    message = f"job {JOB} cannot create its pod: {QUOTA}"
    assert started(outcome) == ("True", Reason.POD_CREATE_FAILED, message)
    assert outcome.status.phase == models.Phase.STARTING
    assert [t.reason for t in outcome.transitions if t.warning] == [Reason.POD_CREATE_FAILED]
    event = status.event_for(models.CompositionJobStatus(), outcome)
    assert event is not None and (event.type, event.reason) == ("Warning", "PodCreateFailed")


@pytest.mark.parametrize("other_job", ["portrait-080e0235-1", "a-earlier-job-0"])
def test_a_refusal_of_another_job_is_not_shown(tmp_path: pathlib.Path, other_job: str) -> None:
    # Another attempt's Job (an edit before the start made a new one), whichever way it sorts.
    outcome = _compute(tmp_path, [], 10, status.Refusal(other_job, QUOTA, at(8)))
    assert started(outcome) == ("True", Reason.JOB_CREATED, f"job {JOB} created")


def test_once_a_pod_exists_the_refusal_is_over(tmp_path: pathlib.Path) -> None:
    refusal = status.Refusal(JOB, QUOTA, at(8))
    refused = _compute(tmp_path, [], 10, refusal)
    pending = pod("p0", 12, node="gpu-1", conditions=[scheduled(12)])
    outcome = _compute(tmp_path, [pending], 13, refusal, refused)
    assert started(outcome)[1] == Reason.IMAGE_PULLING
    # Cleared: the news that ends a warning is a transition of its own.
    assert outcome.transitions and not any(t.warning for t in outcome.transitions)


def test_a_pod_that_started_after_the_refusal_ends_it_even_once_gone(
    tmp_path: pathlib.Path,
) -> None:
    refusal = status.Refusal(JOB, QUOTA, at(8))
    running = pod(
        "p0", 12, phase="Running", node="gpu-1", conditions=[scheduled(12)],
        state={"running": {"startedAt": ts(13)}},
    )  # fmt: skip
    # As read from the API: the pod's Job name equals the refusal's, not the same object.
    running["metadata"]["labels"]["job-name"] = "".join(JOB)
    ran = _compute(tmp_path, [running], 14, refusal)
    assert ran.status.attempts[0].start_time == at(13)
    # Its pod gone (deleted by hand): the old refusal is not news again.
    gone = _compute(tmp_path, [], 20, refusal, ran)
    assert started(gone)[1] != Reason.POD_CREATE_FAILED
    # A pod that started within the refusal's second was created after it.
    assert started(_compute(tmp_path, [], 20, status.Refusal(JOB, "then", at(13)), ran))[1] == (
        Reason.JOB_CREATED
    )
    # A refusal after that start (the replacement pod is refused) is shown.
    again = _compute(tmp_path, [], 21, status.Refusal(JOB, "again", at(20)), ran)
    assert started(again) == (
        "True",
        Reason.POD_CREATE_FAILED,
        f"job {JOB} cannot create its pod: again",
    )


def test_a_refused_pod_past_the_start_deadline_fails_the_job_with_the_refusal(
    tmp_path: pathlib.Path,
) -> None:
    deadline = make_cj().spec.execution.start_deadline_seconds
    outcome = _compute(tmp_path, [], 5 + deadline + 1, status.Refusal(JOB, QUOTA, at(8)))
    failed = next(c for c in outcome.status.conditions if c.type == "Failed")
    assert failed.reason == Reason.POD_CREATE_FAILED
    assert failed.message == (
        f"no pod running {deadline}s after the job started: job {JOB} cannot create its pod: "
        + QUOTA
    )
    assert outcome.stop_job


@pytest.mark.parametrize("other_job", ["a-earlier-job-0", "z-earlier-job-0"])
def test_only_a_pod_of_the_refused_job_ends_its_refusal(
    tmp_path: pathlib.Path, other_job: str
) -> None:
    # An attempt of another Job of the job (an earlier one) started after the refusal: it says
    # nothing of whether this Job can create its pod.
    other = models.Attempt(
        index=0,
        job_name=other_job,
        pod_name=f"{other_job}-x",
        start_time=at(9),
        outcome=models.AttemptOutcome.INTERRUPTED,
    )
    earlier = status.Outcome(models.CompositionJobStatus(attempts=[other]), [])
    outcome = _compute(tmp_path, [], 10, status.Refusal(JOB, QUOTA, at(8)), earlier)
    assert started(outcome)[1] == Reason.POD_CREATE_FAILED
