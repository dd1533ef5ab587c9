"""Reading request bodies within limits, and turning a multipart upload into a request.

Called by the ``POST /generate`` handler. The body is read in full but never beyond the limit
(413 at once when ``Content-Length`` says it is too big, or as soon as the stream passes it), so
a client cannot make the gateway buffer more than ``max_request_bytes``. Multipart files are
checked by size and by content (JPEG, PNG or WebP magic bytes, not the declared type), stored in
S3 under the caller's prefix, and replaced by their ``s3://`` URIs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from starlette import datastructures, exceptions, formparsers, requests

from compose_gateway import storage, translate

IMAGE_FIELDS = ("personImage", "clothingImages", "placeImage")
LIST_FIELDS = frozenset({"clothingImages"})


class BodyTooLarge(Exception):
    """The body (or one file) is over its limit; ``field`` names the file when it is one."""

    def __init__(self, limit: int, field: str = "body") -> None:
        self.limit = limit
        self.field = field
        super().__init__(f"{field}: larger than {limit} bytes")


@dataclasses.dataclass(frozen=True)
class Upload:
    """One uploaded image, checked, waiting to be stored."""

    field: str
    data: bytes
    extension: str
    content_type: str

    @property
    def object_name(self) -> str:
        """Named by content, so a replayed request rewrites the same object with the same bytes
        and a different file never overwrites one a job already references."""
        return f"{hashlib.sha256(self.data).hexdigest()[:32]}.{self.extension}"


async def read_limited(request: requests.Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """The decoded JSON body; RequestError naming ``body`` when it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise translate.RequestError(
            [translate.FieldError("body", f"not valid JSON ({error})")]
        ) from None


async def parse_form(
    request: requests.Request, body: bytes, *, max_file_bytes: int
) -> tuple[dict[str, Any], list[tuple[str, int | None, Upload]]]:
    """The form as a JSON-like payload (files left as None placeholders), and the uploads with
    the field and list index they fill."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await requests.Request(request.scope, replay).form(
            max_files=2 + 8 + 2, max_fields=64, max_part_size=64 * 1024
        )
    except exceptions.HTTPException as error:
        raise translate.RequestError(
            [translate.FieldError("body", f"malformed multipart body ({error.detail})")]
        ) from None
    except (formparsers.MultiPartException, ValueError) as error:
        raise translate.RequestError(
            [translate.FieldError("body", f"malformed multipart body ({error})")]
        ) from None
    payload: dict[str, Any] = {}
    uploads: list[tuple[str, int | None, Upload]] = []
    errors: list[translate.FieldError] = []
    try:
        for key in dict.fromkeys(form.keys()):
            values = form.getlist(key)
            if key not in LIST_FIELDS and len(values) > 1:
                errors.append(translate.FieldError(key, "given more than once"))
                continue
            converted: list[Any] = []
            for index, value in enumerate(values):
                position = index if key in LIST_FIELDS else None
                field = f"{key}[{index}]" if position is not None else key
                if isinstance(value, datastructures.UploadFile):
                    if key not in IMAGE_FIELDS:
                        errors.append(translate.FieldError(field, "must not be a file"))
                        continue
                    upload = await _read_upload(value, field, max_file_bytes)
                    if isinstance(upload, translate.FieldError):
                        errors.append(upload)
                        continue
                    uploads.append((key, position, upload))
                    converted.append(None)
                else:
                    converted.append(value)
            if key in LIST_FIELDS:
                payload[key] = converted
            elif converted:
                payload[key] = converted[0]
    finally:
        await form.close()
    if errors:
        raise translate.RequestError(errors)
    return payload, uploads


async def _read_upload(
    value: datastructures.UploadFile, field: str, limit: int
) -> Upload | translate.FieldError:
    if value.size is not None and value.size > limit:
        raise BodyTooLarge(limit, field)
    data = await value.read(limit + 1)
    if len(data) > limit:
        raise BodyTooLarge(limit, field)
    if not data:
        return translate.FieldError(field, "is an empty file")
    kind = storage.sniff_image(data)
    if kind is None:
        return translate.FieldError(field, "is not a JPEG, PNG or WebP image")
    return Upload(field=field, data=data, extension=kind[0], content_type=kind[1])


def upload_uri(prefix: str, name: str, upload: Upload) -> str:
    """Where an upload of job ``name`` will be stored (``prefix`` is the owner's s3:// prefix)."""
    return f"{prefix}{name}/{upload.object_name}"


def fill(
    payload: dict[str, Any], uploads: list[tuple[str, int | None, Upload]], uris: list[str]
) -> dict[str, Any]:
    """The payload with each upload's placeholder replaced by its URI."""
    filled = dict(payload)
    for (key, position, _), uri in zip(uploads, uris, strict=True):
        if position is None:
            filled[key] = uri
        else:
            items = list(filled[key])
            items[position] = uri
            filled[key] = items
    return filled
