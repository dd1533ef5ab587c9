"""Exit code 0 is success only with a result to hand out: a termination message that is not
JSON, was cut at the kubelet's 4,096-byte limit, breaks the contract or carries no result makes
the job Failed with reason ResultUnreadable, and the message says what was wrong."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from compose_api import contract, models
from compose_operator import status
from tests.operator.unit.test_builders import make_cj, make_settings
from tests.operator.unit.test_status import at, cond, job, pod, report, scheduled, terminated

LIMIT = contract.TERMINATION_MESSAGE_LIMIT


def oversized_report() -> str:
    """A valid termination message one byte over the kubelet's limit (to_json would shorten
    it; an image that writes its own JSON might not)."""
    valid = json.loads(report(contract.ExitCode.OK, result=True))
    base = len(json.dumps(valid, separators=(",", ":")).encode())
    valid["message"] = "x" * (LIMIT + 1 - base)
    text = json.dumps(valid, separators=(",", ":"))
    assert len(text.encode()) == LIMIT + 1
    return text


def exited_zero(message: str | None, *, phase: str = "Succeeded") -> dict[str, Any]:
    return pod(
        "p1",
        6,
        phase=phase,
        node="gpu-1",
        conditions=[scheduled(8)],
        state=terminated(0, 20, 60, message),
    )


def finish(tmp_path: pathlib.Path, *pods: dict[str, Any], complete: bool = True) -> status.Outcome:
    child = job(cond("Complete", "CompletionsReached")) if complete else job()
    return status.compute(
        make_cj(), child, list(pods), now=at(61), settings=make_settings(tmp_path), seed=42
    )


def failed(outcome: status.Outcome) -> models.Condition:
    assert outcome.status.phase == models.Phase.FAILED
    assert outcome.status.result is None
    found = next(c for c in outcome.status.conditions if c.type == "Failed")
    assert found.reason == "ResultUnreadable"
    assert not any(c.type == "Succeeded" for c in outcome.status.conditions)
    return found


def test_a_message_just_over_the_limit_is_cut_by_the_kubelet_and_fails(
    tmp_path: pathlib.Path,
) -> None:
    cut = oversized_report().encode()[:LIMIT].decode(errors="ignore")
    outcome = finish(tmp_path, exited_zero(cut))
    found = failed(outcome)
    assert "cut at the kubelet's 4096-byte limit" in found.message
    assert outcome.status.attempts[0].outcome == models.AttemptOutcome.FAILED
    assert outcome.status.attempts[0].exit_code == 0
    assert any(t.reason == "ResultUnreadable" and t.warning for t in outcome.transitions)


def test_a_whole_message_over_the_limit_is_still_read() -> None:
    # Only the kubelet cuts; a message that arrives whole (and valid) is read.
    assert status.unreadable_result({"message": oversized_report()}) is None


def test_a_message_that_is_not_json_fails(tmp_path: pathlib.Path) -> None:
    found = failed(finish(tmp_path, exited_zero("Traceback (most recent call last): ...")))
    assert found.message.startswith("the termination message is not JSON")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (None, "without a termination message"),
        ("", "without a termination message"),
        ('{"exitCode": "zero"}', "does not follow the contract: exitCode"),
        ("[" * 4000, "nested too deeply"),
        (
            contract.TerminationMessage(exit_code=0, reason="Completed").to_json(),
            "carries no result",
        ),
    ],
)
def test_other_unreadable_messages_name_the_problem(
    message: str | None, expected: str, tmp_path: pathlib.Path
) -> None:
    assert expected in failed(finish(tmp_path, exited_zero(message))).message


def test_the_failure_is_decided_before_the_job_controller_marks_the_job_complete(
    tmp_path: pathlib.Path,
) -> None:
    outcome = finish(tmp_path, exited_zero("not json", phase="Running"), complete=False)
    failed(outcome)
    assert outcome.terminal


def test_a_completed_job_whose_pods_are_gone_has_no_result_to_report(
    tmp_path: pathlib.Path,
) -> None:
    found = failed(finish(tmp_path))
    assert "no pod with its result is left" in found.message


def test_a_readable_result_still_succeeds(tmp_path: pathlib.Path) -> None:
    outcome = finish(tmp_path, exited_zero(report(contract.ExitCode.OK, result=True)))
    assert outcome.status.phase == models.Phase.SUCCEEDED
    assert outcome.status.result is not None


def test_a_broken_message_past_the_limit_counts_as_cut(tmp_path: pathlib.Path) -> None:
    # A runtime that keeps more than the kubelet's 4,096 bytes: still cut, not merely "not JSON".
    cut = oversized_report()[:LIMIT] + "x" * 500  # inside the message string: no JSON
    assert len(cut.encode()) > LIMIT
    found = failed(finish(tmp_path, exited_zero(cut)))
    assert f"({len(cut.encode())} bytes kept)" in found.message
