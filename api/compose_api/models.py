"""The CompositionJob custom resource as pydantic models: the one hand-written schema.

Everything else derives from this module: the CRD under ``crds/`` is generated from it
(``compose_api.crdgen``), the operator validates every object it handles into these models, and
the gateway builds CompositionJobs through them. Field names are camelCase on the wire (as the
Kubernetes API conventions ask) and snake_case in Python.

Validation lives in two places that must agree: JSON-schema constraints (types, ranges, enums,
patterns, list sizes) that the CRD carries as they are, and cross-field rules that the CRD carries
as CEL ``x-kubernetes-validations`` and that ``model_validator`` methods here repeat in Python, so
an object refused by the API server is also refused by the operator and the gateway with the same
message.
"""

from __future__ import annotations

import datetime
import enum
from typing import Annotated, Any, Literal

import pydantic
from pydantic import alias_generators

GROUP = "compose.nextunicorn.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CompositionJob"
PLURAL = "compositionjobs"
SINGULAR = "compositionjob"
# "cj" is the name the API was specified with, but kubectl resolves a short name to the built-in
# resource first, and CronJob's short name is also "cj": `kubectl get cj` lists CronJobs.
# "cjob" is the short name that reaches CompositionJobs.
SHORT_NAMES = ("cjob", "cj")
CATEGORIES = ("compose",)

# An image reference: an S3 object or an HTTPS URL. Plain http, file paths and other schemes are
# refused by the API server; local paths are allowed only by the inference image's local mode.
# No spaces or control characters: spelled as ASCII ranges, not \s, because \s means different
# things to the API server's RE2 (ASCII), pydantic's Rust regex and Python's re (Unicode).
IMAGE_URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/[^\x00-\x20\x7f]+"
    r"|https://[^\x00-\x20\x7f/$.?#][^\x00-\x20\x7f]*)$"
)
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"
PREFIX_PATTERN = r"^([A-Za-z0-9!_.*'()\-]+/)*[A-Za-z0-9!_.*'()\-]*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_CLOTHING_ITEMS = 8
MAX_URI_LENGTH = 2048


class _Model(pydantic.BaseModel):
    """Base for every API model: camelCase on the wire, unknown fields refused."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the Kubernetes API carries it: camelCase keys, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _StatusModel(_Model):
    """Status models accept fields they do not know: an older operator must not choke on a newer
    one's status during an upgrade."""

    model_config = pydantic.ConfigDict(extra="ignore")


# ---------------------------------------------------------------------------------------------
# Spec


class ClothingCategory(enum.StrEnum):
    UPPER = "upper"
    LOWER = "lower"
    DRESS = "dress"
    OUTERWEAR = "outerwear"
    SHOES = "shoes"
    ACCESSORY = "accessory"


class ImageFormat(enum.StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


class CapacityType(enum.StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"
    ANY = "any"


ImageUri = Annotated[
    str,
    pydantic.Field(
        pattern=IMAGE_URI_PATTERN,
        max_length=MAX_URI_LENGTH,
        description="An s3://bucket/key URI or an https:// URL of a JPEG, PNG or WebP image.",
    ),
]


Sha256 = Annotated[
    str | None,
    pydantic.Field(
        pattern=r"^[0-9a-f]{64}$",
        min_length=64,
        max_length=64,
        description="The SHA-256 of the image's bytes (64 lowercase hex digits), when known: the "
        "gateway sets it for the files it received. The inference image checks the bytes it "
        "fetches against it (InputRejected when they differ). Empty: hashed when fetched.",
    ),
]


class ImageRef(_Model):
    """One input image."""

    uri: ImageUri
    sha256: Sha256 = None


class ClothingItem(_Model):
    """One garment photo, with an optional category that guides where it is worn."""

    uri: ImageUri
    category: ClothingCategory | None = pydantic.Field(
        default=None,
        description="Where the garment is worn; guides the body-region mask. Empty: inferred.",
    )
    sha256: Sha256 = None


_CLOTHING_CEL: list[pydantic.JsonValue] = [
    {
        "rule": "!(self.exists(c, has(c.category) && c.category == 'dress') && "
        "self.exists(c, has(c.category) && (c.category == 'upper' || c.category == 'lower')))",
        "message": "a dress cannot be combined with upper or lower garments",
    },
]


class Inputs(_Model):
    """The three kinds of input image. Immutable once the job exists."""

    model_config = pydantic.ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "spec.inputs is immutable"},
            ],
        },
    )

    person: ImageRef = pydantic.Field(description="A photo of the person; one face must show.")
    clothing: list[ClothingItem] = pydantic.Field(
        min_length=1,
        max_length=MAX_CLOTHING_ITEMS,
        description=f"1 to {MAX_CLOTHING_ITEMS} garment photos.",
        json_schema_extra={"x-kubernetes-validations": _CLOTHING_CEL},
    )
    place: ImageRef = pydantic.Field(description="A photo of the place (the background).")

    @pydantic.field_validator("clothing")
    @classmethod
    def _dress_alone(cls, clothing: list[ClothingItem]) -> list[ClothingItem]:
        categories = {item.category for item in clothing}
        if ClothingCategory.DRESS in categories and categories & {
            ClothingCategory.UPPER,
            ClothingCategory.LOWER,
        }:
            raise ValueError("a dress cannot be combined with upper or lower garments")
        return clothing


