"""The parts of the OpenAPI document FastAPI cannot derive: the error answers of each route,
the two request bodies of ``POST /generate`` (JSON from ``translate.GenerateRequest``, multipart
with files) and the event stream of ``GET /jobs/{id}/events``. Used by ``routes``.
"""

from __future__ import annotations

from typing import Any

from compose_gateway import translate, views

MULTIPART = "multipart/form-data"

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": views.ErrorBody, "description": description}
    for code, description in {
        401: "No API key, or not a valid one.",
        404: "No such job for this API key.",
        413: "The body or a file is over its size limit.",
        422: "The request is invalid (each field named), or the job failed because of its input.",
        429: "Rate limited: see Retry-After.",
    }.items()
}

EVENTS: dict[str, Any] = {
    "description": "Server-Sent Events: `status` (the job view, at once and on each change), "
    "then `end` when the job has ended, `gone` when it was deleted, or `error`; a stream that "
    "closes without one of those was cut at its time limit: reconnect.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}

GENERATE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": translate.GenerateRequest.model_json_schema()},
        MULTIPART: {
            "schema": {
                "type": "object",
                "description": "Image files (or URL strings) in personImage, clothingImages "
                "(repeated) and placeImage; any optional parameter as a text field.",
                "properties": {
                    "personImage": {"type": "string", "format": "binary"},
                    "clothingImages": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "minItems": 1,
                        "maxItems": 8,
                    },
                    "clothingCategories": {
                        "type": "array",
                        "description": "One per clothingImages file, in the same order: upper, "
                        "lower, dress, outerwear, shoes, accessory, or empty for none.",
                        "items": {"type": "string"},
                        "maxItems": 8,
                    },
                    "placeImage": {"type": "string", "format": "binary"},
                    "prompt": {"type": "string"},
                    "seed": {"type": "integer"},
                    "steps": {"type": "integer"},
                    "format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
                    "callbackUrl": {"type": "string"},
                },
                "required": ["personImage", "clothingImages", "placeImage"],
            }
        },
    },
}
