"""The studio: the web client of the API, a page to try it without writing code.

``app.create_app`` includes :func:`build_router` (unless ``COMPOSE_GATEWAY_STUDIO_ENABLED`` is
false). It serves ``GET /studio`` (the page) and ``GET /studio/<file>`` (its script, style sheet
and icon: package data in ``compose_gateway/web``, plain files, no build step, nothing from
another site), and ``GET /studio/config.json``: what the page offers, taken from the API's own
models (clothing categories; the bounds and defaults of the common parameters, from
``compose_api.parameters``; the upload limit)
and the plain-word sentence of every reason (:data:`REASONS`, :data:`REQUEST_ERRORS`).

None of it needs a key: the page asks the user for one and sends it only to this gateway's API
routes, in the ``Authorization`` header. Every answer carries a strict Content-Security-Policy
(:func:`content_security_policy`): scripts, styles and connections to this origin only, images
from this origin, from the browser's own previews (``blob:``) and from where result URLs point
(``storage.Storage.result_sources``), no inline code, no framing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
from collections.abc import Sequence
from typing import Any

import fastapi
from fastapi import responses

from compose_api import models, parameters

# Files of the page (package data), by name, with their media types.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "studio.js": "text/javascript; charset=utf-8",
    "studio.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

# The parameters the page offers (request names; each a field of models.Params).
COMMON_PARAMS = (
    "prompt",
    "seed",
    "steps",
    "width",
    "height",
    "identityStrength",
    "clothingStrength",
    "placeStrength",
)

# What the page says of a parameter where the API's description (and bounds) would not do.
PARAM_HELP = {
    "prompt": "Describe the picture in words. Empty: the default shown.",
    "seed": "The same seed and photos give the same image. Empty: a random one, shown with the "
    "result.",
}

CATEGORY_LABELS: dict[models.ClothingCategory, str] = {
    models.ClothingCategory.UPPER: "Top (upper body)",
    models.ClothingCategory.LOWER: "Bottom (lower body)",
    models.ClothingCategory.DRESS: "Dress",
    models.ClothingCategory.OUTERWEAR: "Outerwear (coat, jacket)",
    models.ClothingCategory.SHOES: "Shoes",
    models.ClothingCategory.ACCESSORY: "Accessory",
}

# Every reason a job's conditions carry, in plain words.
REASONS: dict[models.Reason, str] = {
    models.Reason.VALID: "The request was accepted.",
    models.Reason.INVALID_SPEC: "The request was refused: some of its settings are not valid.",
    models.Reason.UNKNOWN_PROFILE: "This service is set up with a model that does not exist. "
    "Tell the people who run it.",
    models.Reason.WAITING_FOR_CAPACITY: "Waiting for a free slot: other jobs are running.",
    models.Reason.WAITING_FOR_ADMISSION: "Waiting in the queue for a GPU.",
    models.Reason.WAITING_FOR_WORKER: "Waiting for a free worker.",
    models.Reason.POOL_NOT_FOUND: "Waiting: the workers that run jobs are not set up yet.",
    models.Reason.ADMITTED: "Out of the queue: a machine is being found.",
    models.Reason.JOB_CREATED: "Starting.",
    models.Reason.JOB_CREATE_FAILED: "The cluster refused to start the job (a policy or a "
    "quota, say); trying again. Tell the people who run the service if this lasts.",
    models.Reason.SCHEDULING: "Looking for a machine with a GPU.",
    models.Reason.UNSCHEDULABLE: "No machine can run the job at the moment; it waits for one "
    "to become free or to be added.",
    models.Reason.IMAGE_PULLING: "Getting the image program ready on the machine.",
    models.Reason.IMAGE_PULL_BACK_OFF: "The image program could not be set up on the machine; "
    "trying again.",
    models.Reason.POD_CREATE_FAILED: "The cluster will not start the job's program (a quota or "
    "a limit, say); it tries again. Tell the people who run the service if this lasts.",
    models.Reason.RUNNING: "Composing the image.",
    models.Reason.RETRYING: "An attempt failed; trying again.",
    models.Reason.SPOT_INTERRUPTED: "The machine was taken away; starting again on another one.",
    models.Reason.ASSIGNED_TO_WORKER: "Handed to a worker.",
    models.Reason.WORKER_LOST: "The worker stopped answering; trying again.",
    models.Reason.POD_DELETED: "The attempt was stopped before it finished.",
    models.Reason.JOB_SUSPENDED: "The attempt was paused by the cluster, to make room for "
    "other work; it goes on once there is room.",
    models.Reason.COMPLETED: "The image is ready.",
    models.Reason.INPUT_REJECTED: "One of the photos could not be used: it is not a picture "
    "the service can read, or it is too large or too small.",
    models.Reason.INPUT_UNAVAILABLE: "One of the photos could not be fetched.",
    models.Reason.NO_FACE_FOUND: "No face was found in the person photo. Use a photo where "
    "one face is clearly visible.",
    models.Reason.MODEL_LOAD_FAILED: "The image model could not be loaded. This is a problem "
    "on the service's side; try again later.",
    models.Reason.UPLOAD_FAILED: "The image was made but could not be stored. Try again.",
    models.Reason.OUT_OF_GPU_MEMORY: "The image was too large for the GPU. Try a smaller size.",
    models.Reason.IDENTITY_CHECK_FAILED: "The composed image did not look enough like the "
    "person in the photo. Try another person photo or a higher identity strength.",
    models.Reason.CONTENT_REJECTED: "The safety check flagged an image, so no result was kept. "
    "Use other photos.",
    models.Reason.DEADLINE_EXCEEDED: "The job took longer than it may run, and was stopped.",
    models.Reason.START_DEADLINE_EXCEEDED: "The job waited too long for a machine to run on. "
    "Try again later.",
    models.Reason.BACKOFF_LIMIT_EXCEEDED: "The job failed on every attempt.",
    models.Reason.CONTAINER_FAILED: "The image program stopped with an error.",
    models.Reason.RESULT_UNREADABLE: "The image program finished without reporting its image.",
    models.Reason.JOB_LOST: "The job's run disappeared from the cluster.",
    models.Reason.SUSPENDED_BY_USER: "Paused.",
    models.Reason.RESUMED: "Resumed.",
}

# The gateway's error answers (``reason`` of an error body), in plain words.
REQUEST_ERRORS: dict[str, str] = {
    "Unauthorized": "The API key is missing or not valid.",
    "NotFound": "There is no such job for this API key (it may have expired).",
    "InvalidRequest": "Some of what was sent is not valid:",
    "InvalidSpec": "The request was refused: some of its settings are not valid.",
    "PayloadTooLarge": "A photo, or all of them together, is too large.",
    "UnsupportedMediaType": "The request was not sent as a form or as JSON.",
    "UploadsDisabled": "This gateway takes photo URLs only, not uploads.",
    "RequestTimeout": "The photos took too long to upload; nothing was kept.",
    "RateLimited": "Too many requests with this key; wait a moment.",
    "TooManyFailedAttempts": "Too many tries with wrong keys from here; wait a moment.",
    "AuthenticationBusy": "The gateway is busy checking keys; try again in a moment.",
    "QuotaExceeded": "This key has as many jobs as it may.",
    "TooManyUploads": "This key is already uploading as much as it may; wait for an upload "
    "to finish.",
    "UploadCapacity": "The gateway is receiving as many uploads as it can; try again in a moment.",
    "StorageError": "The photos could not be stored; try again.",
    "KubernetesUnavailable": "The cluster did not answer; try again in a moment.",
    "KubernetesError": "The cluster refused the request.",
    "UnreadableJob": "The job cannot be read.",
    "IdempotencyConflict": "This request was sent before with other content.",
    "ContinueExpired": "The list is out of date; it is loaded again from the start.",
    "Cancelled": "The job was deleted.",
    "ResultMissing": "The job finished but reported no image.",
}

TIMING_LABELS: dict[str, str] = {
    "queued": "In the queue",
    "scheduling": "Finding a machine",
    "imagePull": "Setting up the program",
    "fetch": "Fetching the photos",
    "faceAnalysis": "Finding the face",
    "modelLoad": "Loading the model",
    "inference": "Composing",
    "refine": "Refining the face",
    "safetyCheck": "Checking the image",
    "postprocess": "Finishing",
    "upload": "Storing the image",
    "reuse": "Looking for the same image made before",
    "total": "Total",
}

# Answers of every file: no framing, no sniffing, no referrer.
BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def content_security_policy(image_sources: Sequence[str]) -> str:
    """The page's policy: its own scripts, styles and API only; images from itself, from local
    previews and from ``image_sources`` (where result URLs point); DOM sinks that take strings
    of HTML are closed (Trusted Types with no policy)."""
    images = " ".join(["'self'", "blob:", *image_sources])
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {images}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
        ]
    )


def _param(field: parameters.ParamField) -> dict[str, Any]:
    """A parameter's type, bounds and default, and the sentence the page shows under it."""
    found: dict[str, Any] = {
        "type": {int: "integer", float: "number"}.get(field.kind, "string"),
        "default": field.default,
    }
    for key, value in (
        ("minimum", field.minimum),
        ("maximum", field.maximum),
        ("multipleOf", field.multiple_of),
        ("maxLength", field.max_length),
    ):
        if value is not None:
            found[key] = value
    help_text = PARAM_HELP.get(field.alias)
    if help_text is None:
        help_text = field.description
        if field.minimum is not None and field.maximum is not None:
            help_text += f" From {field.minimum:g} to {field.maximum:g}"
            if field.multiple_of is not None:
                help_text += f", in steps of {field.multiple_of}"
            help_text += "."
    return {**found, "help": help_text}