class Output(_Model):
    """Where and how the result is stored. Immutable once the job exists."""

    model_config = pydantic.ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "spec.output is immutable"},
            ],
        },
    )

    bucket: str | None = pydantic.Field(
        default=None,
        pattern=BUCKET_PATTERN,
        min_length=3,
        max_length=63,
        description="S3 bucket name. Empty: the operator's configured results bucket.",
    )
    prefix: str = pydantic.Field(
        default="",
        pattern=PREFIX_PATTERN,
        max_length=512,
        description="Key prefix; the result goes to <prefix><namespace>/<name>/<uid>/.",
    )
    format: ImageFormat = pydantic.Field(default=ImageFormat.PNG, description="png, jpeg or webp.")
    reuse: bool = pydantic.Field(
        default=True,
        description="True: when an earlier succeeded job of the namespace had the same input "
        "contents, parameters, seed, format and profile, its result is copied to this job's key "
        "and nothing is generated (status.result.reusedFrom names that job); this job's result "
        "is offered to later ones. False: always generate, and keep the result out of the "
        "reuse index.",
    )


class Params(_Model):
    """Generation parameters. They may change while the job has not started."""

    prompt: str = pydantic.Field(
        default="a photorealistic full-body photo of a person",
        max_length=2000,
        description="Text prompt added to the image conditioning.",
    )
    negative_prompt: str = pydantic.Field(
        default="lowres, blurry, deformed, extra limbs, watermark, text",
        max_length=2000,
        description="What the image must not show.",
    )
    seed: int | None = pydantic.Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Random seed; the same seed and inputs give the same image. Empty: chosen "
        "by the operator and recorded in status.result.seed.",
    )
    steps: int = pydantic.Field(default=30, ge=1, le=100, description="Denoising steps.")
    guidance: float = pydantic.Field(
        default=5.0, ge=0.0, le=20.0, description="Classifier-free guidance scale."
    )
    width: int = pydantic.Field(
        default=1024, ge=256, le=2048, multiple_of=64, description="Output width in pixels."
    )
    height: int = pydantic.Field(
        default=1024, ge=256, le=2048, multiple_of=64, description="Output height in pixels."
    )
    identity_strength: float = pydantic.Field(
        default=0.8, ge=0.0, le=1.5, description="Weight of the face identity conditioning."
    )
    clothing_strength: float = pydantic.Field(
        default=0.6, ge=0.0, le=1.5, description="Weight of the clothing conditioning."
    )
    place_strength: float = pydantic.Field(
        default=0.6, ge=0.0, le=1.5, description="Weight of the place conditioning."
    )


