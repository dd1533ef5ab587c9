"""Malformed, invalid and oversized requests: 413, 415 and 422 naming the field as sent."""

from __future__ import annotations

from typing import Any

import pytest

from tests.gateway.conftest import ALICE_KEY, Gateway, MakeGateway, original_request
from tests.support import cluster_client
from tests.support.resources import COMPOSITION_JOBS


def _fields(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["status"] == "error" and body["reason"] == "InvalidRequest"
    return {item["field"]: item["message"] for item in body["errors"]}


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"personImage": None}, "personImage", "valid string"),
        ({"personImage": "ftp://example.com/p.jpg"}, "personImage", "https:// URL or an s3://"),
        ({"placeImage": "http://example.com/b.jpg"}, "placeImage", "https:// URL"),
        ({"clothingImages": []}, "clothingImages", "at least 1"),
        ({"clothingImages": ["https://e.com/a.jpg", "nope"]}, "clothingImages[1]", "https://"),
        ({"clothingImages": [{"url": "file:///etc/passwd"}]}, "clothingImages[0].url", "https"),
        ({"clothingImages": [{"url": "https://e.com/a.jpg", "category": "hat"}]},
         "clothingImages[0].category", "upper"),
        ({"clothingImages": [7]}, "clothingImages[0]", "URL string or an object"),
        ({"clothingImages": [f"https://e.com/{i}.jpg" for i in range(9)]}, "clothingImages",
         "at most 8"),
        ({"clothingImages": [{"url": "https://e.com/d.jpg", "category": "dress"},
                             {"url": "https://e.com/u.jpg", "category": "upper"}]},
         "clothingImages", "a dress cannot be combined"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"width": 1000}, "width", "multiple of 64"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"negativePrompt": "x" * 2001}, "negativePrompt", "at most 2000"),
        ({"format": "gif"}, "format", "'png', 'jpeg' or 'webp'"),
        ({"identityStrength": 2}, "identityStrength", "less than or equal to 1.5"),
        ({"colour": "red"}, "colour", "not a known field"),
        ({"placeImage": "s3://models-bucket/sdxl/model.tar.gz"}, "placeImage", "uploads"),
        ({"callbackUrl": "https://169.254.169.254/latest"}, "callbackUrl", "metadata"),
        ({"callbackUrl": "https://10.0.0.8/hook"}, "callbackUrl", "private address"),
        ({"callbackUrl": "http://hooks.example.com/"}, "callbackUrl", "https://"),
    ],
)  # fmt: skip
async def test_an_invalid_field_is_named(
    gateway: Gateway,
    cluster: cluster_client.ClusterClient,
    change: dict[str, Any],
    field: str,
    fragment: str,
) -> None:
    response = await gateway.post(original_request(**change))

    fields = _fields(response)
    assert field in fields, fields
    assert fragment in fields[field]
    assert field in response.json()["message"]
    assert await cluster.list(COMPOSITION_JOBS, namespace="compose") == []


async def test_several_problems_are_named_together(gateway: Gateway) -> None:
    request = original_request(personImage="nope", steps=500, width=100)

    assert set(_fields(await gateway.post(request))) == {"personImage", "steps", "width"}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "valid dictionary"), (b"", "not valid JSON")],
)
async def test_a_malformed_body_is_named(gateway: Gateway, content: bytes, fragment: str) -> None:
    response = await gateway.client.post(
        "/generate",
        content=content,
        headers={"X-API-Key": ALICE_KEY, "Content-Type": "application/json"},
    )

    fields = _fields(response)
    assert fragment in fields["body"]


async def test_bad_query_and_header_values_are_named(gateway: Gateway) -> None:
    assert "wait" in _fields(await gateway.post(original_request(), params={"wait": -1}))
    assert "limit" in _fields(await gateway.get("/jobs", params={"limit": 0}))
    too_long = {"Idempotency-Key": "k" * 300}
    assert "Idempotency-Key" in _fields(await gateway.post(original_request(), headers=too_long))


async def test_an_oversized_body_is_413(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(max_json_bytes=2048)
    request = original_request(prompt="p" * 1900)

    response = await gateway.post(request)
    assert response.status_code == 413
    assert response.json()["reason"] == "PayloadTooLarge"

    # Without Content-Length: the limit applies while the stream is read.
    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1000

    response = await gateway.client.post(
        "/generate",
        content=chunks(),
        headers={"X-API-Key": ALICE_KEY, "Content-Type": "application/json"},
    )
    assert response.status_code == 413


async def test_an_unknown_media_type_is_415(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/generate",
        content=b"personImage=x",
        headers={"X-API-Key": ALICE_KEY, "Content-Type": "text/plain"},
    )

    assert response.status_code == 415
    assert response.json()["reason"] == "UnsupportedMediaType"


@pytest.mark.parametrize(
    ("suffix", "fragment"),
    [
        ("../bob/gw-00000000000000000000/x.png", "'.' or '..' segments"),
        ("./gw-00000000000000000000/x.png", "'.' or '..' segments"),
        ("gw-00000000000000000000//x.png", "empty"),
        ("gw-00000000000000000000/x.png/", "empty"),
        ("%2e%2e/bob/x.png", "'%'"),
        ("..\\bob\\x.png", "'\\'"),
    ],
)
async def test_an_s3_uri_that_could_leave_the_keys_prefix_is_refused(
    gateway: Gateway, buckets: dict[str, str], suffix: str, fragment: str
) -> None:
    # The URI starts with alice's own upload prefix, so a plain prefix test would pass it.
    uri = f"s3://{buckets['inputs']}/uploads/alice/{suffix}"

    fields = _fields(await gateway.post(original_request(personImage=uri)))

    assert fragment in fields["personImage"]


async def test_alices_own_upload_uri_is_accepted(gateway: Gateway, buckets: dict[str, str]) -> None:
    uri = f"s3://{buckets['inputs']}/uploads/alice/gw-00000000000000000000/a.png"
    response = await gateway.post(original_request(personImage=uri))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("depth", [30_000, 60_000])
async def test_deeply_nested_json_is_422_not_a_crash(make_gateway: MakeGateway, depth: int) -> None:
    gateway = await make_gateway(max_json_bytes=256 * 1024)
    body = "[" * depth + "]" * depth  # deeper than the decoder's recursion limit

    response = await gateway.client.post(
        "/generate",
        content=body.encode(),
        headers={"X-API-Key": ALICE_KEY, "Content-Type": "application/json"},
    )

    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [{"field": "body", "message": "JSON nested too deeply"}]
