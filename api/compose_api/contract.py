"""The contract between the operator and the inference image.

The operator hands each pod one JSON *job document* (environment variable ``COMPOSE_JOB_DOCUMENT``)
and reads back the pod's exit code and the JSON *termination message* the inference image writes
to ``/dev/termination-log``. Both sides import this module, so they cannot drift apart; the exit
code table is also what the child Job's ``podFailurePolicy`` is built from.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import pydantic
from pydantic import alias_generators

from compose_api import models, profiles

JOB_DOCUMENT_ENV = "COMPOSE_JOB_DOCUMENT"
TERMINATION_LOG_PATH = "/dev/termination-log"
# The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


class ExitCode(enum.IntEnum):
    """Exit codes of the inference image. The operator maps each to a condition reason."""

    OK = 0
    INTERNAL = 1  # anything unexpected: retried
    INPUT_REJECTED = 10  # not an image, truncated, too large, wrong format, forbidden address
    NO_FACE = 11  # no face found in the person photo
    INPUT_UNAVAILABLE = 12  # missing object, unreachable URL after retries
    UNKNOWN_PROFILE = 13  # the job names a profile the image does not know
    MODEL_LOAD_FAILED = 20  # weights missing, corrupt, or failed their checksum: retried
    UPLOAD_FAILED = 21  # the result could not be stored: retried
    OUT_OF_GPU_MEMORY = 22  # CUDA out of memory: retried (another node may have a free GPU)
    IDENTITY_CHECK_FAILED = 23  # the profile's minimum identity similarity was never reached
    CONTENT_REJECTED = 24  # the profile's safety check flagged an input or the generated image
    # Pool workers only: the attempt ran past spec.execution.activeDeadlineSeconds (counted from
    # the worker's accept) and was stopped; retried, as a Job pod stopped at its deadline is.
    DEADLINE_EXCEEDED = 25

    @property
    def reason(self) -> models.Reason:
        return _REASONS[self]

    @property
    def retryable(self) -> bool:
        """False for the codes that mean the input itself is bad: a retry would fail again."""
        return self not in PERMANENT_EXIT_CODES


_REASONS = {
    ExitCode.OK: models.Reason.COMPLETED,
    ExitCode.INTERNAL: models.Reason.CONTAINER_FAILED,
    ExitCode.INPUT_REJECTED: models.Reason.INPUT_REJECTED,
    ExitCode.NO_FACE: models.Reason.NO_FACE_FOUND,
    ExitCode.INPUT_UNAVAILABLE: models.Reason.INPUT_UNAVAILABLE,
    ExitCode.UNKNOWN_PROFILE: models.Reason.UNKNOWN_PROFILE,
    ExitCode.MODEL_LOAD_FAILED: models.Reason.MODEL_LOAD_FAILED,
    ExitCode.UPLOAD_FAILED: models.Reason.UPLOAD_FAILED,
    ExitCode.OUT_OF_GPU_MEMORY: models.Reason.OUT_OF_GPU_MEMORY,
    ExitCode.IDENTITY_CHECK_FAILED: models.Reason.IDENTITY_CHECK_FAILED,
    ExitCode.CONTENT_REJECTED: models.Reason.CONTENT_REJECTED,
    ExitCode.DEADLINE_EXCEEDED: models.Reason.DEADLINE_EXCEEDED,
}

# Reserved for bad input: the child Job fails at once on these (podFailurePolicy FailJob).
# CONTENT_REJECTED is one: the same inputs and seed make the same image, so a retry would be
# flagged again, and retrying on another seed until the check passes would be a way around it.
PERMANENT_EXIT_CODES = frozenset(
    {
        ExitCode.INPUT_REJECTED,
        ExitCode.NO_FACE,
        ExitCode.INPUT_UNAVAILABLE,
        ExitCode.UNKNOWN_PROFILE,
        ExitCode.IDENTITY_CHECK_FAILED,
        ExitCode.CONTENT_REJECTED,
    }
)


def reason_for_exit_code(code: int) -> models.Reason:
    try:
        return ExitCode(code).reason
    except ValueError:
        return models.Reason.CONTAINER_FAILED


class _Wire(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        extra="ignore",
        use_enum_values=True,
    )

    def to_json(self) -> str:
        return json.dumps(
            self.model_dump(mode="json", by_alias=True, exclude_none=True),
            separators=(",", ":"),
            sort_keys=True,
        )


class JobIdentity(_Wire):
    name: str
    namespace: str
    uid: str
    attempt: int = 0


class JobDocument(_Wire):
    """Everything one pod needs to run one job, with no API access of its own."""

    version: int = 1
    job: JobIdentity
    spec: models.CompositionJobSpec
    profile: profiles.ModelProfile
    seed: int = pydantic.Field(ge=0, le=2**32 - 1, description="The seed chosen for this job.")
    output_key_prefix: str = pydantic.Field(
        description="Key prefix the result is written under (ends with '/')."
    )


class TerminationMessage(_Wire):
    """What the inference image reports when it exits, successful or not."""

    version: int = 1
    exit_code: int
    reason: str
    message: str = ""
    result: models.Result | None = None
    timings: models.Timings | None = None

    def to_json(self) -> str:
        """Compact JSON that fits the kubelet's 4096-byte limit (the message is shortened)."""
        text = super().to_json()
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        excess = len(text.encode()) - TERMINATION_MESSAGE_LIMIT + 16
        shorter = self.model_copy(update={"message": self.message[:-excess] + "…"})
        return _Wire.to_json(shorter)

    @classmethod
    def parse(cls, text: str | None) -> TerminationMessage | None:
        """The message from a container's ``terminated.message``, or None when absent/garbled."""
        if not text:
            return None
        try:
            data: Any = json.loads(text)
            return cls.model_validate(data)
        except (ValueError, RecursionError, pydantic.ValidationError):
            return None  # RecursionError: JSON nested deeper than the parser's recursion limit


def job_document(
    cj: models.CompositionJob,
    profile: profiles.ModelProfile,
    *,
    attempt: int,
    seed: int,
    bucket: str,
    output_key_prefix: str,
) -> JobDocument:
    """The resolved job document of one attempt: the spec with its bucket filled in, the seed and
    the key prefix chosen. The operator builds it for a Job's pod; a pool worker builds the same
    document from the job and its ``status.assignment`` (:func:`assigned_document`)."""
    spec = cj.spec.model_copy(
        update={"output": cj.spec.output.model_copy(update={"bucket": bucket})}
    )
    return JobDocument(
        job=JobIdentity(
            name=cj.metadata.name,
            namespace=cj.metadata.namespace or "default",
            uid=cj.metadata.uid or "",
            attempt=attempt,
        ),
        spec=spec,
        profile=profile,
        seed=seed,
        output_key_prefix=output_key_prefix,
    )


def assigned_document(cj: models.CompositionJob, profile: profiles.ModelProfile) -> JobDocument:
    """Pool mode: the job document of the attempt ``cj.status.assignment`` hands to a worker."""
    assignment = cj.status.assignment
    if assignment is None:
        raise ValueError("status.assignment: empty, the job is not assigned to a worker")
    return job_document(
        cj,
        profile,
        attempt=assignment.attempt,
        seed=assignment.seed,
        bucket=assignment.output_bucket,
        output_key_prefix=assignment.output_key_prefix,
    )