class Execution(_Model):
    """How the job is run: retries, deadlines, placement and queueing."""

    model_config = pydantic.ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # The API server also checks this rule against the schema's default for
                    # `execution` ({}), where the nested defaults are not filled in yet: an
                    # absent deadline takes its default, which satisfies the rule.
                    "rule": "!has(self.startDeadlineSeconds) || !has(self.activeDeadlineSeconds)"
                    " || self.startDeadlineSeconds <= self.activeDeadlineSeconds",
                    "message": "startDeadlineSeconds must not exceed activeDeadlineSeconds",
                },
                {
                    "rule": "!has(self.pool) || !has(self.queueName)",
                    "message": "pool and queueName are exclusive: a pool's workers are not "
                    "admitted by Kueue",
                },
            ],
        },
    )

    backoff_limit: int = pydantic.Field(
        default=2,
        ge=0,
        le=10,
        description="Failed attempts retried before the job fails (spot interruptions do not "
        "count).",
    )
    start_deadline_seconds: int = pydantic.Field(
        default=900,
        ge=30,
        le=86400,
        description="The job fails when no attempt is running this long after it was admitted.",
    )
    active_deadline_seconds: int = pydantic.Field(
        default=1800,
        ge=60,
        le=86400,
        description="Each attempt is stopped after running this long.",
    )
    priority_class_name: str | None = pydantic.Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PriorityClass of the pods.",
    )
    priority: int = pydantic.Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Order among queued jobs of the namespace when the operator queues (higher "
        "first, then by creation time).",
    )
    queue_name: str | None = pydantic.Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Kueue LocalQueue; the Job is created suspended for Kueue to admit.",
    )
    capacity_type: CapacityType = pydantic.Field(
        default=CapacityType.ANY, description="spot, on-demand or any."
    )
    pool: str | None = pydantic.Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="CompositionPool (same namespace) whose warm workers run the job. Empty: the "
        "operator's default pool for the profile, if one is configured; else a Job per attempt.",
    )

    @pydantic.model_validator(mode="after")
    def _deadlines_ordered(self) -> Execution:
        if self.start_deadline_seconds > self.active_deadline_seconds:
            raise ValueError("startDeadlineSeconds must not exceed activeDeadlineSeconds")
        if self.pool is not None and self.queue_name is not None:
            raise ValueError(
                "pool and queueName are exclusive: a pool's workers are not admitted by Kueue"
            )
        return self


# One year: longer than any history a gateway keeps in the cluster.
MAX_TTL_SECONDS_AFTER_FINISHED = 366 * 24 * 3600


class CompositionJobSpec(_Model):
    """What to compose, where to store it, and how to run it."""

    inputs: Inputs
    output: Output = pydantic.Field(default_factory=Output)
    params: Params = pydantic.Field(default_factory=Params)
    profile: str = pydantic.Field(
        default="instantid-sdxl",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Name of a model profile configured in the operator. Immutable.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "spec.profile is immutable"},
            ],
        },
    )
    execution: Execution = pydantic.Field(default_factory=Execution)
    suspend: bool = pydantic.Field(
        default=False,
        description="True holds the job (or suspends the running attempt); false resumes it.",
    )
    ttl_seconds_after_finished: int | None = pydantic.Field(
        default=None,
        ge=0,
        le=MAX_TTL_SECONDS_AFTER_FINISHED,
        description="Seconds after the job finishes (status.completionTime) before the operator "
        "deletes it; the operator's setting decides whether its result object goes too. Unset: "
        "the operator's default.",
    )


# ---------------------------------------------------------------------------------------------
# Status


