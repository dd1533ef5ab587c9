"""Last stage: store the encoded result in S3 where the operator said, with its metadata.

The runner calls ``Uploader.upload`` once per successful job. The key is
``<output_key_prefix>result.<ext>``; the operator builds the prefix
(``<spec.output.prefix><namespace>/<name>/<uid>/``) and hands it over in the job document, so both
sides agree on where the result is. Transient S3 errors are retried with backoff; anything that
still fails is UPLOAD_FAILED (which the operator retries on another attempt).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from compose_inference import errors, images, retrying, storage

_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


@dataclasses.dataclass(frozen=True)
class StoredObject:
    uri: str
    bucket: str
    key: str
    sha256: str
    bytes: int
    content_type: str


def result_key(output_key_prefix: str, fmt: str) -> str:
    """``<prefix>result.<ext>``; the prefix is used as given (it ends with '/')."""
    extension = _EXTENSIONS.get(fmt.lower())
    if extension is None:
        raise ValueError(f"spec.output.format: {fmt!r} is not png, jpeg or webp")
    prefix = (
        output_key_prefix
        if output_key_prefix.endswith("/") or not output_key_prefix
        else (output_key_prefix + "/")
    )
    return f"{prefix.lstrip('/')}result.{extension}"


class Uploader:
    """Puts result objects. One instance serves many jobs."""

    def __init__(
        self,
        *,
        s3_client: Any | None = None,
        backoff: retrying.Backoff = retrying.Backoff(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._s3 = s3_client
        self._backoff = backoff
        self._sleep = sleep

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = storage.make_client()
        return self._s3

    def upload(
        self,
        data: bytes,
        *,
        bucket: str,
        key: str,
        fmt: str,
        metadata: Mapping[str, str],
    ) -> StoredObject:
        """Store ``data`` at s3://bucket/key; the sha256 goes into the object's metadata too."""
        digest = hashlib.sha256(data).hexdigest()
        content_type = images.CONTENT_TYPES[fmt.lower()]
        meta = ascii_metadata(metadata)
        meta["sha256"] = digest

        def put() -> None:
            self._client().put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata=meta,
                ChecksumSHA256=_base64_sha256(data),
            )

        uri = f"s3://{bucket}/{key}"
        try:
            retrying.call(
                put, transient=storage.is_transient, backoff=self._backoff, sleep=self._sleep
            )
        except retrying.RetriesExhausted as error:
            raise errors.UploadFailed(
                f"{uri}: upload failed after {error.attempts} attempts: {error.last}"
            ) from error
        except Exception as error:
            code = storage.error_code(error)
            detail = f"{code}: {error}" if code else f"{type(error).__name__}: {error}"
            raise errors.UploadFailed(f"{uri}: upload failed: {detail}") from error
        return StoredObject(
            uri=uri,
            bucket=bucket,
            key=key,
            sha256=digest,
            bytes=len(data),
            content_type=content_type,
        )


def ascii_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """S3 user metadata travels in HTTP headers: keep it ASCII."""
    return {
        name: value.encode("ascii", "backslashreplace").decode("ascii")
        for name, value in metadata.items()
    }


def _base64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
