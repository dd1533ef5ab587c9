"""Retention plans: when a finished CompositionJob is deleted, and which result object goes."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from compose_api import models
from compose_operator import retention
from tests.operator.conftest import cj_body

DONE = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
UID = "0f6c0d6e-1111-2222-3333-444455556666"
RESULT = f"s3://results/out/ns/look/{UID}/result.png"


def _job(
    *,
    phase: str | None = "Succeeded",
    completion: datetime.datetime | None = DONE,
    result: str | None = RESULT,
    conditions: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> models.CompositionJob:
    body = cj_body("look", "ns", **spec)
    body["metadata"]["uid"] = UID
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if completion is not None:
        status["completionTime"] = completion.isoformat()
    if result is not None:
        status["result"] = {
            "s3Uri": result, "sha256": "0" * 64, "width": 8, "height": 8, "seed": 1,
        }  # fmt: skip
    body["status"] = status
    return models.CompositionJob.model_validate(body)


SETTINGS = retention.RetentionSettings(default_ttl_seconds_after_finished=3600)


def test_a_finished_job_is_due_its_ttl_after_completion_and_not_a_second_before() -> None:
    job = _job(ttlSecondsAfterFinished=600)

    early = retention.plan(job, now=DONE + datetime.timedelta(seconds=599), settings=SETTINGS)
    on_time = retention.plan(job, now=DONE + datetime.timedelta(seconds=600), settings=SETTINGS)

    assert early.delete_at == on_time.delete_at == DONE + datetime.timedelta(seconds=600)
    assert not early.due
    assert early.wait_seconds(DONE + datetime.timedelta(seconds=599)) == 1.0
    assert on_time.due
    assert on_time.wait_seconds(DONE + datetime.timedelta(seconds=600)) == 0.0


def test_the_spec_wins_over_the_operator_default_even_when_zero() -> None:
    now = DONE + datetime.timedelta(seconds=1)
    assert retention.plan(_job(ttlSecondsAfterFinished=0), now=now, settings=SETTINGS).due
    default = retention.plan(_job(), now=now, settings=SETTINGS)
    assert default.delete_at == DONE + datetime.timedelta(seconds=3600)
    assert not default.due


def test_without_any_ttl_a_job_is_kept() -> None:
    keep = retention.RetentionSettings(default_ttl_seconds_after_finished=None)
    decided = retention.plan(_job(), now=DONE + datetime.timedelta(days=999), settings=keep)
    assert (decided.delete_at, decided.due) == (None, False)
    assert decided.wait_seconds(DONE) is None


@pytest.mark.parametrize("phase", [None, "Pending", "Queued", "Running", "Suspended"])
def test_a_job_not_finished_is_never_due(phase: str | None) -> None:
    job = _job(phase=phase, ttlSecondsAfterFinished=0)
    decided = retention.plan(job, now=DONE + datetime.timedelta(days=30), settings=SETTINGS)
    assert (decided.finished_at, decided.due) == (None, False)


def test_a_failed_job_without_completion_time_counts_from_its_failed_condition() -> None:
    failed_at = DONE - datetime.timedelta(minutes=5)
    conditions = [
        {"type": "Accepted", "status": "True", "reason": "Valid",
         "lastTransitionTime": (DONE - datetime.timedelta(hours=1)).isoformat()},
        {"type": "Failed", "status": "True", "reason": "InvalidSpec",
         "lastTransitionTime": failed_at.isoformat()},
    ]  # fmt: skip
    job = _job(phase="Failed", completion=None, result=None, conditions=conditions)

    decided = retention.plan(job, now=DONE, settings=SETTINGS)

    assert decided.finished_at == failed_at
    assert decided.delete_at == failed_at + datetime.timedelta(seconds=3600)


def test_the_result_goes_only_when_set_and_due() -> None:
    removing = retention.RetentionSettings(
        default_ttl_seconds_after_finished=60, delete_results=True
    )
    late = DONE + datetime.timedelta(seconds=60)

    assert retention.plan(_job(), now=late, settings=removing).result == (
        "results", f"out/ns/look/{UID}/result.png",
    )  # fmt: skip
    assert (
        retention.plan(_job(), now=late - datetime.timedelta(seconds=1), settings=removing).result
        is None
    )
    keeping = retention.RetentionSettings(default_ttl_seconds_after_finished=60)
    assert retention.plan(_job(), now=late, settings=keeping).result is None


@pytest.mark.parametrize(
    "uri",
    [
        "s3://results/out/ns/other/" + UID + "/result.png",  # another job's folder
        "s3://results/out/other-ns/look/" + UID + "/result.png",
        "s3://results/out/ns/look/" + UID,  # the folder itself, not an object in it
        "s3://results/out/ns/look/" + UID + "/../../x/result.png",
        "s3://results/out//ns/look/" + UID + "/result.png",
        "https://results/out/ns/look/" + UID + "/result.png",
        "s3:///ns/look/" + UID + "/result.png",
    ],
)
def test_a_result_outside_the_jobs_own_folder_is_never_removed(uri: str) -> None:
    assert retention.owned_result(_job(), uri) is None


def test_settings_from_the_environment_name_the_variable() -> None:
    found = retention.RetentionSettings.from_environment(
        {retention.TTL_VARIABLE: "120", retention.DELETE_RESULTS_VARIABLE: "true"}
    )
    assert (found.default_ttl_seconds_after_finished, found.delete_results) == (120, True)
    assert retention.RetentionSettings.from_environment({}).default_ttl_seconds_after_finished == (
        retention.DEFAULT_TTL_SECONDS
    )
    keep = retention.RetentionSettings.from_environment({retention.TTL_VARIABLE: "none"})
    assert keep.default_ttl_seconds_after_finished is None
    with pytest.raises(ValueError, match=retention.TTL_VARIABLE):
        retention.RetentionSettings.from_environment({retention.TTL_VARIABLE: "-5"})
    with pytest.raises(ValueError, match=retention.DELETE_RESULTS_VARIABLE):
        retention.RetentionSettings.from_environment({retention.DELETE_RESULTS_VARIABLE: "maybe"})


def test_removing_results_needs_an_s3_deleter() -> None:
    async def delete_job(namespace: str, name: str, uid: str) -> None:
        raise AssertionError("not called")

    removing = retention.RetentionSettings(delete_results=True)
    with pytest.raises(ValueError, match=retention.DELETE_RESULTS_VARIABLE):
        retention.Retention(removing, delete_job=delete_job)