class ConditionType(enum.StrEnum):
    ACCEPTED = "Accepted"
    QUEUED = "Queued"
    STARTED = "Started"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(enum.StrEnum):
    """Stable, CamelCase reasons. Tools match on these; never rename one."""

    # Accepted
    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    UNKNOWN_PROFILE = "UnknownProfile"
    # Queued
    WAITING_FOR_CAPACITY = "WaitingForCapacity"  # the operator's per-namespace cap
    WAITING_FOR_ADMISSION = "WaitingForAdmission"  # Kueue has not admitted the Job
    WAITING_FOR_WORKER = "WaitingForWorker"  # pool mode: no idle worker in the pool yet
    POOL_NOT_FOUND = "PoolNotFound"  # pool mode: the pool does not exist (yet)
    ADMITTED = "Admitted"
    # Started
    JOB_CREATED = "JobCreated"
    JOB_CREATE_FAILED = "JobCreateFailed"  # the API server refused the Job; tried again
    SCHEDULING = "Scheduling"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULLING = "ImagePulling"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    # The Job controller cannot create the pod: a ResourceQuota, a LimitRange, an admission
    # policy or webhook, Pod Security (its FailedCreate Event's message)
    POD_CREATE_FAILED = "PodCreateFailed"
    RUNNING = "Running"
    RETRYING = "Retrying"
    SPOT_INTERRUPTED = "SpotInterrupted"
    ASSIGNED_TO_WORKER = "AssignedToWorker"  # pool mode: handed to a worker, not accepted yet
    WORKER_LOST = "WorkerLost"  # pool mode: the worker's lease expired during the attempt
    # An attempt (not a condition): its pod was deleted before it finished, for no reason the
    # operator saw (SuspendedByUser and JobSuspended name theirs)
    POD_DELETED = "PodDeleted"
    JOB_SUSPENDED = "JobSuspended"  # an attempt: its Job was suspended, not by spec.suspend
    # Succeeded
    COMPLETED = "Completed"
    # Failed
    INPUT_REJECTED = "InputRejected"
    INPUT_UNAVAILABLE = "InputUnavailable"
    NO_FACE_FOUND = "NoFaceFound"
    MODEL_LOAD_FAILED = "ModelLoadFailed"
    UPLOAD_FAILED = "UploadFailed"
    OUT_OF_GPU_MEMORY = "OutOfGPUMemory"
    IDENTITY_CHECK_FAILED = "IdentityCheckFailed"
    CONTENT_REJECTED = "ContentRejected"  # flagged by the profile's safety check
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    START_DEADLINE_EXCEEDED = "StartDeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    CONTAINER_FAILED = "ContainerFailed"
    RESULT_UNREADABLE = "ResultUnreadable"  # exit 0, but no result in the termination message
    JOB_LOST = "JobLost"
    # Suspended
    SUSPENDED_BY_USER = "SuspendedByUser"
    RESUMED = "Resumed"


