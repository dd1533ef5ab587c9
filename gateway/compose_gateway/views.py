"""What clients see of a CompositionJob: pure functions from the API object to response bodies.

Called by the HTTP handlers (``GET /jobs/{id}``, ``GET /jobs``, the wait mode of
``POST /generate``) and by the callback loop, which sends the same summary a waiting client
gets. The result URL is passed in (``storage`` makes it), so nothing here does I/O.

Client-facing ``status`` words: ``pending``, ``queued``, ``starting``, ``running``, ``suspended``
while the job is alive, then ``success`` (the original API's word) or ``error``.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pydantic
from pydantic import alias_generators

from compose_api import models
from compose_gateway import naming

SUCCESS_MESSAGE = "Image composition completed successfully"

STATUS_WORDS: dict[models.Phase, str] = {
    models.Phase.PENDING: "pending",
    models.Phase.QUEUED: "queued",
    models.Phase.STARTING: "starting",
    models.Phase.RUNNING: "running",
    models.Phase.SUSPENDED: "suspended",
    models.Phase.SUCCEEDED: "success",
    models.Phase.FAILED: "error",
}

# Failures caused by what the client sent: the wait mode answers 422, as for a bad request.
CLIENT_REASONS = frozenset(
    {
        models.Reason.INPUT_REJECTED,
        models.Reason.INPUT_UNAVAILABLE,
        models.Reason.NO_FACE_FOUND,
        models.Reason.IDENTITY_CHECK_FAILED,
        models.Reason.CONTENT_REJECTED,  # the profile's safety check flagged an input or the image
        models.Reason.INVALID_SPEC,
    }
)
# Failures that are a matter of time: 504.
TIMEOUT_REASONS = frozenset(
    {models.Reason.DEADLINE_EXCEEDED, models.Reason.START_DEADLINE_EXCEEDED}
)
# Anything else that fails (model load, upload, out of memory, lost Job, ...) is a 502.


class _View(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel, populate_by_name=True
    )

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Accepted(_View):
    """``202`` from ``POST /generate``: the job exists; poll ``statusUrl`` or await a callback."""

    job_id: str
    status: str
    status_url: str


class Success(_View):
    """The original API's response, unchanged: ``{imageUrl, status: "success", message}``."""

    image_url: str
    status: str = "success"
    message: str = SUCCESS_MESSAGE


class ErrorBody(_View):
    """Every error: ``status`` is ``error``; ``reason`` is a stable CamelCase word."""

    status: str = "error"
    reason: str
    message: str
    job_id: str | None = None
    errors: list[dict[str, str]] | None = None


class ConditionView(_View):
    type: str
    status: str
    reason: str
    message: str = ""
    last_transition_time: datetime.datetime


class ResultView(_View):
    image_url: str
    download_url: str | None = None
    s3_uri: str
    width: int
    height: int
    format: str | None = None
    bytes: int | None = None
    seed: int
    sha256: str
    identity_similarity: float | None = None
    reused: bool = pydantic.Field(
        default=False,
        description="True when nothing was generated: the result is a copy of an earlier job's "
        "with the same input contents, parameters, seed and format.",
    )


class CallbackView(_View):
    state: str
    attempts: int = 0


class JobView(_View):
    """``GET /jobs/{id}``: where the job is, why, how long each stage took, and the result."""

    job_id: str
    status: str
    phase: str
    reason: str | None = None
    message: str | None = None
    status_url: str
    created_at: datetime.datetime | None = None
    started_at: datetime.datetime | None = None
    completed_at: datetime.datetime | None = None
    attempts: int = 0
    queue_position: int | None = None
    conditions: list[ConditionView] = pydantic.Field(default_factory=list)
    timings: dict[str, float] | None = None
    result: ResultView | None = None
    callback: CallbackView | None = None


