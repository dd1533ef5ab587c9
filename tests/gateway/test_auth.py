"""API keys (hashed file, both headers, rotation) and the per-key rate limit."""

from __future__ import annotations

import asyncio
import hashlib
import pathlib

from compose_gateway import auth
from tests.gateway.conftest import (
    ALICE_KEY,
    BOB_KEY,
    Gateway,
    MakeGateway,
    ManualClock,
    original_request,
)


async def test_a_request_without_a_key_is_refused(gateway: Gateway) -> None:
    response = await gateway.client.post("/generate", json=original_request())

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["reason"] == "Unauthorized"
    assert (await gateway.client.get("/jobs")).status_code == 401


async def test_a_wrong_key_is_refused(gateway: Gateway) -> None:
    for headers in (
        {"Authorization": "Bearer " + ALICE_KEY[:-1]},
        {"X-API-Key": ALICE_KEY + "x"},
        {"Authorization": "Basic " + ALICE_KEY},
    ):
        response = await gateway.client.get("/jobs", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["reason"] == "Unauthorized"


async def test_both_headers_and_both_hash_schemes_are_accepted(gateway: Gateway) -> None:
    for headers in (
        {"Authorization": "Bearer " + ALICE_KEY},
        {"X-API-Key": ALICE_KEY},
        {"Authorization": "Bearer " + BOB_KEY},
        {"X-API-Key": BOB_KEY},
    ):
        response = await gateway.client.get("/jobs", headers=headers)
        assert response.status_code == 200, headers


async def test_keys_rotate_when_the_secret_file_changes(
    gateway: Gateway, key_file: pathlib.Path
) -> None:
    new_key = auth.new_key()
    await asyncio.to_thread(key_file.write_text, f"carol: {auth.hash_key(new_key)}\n")

    assert (await gateway.get("/jobs", key=new_key)).status_code == 200
    assert (await gateway.get("/jobs", key=ALICE_KEY)).status_code == 401


async def test_the_rate_limit_answers_429_with_retry_after(make_gateway: MakeGateway) -> None:
    clock = ManualClock()
    gateway = await make_gateway({"monotonic": clock}, rate_limit_per_minute=6, rate_limit_burst=2)

    assert (await gateway.get("/jobs")).status_code == 200
    assert (await gateway.get("/jobs")).status_code == 200
    limited = await gateway.get("/jobs")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "10"
    assert limited.json()["reason"] == "RateLimited"
    # Another key has its own bucket.
    assert (await gateway.get("/jobs", key=BOB_KEY)).status_code == 200

    clock.advance(9.5)
    assert (await gateway.get("/jobs")).status_code == 429
    clock.advance(0.5)
    assert (await gateway.get("/jobs")).status_code == 200


def test_key_file_entries_are_checked() -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    assert auth.identify(auth.parse_key_file(f"a: sha256:{digest}"), "k") == "a"
    assert auth.identify(auth.parse_key_file(f"a: sha256:{digest}"), "K") is None
    for text, fragment in (
        ("a: md5:abc", "expected 'sha256:<hex>'"),
        ("a: sha256:abcd", "64 hex digits"),
        ("-bad-: sha256:" + digest, "a key id is"),
        ("- a\n- b", "one '<id>: <hash>' per line"),
        ("a: [1]", "must be a string"),
    ):
        try:
            auth.parse_key_file(text)
        except auth.KeyFileError as error:
            assert fragment in str(error), (text, error)
        else:
            raise AssertionError(f"accepted: {text!r}")