def page_config(*, max_upload_bytes: int) -> dict[str, Any]:
    """What the page offers, from the API's models: categories, parameters, limits, words."""
    offered = {field.alias: field for field in parameters.fields()}
    return {
        "categories": [
            {"value": category.value, "label": CATEGORY_LABELS[category]}
            for category in models.ClothingCategory
        ],
        "maxClothing": models.MAX_CLOTHING_ITEMS,
        "maxUploadBytes": max_upload_bytes,
        "params": {name: _param(offered[name]) for name in COMMON_PARAMS},
        "reasons": {reason.value: sentence for reason, sentence in REASONS.items()},
        "requestErrors": REQUEST_ERRORS,
        "timings": TIMING_LABELS,
    }


@dataclasses.dataclass(frozen=True)
class _File:
    body: bytes
    media_type: str
    etag: str


def _load(name: str, media_type: str) -> _File:
    body = (importlib.resources.files("compose_gateway") / "web" / name).read_bytes()
    return _File(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def build_router(*, image_sources: Sequence[str], max_upload_bytes: int) -> fastapi.APIRouter:
    """The page's routes; its files are read once, here."""
    config = json.dumps(page_config(max_upload_bytes=max_upload_bytes)).encode()
    files = {name: _load(name, media_type) for name, media_type in FILES.items()}
    files["config.json"] = _File(
        config, "application/json", f'"{hashlib.sha256(config).hexdigest()[:32]}"'
    )
    headers = {**BASE_HEADERS, "Content-Security-Policy": content_security_policy(image_sources)}

    def answer(request: fastapi.Request, found: _File) -> fastapi.Response:
        tagged = {**headers, "ETag": found.etag}
        if request.headers.get("if-none-match") == found.etag:
            return fastapi.Response(status_code=304, headers=tagged)
        return fastapi.Response(found.body, media_type=found.media_type, headers=tagged)

    router = fastapi.APIRouter(include_in_schema=False)

    @router.get("/studio")
    async def page(request: fastapi.Request) -> fastapi.Response:
        return answer(request, files["index.html"])

    @router.get("/studio/{name}")
    async def asset(name: str, request: fastapi.Request) -> fastapi.Response:
        found = files.get(name)
        if found is None or name == "index.html":
            body = {"status": "error", "reason": "NotFound", "message": f"no studio file {name!r}"}
            return responses.JSONResponse(body, status_code=404, headers=headers)
        return answer(request, found)

    return router