class JobList(_View):
    """``GET /jobs``: the caller's jobs, newest first; pass ``continue`` back for the next page."""

    items: list[JobView]
    continue_: str | None = pydantic.Field(default=None, alias="continue")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a waiting ``POST /generate`` answers once its job has ended."""

    http_status: int
    body: dict[str, Any]


def parse(obj: dict[str, Any]) -> models.CompositionJob:
    """Validate an API object into the model (the status tolerates unknown fields)."""
    return models.CompositionJob.model_validate(obj)


def phase_of(job: models.CompositionJob) -> models.Phase:
    if job.status.phase is not None:
        return models.Phase(job.status.phase)
    return models.Phase.PENDING


def is_terminal(job: models.CompositionJob) -> bool:
    return phase_of(job) in models.TERMINAL_PHASES


def status_word(job: models.CompositionJob) -> str:
    return STATUS_WORDS[phase_of(job)]


# The condition that explains each phase.
_PHASE_CONDITIONS: dict[models.Phase, models.ConditionType] = {
    models.Phase.PENDING: models.ConditionType.ACCEPTED,
    models.Phase.QUEUED: models.ConditionType.QUEUED,
    models.Phase.STARTING: models.ConditionType.STARTED,
    models.Phase.RUNNING: models.ConditionType.STARTED,
    models.Phase.SUSPENDED: models.ConditionType.SUSPENDED,
    models.Phase.SUCCEEDED: models.ConditionType.SUCCEEDED,
    models.Phase.FAILED: models.ConditionType.FAILED,
}


def reason_and_message(job: models.CompositionJob) -> tuple[str | None, str | None]:
    """The reason and message of the condition that explains the phase (Failed, Succeeded,
    Started ...), else of the newest condition that holds, else the status message."""
    conditions = job.status.conditions
    wanted = _PHASE_CONDITIONS[phase_of(job)]
    for condition in conditions:
        if condition.type == wanted:
            return condition.reason, condition.message or job.status.message
    holding = [c for c in conditions if c.status == models.ConditionStatus.TRUE]
    if holding:
        newest = max(reversed(holding), key=lambda c: c.last_transition_time)
        return newest.reason, newest.message or job.status.message
    return None, job.status.message


def status_url(job_id: str, *, base: str = "") -> str:
    return f"{base}/jobs/{job_id}"


def accepted(job: models.CompositionJob, *, base: str = "") -> Accepted:
    return Accepted(
        job_id=job.metadata.name,
        status=status_word(job),
        status_url=status_url(job.metadata.name, base=base),
    )


def job_view(
    job: models.CompositionJob,
    *,
    image_url: str | None,
    download_url: str | None = None,
    base: str = "",
) -> JobView:
    """The full view; ``image_url`` is the presigned or CDN URL of the result, when there is
    one, and ``download_url`` the presigned URL that saves it as a file."""
    reason, message = reason_and_message(job)
    status = job.status
    result = None
    if status.result is not None and image_url is not None:
        result = ResultView(
            image_url=image_url,
            download_url=download_url,
            s3_uri=status.result.s3_uri,
            width=status.result.width,
            height=status.result.height,
            format=status.result.format,
            bytes=status.result.bytes,
            seed=status.result.seed,
            sha256=status.result.sha256,
            identity_similarity=status.result.identity_similarity,
            reused=status.result.reused_from is not None,
        )
    timings = None
    if status.timings is not None:
        timings = status.timings.model_dump(by_alias=True, exclude_none=True)
    callback = None
    labels = job.metadata.labels
    if naming.CALLBACK_LABEL in labels:
        attempts = job.metadata.annotations.get(naming.CALLBACK_ATTEMPTS_ANNOTATION, "0")
        callback = CallbackView(
            state=labels[naming.CALLBACK_LABEL],
            attempts=int(attempts) if attempts.isdigit() else 0,
        )
    return JobView(
        job_id=job.metadata.name,
        status=status_word(job),
        phase=phase_of(job).value,
        reason=reason,
        message=message,
        status_url=status_url(job.metadata.name, base=base),
        created_at=job.metadata.creation_timestamp,
        started_at=status.start_time,
        completed_at=status.completion_time,
        attempts=len(status.attempts),
        queue_position=status.queue_position,
        conditions=[
            ConditionView(
                type=c.type,
                status=c.status,
                reason=c.reason,
                message=c.message,
                last_transition_time=c.last_transition_time,
            )
            for c in status.conditions
        ],
        timings=timings or None,
        result=result,
        callback=callback,
    )


def outcome(job: models.CompositionJob, *, image_url: str | None) -> Outcome:
    """The wait mode's answer for an ended job: the original success body, or a clear error."""
    phase = phase_of(job)
    reason, message = reason_and_message(job)
    if phase == models.Phase.SUCCEEDED and image_url is not None:
        return Outcome(200, Success(image_url=image_url).body())
    if phase == models.Phase.SUCCEEDED:
        error = ErrorBody(
            reason="ResultMissing",
            message="the job succeeded but reported no result object",
            job_id=job.metadata.name,
        )
        return Outcome(502, error.body())
    reason = reason or "Failed"
    if reason in CLIENT_REASONS:
        code = 422
    elif reason in TIMEOUT_REASONS:
        code = 504
    else:
        code = 502
    body = ErrorBody(
        reason=reason, message=message or "the job failed", job_id=job.metadata.name
    ).body()
    return Outcome(code, body)


def callback_payload(job: models.CompositionJob, *, image_url: str | None) -> dict[str, Any]:
    """The JSON body POSTed to a job's callback URL when it ends.

    It carries the same fields as the wait mode's answer (``imageUrl``, ``status``, ``message``)
    plus the job id, the stable reason and the completion time.
    """
    phase = phase_of(job)
    reason, message = reason_and_message(job)
    succeeded = phase == models.Phase.SUCCEEDED and image_url is not None
    body: dict[str, Any] = {
        "event": "job.succeeded" if succeeded else "job.failed",
        "jobId": job.metadata.name,
        "status": "success" if succeeded else "error",
        "message": SUCCESS_MESSAGE if succeeded else (message or "the job failed"),
        "reason": reason or phase.value,
        "phase": phase.value,
    }
    if succeeded:
        body["imageUrl"] = image_url
    if job.status.completion_time is not None:
        body["completedAt"] = job.status.completion_time.isoformat()
    return body


class Cancelled(_View):
    """``DELETE /jobs/{id}``: the job is gone (its pods are stopped by the operator)."""

    job_id: str
    status: str = "cancelled"
