"""Reading JSON request bodies within limits.

Called by the ``POST /generate`` handler for JSON bodies (multipart bodies are streamed by
``uploads``). The body is read in full but never beyond the limit (413 at once when
``Content-Length`` says it is too big, or as soon as the stream passes it), so a client cannot
make the gateway buffer more than ``max_json_bytes``. JSON nested too deeply for the decoder is
a 422 naming ``body``, not a crash.
"""

from __future__ import annotations

import json
from typing import Any

from starlette import requests

from compose_gateway import translate


class BodyTooLarge(Exception):
    """The body (or one file) is over its limit; ``field`` names the file when it is one."""

    def __init__(self, limit: int, field: str = "body") -> None:
        self.limit = limit
        self.field = field
        super().__init__(f"{field}: larger than {limit} bytes")


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
    except RecursionError:
        raise translate.RequestError(
            [translate.FieldError("body", "JSON nested too deeply")]
        ) from None