class Phase(enum.StrEnum):
    """One word derived from the conditions, for people and printer columns."""

    PENDING = "Pending"
    QUEUED = "Queued"
    STARTING = "Starting"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class Condition(_StatusModel):
    type: ConditionType
    status: ConditionStatus
    reason: str = pydantic.Field(
        max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    message: str = pydantic.Field(default="", max_length=32768)
    last_transition_time: datetime.datetime
    observed_generation: int | None = pydantic.Field(default=None, ge=0)


class AttemptOutcome(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    INTERRUPTED = "Interrupted"


class Attempt(_StatusModel):
    """One attempt: the child Job (Job mode) or the pool worker (pool mode), the pod it ran as
    and how it ended."""

    index: int = pydantic.Field(ge=0)
    job_name: str | None = pydantic.Field(default=None, description="The child Job (Job mode).")
    pool: str | None = pydantic.Field(default=None, description="The CompositionPool (pool mode).")
    pod_name: str | None = None
    node_name: str | None = None
    instance_type: str | None = None
    capacity_type: str | None = None
    start_time: datetime.datetime | None = None
    end_time: datetime.datetime | None = None
    outcome: AttemptOutcome = AttemptOutcome.PENDING
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None


class Timings(_StatusModel):
    """Seconds spent in each stage of the latest attempt (queued and scheduling from the API
    objects, the rest reported by the inference image)."""

    queued: float | None = None
    scheduling: float | None = None
    image_pull: float | None = None
    fetch: float | None = None
    face_analysis: float | None = None
    model_load: float | None = None
    inference: float | None = None
    refine: float | None = pydantic.Field(
        default=None, description="The face-refinement pass (not counted in inference)."
    )
    safety_check: float | None = pydantic.Field(
        default=None,
        description="The content safety checks of the inputs and the output (the checker's "
        "load counts in modelLoad).",
    )
    postprocess: float | None = None
    upload: float | None = None
    reuse: float | None = pydantic.Field(
        default=None,
        description="The result-reuse index: the lookup (and the copy of a reused result), and "
        "the index entry written after the upload.",
    )
    total: float | None = None


class JobReference(_StatusModel):
    """Another CompositionJob, by namespace, name and uid."""

    namespace: str
    name: str
    uid: str


class Result(_StatusModel):
    """Where the composed image is and what it is."""

    s3_uri: str
    url: str | None = None
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")
    width: int
    height: int
    format: ImageFormat | None = None
    bytes: int | None = None
    seed: int
    steps: int | None = pydantic.Field(
        default=None, description="Denoising steps used (the profile may pin them)."
    )
    guidance: float | None = pydantic.Field(
        default=None, description="Guidance scale used (the profile may pin it)."
    )
    identity_similarity: float | None = None
    identity_similarity_before_refinement: float | None = pydantic.Field(
        default=None,
        description="Identity similarity of the first pass, before the face was refined.",
    )
    reused_from: JobReference | None = pydantic.Field(
        default=None,
        description="Set when nothing was generated: the result is a copy of this earlier job's "
        "(same input contents, parameters, seed, format and profile; spec.output.reuse).",
    )


class WorkerAssignment(_StatusModel):
    """Pool mode: the operator's hand-off of one attempt to one worker, with everything the
    worker needs to build the resolved job document (``contract.job_document``)."""

    pool: str
    worker: str = pydantic.Field(description="The worker pod the attempt is assigned to.")
    worker_instance: str = pydantic.Field(
        description="The worker process (its Lease's holderIdentity) the attempt is assigned to."
    )
    attempt: int = pydantic.Field(ge=0)
    assigned_at: datetime.datetime
    seed: int = pydantic.Field(ge=0, le=2**32 - 1)
    output_bucket: str
    output_key_prefix: str
    traceparent: str | None = pydantic.Field(
        default=None,
        max_length=256,
        description="W3C traceparent of the operator's span that assigned the attempt: the "
        "parent of the worker's run (absent when tracing is off).",
    )


class WorkerReport(_StatusModel):
    """Pool mode: what the worker wrote about the assigned attempt. Accepted first (with the
    resourceVersion the assignment was read at), then finished with the same fields a Job's pod
    leaves in its termination message."""

    attempt: int = pydantic.Field(ge=0)
    worker: str
    worker_instance: str
    node_name: str | None = None
    accepted_at: datetime.datetime
    finished_at: datetime.datetime | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = pydantic.Field(default=None, max_length=4096)
    result: Result | None = None
    timings: Timings | None = None


class CompositionJobStatus(_StatusModel):
    observed_generation: int | None = None
    phase: Phase | None = None
    message: str | None = None
    conditions: list[Condition] = pydantic.Field(
        default_factory=list,
        # One condition per type: server-side apply merges conditions by type.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    attempt: int | None = pydantic.Field(default=None, description="Index of the latest attempt.")
    attempts: list[Attempt] = pydantic.Field(default_factory=list)
    seed: int | None = pydantic.Field(default=None, description="The seed the job runs with.")
    queue_position: int | None = None
    start_time: datetime.datetime | None = None
    completion_time: datetime.datetime | None = None
    timings: Timings | None = None
    result: Result | None = None
    assignment: WorkerAssignment | None = None
    worker_report: WorkerReport | None = None


# ---------------------------------------------------------------------------------------------
# The resource


class ObjectMeta(pydantic.BaseModel):
    """The parts of metadata the project reads; the rest passes through untouched."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel, populate_by_name=True, extra="allow"
    )

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime.datetime | None = None
    labels: dict[str, str] = pydantic.Field(default_factory=dict)
    annotations: dict[str, str] = pydantic.Field(default_factory=dict)


class CompositionJob(_Model):
    """A request to compose one image. Namespaced; short name ``cj``."""

    model_config = pydantic.ConfigDict(extra="ignore")

    api_version: Literal["compose.nextunicorn.dev/v1alpha1"] = "compose.nextunicorn.dev/v1alpha1"
    kind: Literal["CompositionJob"] = "CompositionJob"
    metadata: ObjectMeta = pydantic.Field(default_factory=ObjectMeta)
    spec: CompositionJobSpec
    status: CompositionJobStatus = pydantic.Field(default_factory=CompositionJobStatus)


def describe_validation_error(error: pydantic.ValidationError, *, root: str = "spec") -> str:
    """One line per problem, each naming the field by its API path: ``spec.params.steps: ...``."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"] if part != "__root__")
        field = f"{root}.{path}" if path else root
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{field}: {message}")
    return "; ".join(lines)
