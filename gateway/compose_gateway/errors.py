"""Errors of every kind as one JSON shape, and the handlers that turn exceptions into it.

``app.create_app`` calls :func:`install`; routes raise :class:`ApiError` (or the domain errors of
``jobs``, ``uploads``, ``bodies``, ``translate``, ``kube``, ``storage``), and each handler here
answers ``views.ErrorBody``: ``status: "error"``, a stable ``reason``, a ``message``, and for bad
input ``errors`` naming each field as the client spelled it.
"""

from __future__ import annotations

import http
import logging
from typing import Any

import fastapi
import pydantic
from fastapi import exceptions as fastapi_exceptions
from fastapi import responses
from starlette import exceptions as starlette_exceptions

from compose_api import kube
from compose_gateway import bodies, jobs, storage, translate, uploads, views

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: HTTP status, stable reason, message, optional headers."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        job_id: str | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}
        self.job_id = job_id
        super().__init__(message)


def error_response(
    status: int,
    reason: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    job_id: str | None = None,
    errors: list[dict[str, str]] | None = None,
) -> responses.JSONResponse:
    body = views.ErrorBody(reason=reason, message=message, job_id=job_id, errors=errors)
    return responses.JSONResponse(body.body(), status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str:
    """A FastAPI parameter location as the client names it: ``wait``, ``Idempotency-Key``."""
    if not loc:
        return "body"
    where, rest = loc[0], loc[1:]
    if where == "header" and rest:
        return "-".join(part.capitalize() for part in str(rest[0]).split("-"))
    text = ""
    for part in rest:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or str(where)


def install(app: fastapi.FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: fastapi.Request, error: ApiError) -> responses.JSONResponse:
        return error_response(
            error.status, error.reason, error.message, headers=error.headers, job_id=error.job_id
        )

    @app.exception_handler(translate.RequestError)
    async def _request_error(
        _: fastapi.Request, error: translate.RequestError
    ) -> responses.JSONResponse:
        fields = [{"field": e.field, "message": e.message} for e in error.errors]
        return error_response(422, "InvalidRequest", str(error), errors=fields)

    @app.exception_handler(fastapi_exceptions.RequestValidationError)
    async def _validation_error(
        _: fastapi.Request, error: fastapi_exceptions.RequestValidationError
    ) -> responses.JSONResponse:
        found = [
            translate.FieldError(_field_of(tuple(item.get("loc", ()))), str(item.get("msg", "")))
            for item in error.errors()
        ]
        fields = [{"field": e.field, "message": e.message} for e in found]
        return error_response(422, "InvalidRequest", translate.describe(found), errors=fields)

    @app.exception_handler(bodies.BodyTooLarge)
    async def _too_large(_: fastapi.Request, error: bodies.BodyTooLarge) -> responses.JSONResponse:
        return error_response(413, "PayloadTooLarge", str(error))

    @app.exception_handler(uploads.UploadsBusy)
    async def _busy(_: fastapi.Request, error: uploads.UploadsBusy) -> responses.JSONResponse:
        headers = {"Retry-After": str(error.retry_after)}
        return error_response(503, "UploadCapacity", str(error), headers=headers)

    @app.exception_handler(uploads.TooManyUploads)
    async def _too_many_uploads(
        _: fastapi.Request, error: uploads.TooManyUploads
    ) -> responses.JSONResponse:
        headers = {"Retry-After": str(error.retry_after)}
        return error_response(429, "TooManyUploads", str(error), headers=headers)

    @app.exception_handler(storage.StorageError)
    async def _storage(_: fastapi.Request, error: storage.StorageError) -> responses.JSONResponse:
        logger.warning("upload failed: %s", error)
        return error_response(502, "StorageError", "the upload could not be stored; retry")

    @app.exception_handler(jobs.JobNotFound)
    async def _not_found(_: fastapi.Request, error: jobs.JobNotFound) -> responses.JSONResponse:
        return error_response(404, "NotFound", f"no job {error.args[0]!r} for this API key")

    @app.exception_handler(jobs.IdempotencyConflict)
    async def _conflict(
        _: fastapi.Request, error: jobs.IdempotencyConflict
    ) -> responses.JSONResponse:
        return error_response(409, "IdempotencyConflict", str(error))

    @app.exception_handler(jobs.BadCursor)
    async def _cursor(_: fastapi.Request, error: jobs.BadCursor) -> responses.JSONResponse:
        message = f"continue: {error}"
        fields = [{"field": "continue", "message": str(error)}]
        return error_response(422, "InvalidRequest", message, errors=fields)

    @app.exception_handler(jobs.CursorExpired)
    async def _expired(_: fastapi.Request, error: jobs.CursorExpired) -> responses.JSONResponse:
        message = "continue: the token has expired; list again from the first page"
        fields = [{"field": "continue", "message": "has expired"}]
        return error_response(410, "ContinueExpired", message, errors=fields)

    @app.exception_handler(jobs.QuotaExceeded)
    async def _quota(_: fastapi.Request, error: jobs.QuotaExceeded) -> responses.JSONResponse:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        return error_response(429, "QuotaExceeded", str(error), headers=headers)

    @app.exception_handler(kube.KubeError)
    async def _kube_error(_: fastapi.Request, error: kube.KubeError) -> responses.JSONResponse:
        logger.warning("Kubernetes API error: %s", error)
        if error.status == 0:
            return error_response(503, "KubernetesUnavailable", "the cluster did not answer")
        if error.status == 422:
            return error_response(422, "InvalidSpec", error.message)
        return error_response(502, "KubernetesError", f"the cluster refused: {error.reason}")

    @app.exception_handler(pydantic.ValidationError)
    async def _unreadable(
        _: fastapi.Request, error: pydantic.ValidationError
    ) -> responses.JSONResponse:
        # A CompositionJob in the cluster that the models refuse (written by something else).
        logger.warning("unreadable CompositionJob: %s", error)
        return error_response(502, "UnreadableJob", "the job's object in the cluster is invalid")

    @app.exception_handler(starlette_exceptions.HTTPException)
    async def _http_error(
        _: fastapi.Request, error: starlette_exceptions.HTTPException
    ) -> responses.JSONResponse:
        phrase = http.HTTPStatus(error.status_code).phrase
        return error_response(
            error.status_code,
            phrase.replace(" ", ""),
            str(error.detail),
            headers=dict(error.headers or {}),
        )
