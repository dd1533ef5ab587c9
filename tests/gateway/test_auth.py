"""API keys through the gateway (hashed file, both headers, rotation, one derivation per key off
the event loop, failed attempts limited per address) and the per-key rate limit. The key file
and key ring on their own: test_auth_keys.py."""

from __future__ import annotations

import asyncio
import os
import pathlib

import httpx
import pytest

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
    # Both keys verified first, so the file is loaded and the verified-key cache holds them.
    assert (await gateway.get("/jobs", key=ALICE_KEY)).status_code == 200
    assert (await gateway.get("/jobs", key=BOB_KEY)).status_code == 200
    new_key = auth.new_key("carol")
    before = (await asyncio.to_thread(key_file.stat)).st_mtime_ns
    await asyncio.to_thread(key_file.write_text, f"carol: {auth.hash_key(new_key)}\n")
    os.utime(key_file, ns=(before + 10**9, before + 10**9))  # a later mtime, whatever the clock

    assert (await gateway.get("/jobs", key=new_key)).status_code == 200
    # The old keys are gone, the cached ones too.
    assert (await gateway.get("/jobs", key=ALICE_KEY)).status_code == 401
    assert (await gateway.get("/jobs", key=BOB_KEY)).status_code == 401


async def test_a_malformed_key_file_keeps_the_last_good_keys_and_tells_no_client(
    gateway: Gateway, key_file: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await gateway.get("/jobs", key=BOB_KEY)).status_code == 200
    before = (await asyncio.to_thread(key_file.stat)).st_mtime_ns
    await asyncio.to_thread(key_file.write_text, "alice: md5:0123\nbob: sha256:abcdef\n")
    os.utime(key_file, ns=(before + 10**9, before + 10**9))

    assert (await gateway.get("/jobs", key=ALICE_KEY)).status_code == 200
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 200
    assert (await gateway.get("/jobs", key=BOB_KEY)).status_code == 200
    metrics = gateway.services.metrics.render().decode()
    assert "compose_gateway_key_file_errors_total 1.0" in metrics
    assert "alice: expected 'sha256:<hex>'" in caplog.text  # the detail goes to the log


async def test_a_key_file_never_loaded_is_not_ready_with_a_generic_message(
    make_gateway: MakeGateway, tmp_path: pathlib.Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"alice: sha256:{'ab' * 31}\n")
    gateway = await make_gateway(api_keys_file=broken)

    response = await gateway.client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["message"] == "the API keys are not loaded"
    assert str(broken) not in response.text
    assert "alice" not in response.text and "ab" * 31 not in response.text


async def test_odd_keys_are_refused_before_any_hashing(gateway: Gateway) -> None:
    ring = gateway.services.keys
    for odd in ("x" * 5, "cgw_bob~" + "y" * 600, "cgw_bob~with space inside!"):
        response = await gateway.get("/jobs", key=odd)
        assert response.status_code == 401, odd
    assert (await gateway.get("/jobs", key="cgw_bob~a-wrong-secret-of-bob")).status_code == 401
    assert ring.derivations == 1  # only the well-shaped key naming bob was derived


async def test_derivations_run_off_the_loop_in_a_bounded_pool(
    make_gateway: MakeGateway, tmp_path: pathlib.Path
) -> None:
    keys = tmp_path / "slow.yaml"
    keys.write_text(f"bob: {auth.hash_key(BOB_KEY, scheme='scrypt')}\n")
    ring = auth.KeyRing(keys, threads=1, waiting=1)
    gateway = await make_gateway({"keys": ring}, api_keys_file=keys, auth_failure_burst=100)

    answers = await asyncio.gather(
        *(gateway.get("/jobs", key=f"cgw_bob~wrong-secret-number-{i}") for i in range(8)),
        gateway.client.get("/healthz"),
    )

    codes = sorted(response.status_code for response in answers[:-1])
    assert answers[-1].status_code == 200
    # One derivation runs and one waits; the others are refused at once rather than queued,
    # which only happens when the derivations do not block the event loop.
    assert codes.count(401) == 2
    assert codes.count(503) == 6
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.json()["reason"] == "AuthenticationBusy"
    assert busy.headers["Retry-After"] == "1"
    assert (await gateway.get("/jobs", key=BOB_KEY)).status_code == 200


async def test_failed_attempts_are_limited_per_client_address(make_gateway: MakeGateway) -> None:
    clock = ManualClock()
    gateway = await make_gateway(
        {"monotonic": clock}, auth_failures_per_minute=6, auth_failure_burst=2
    )
    assert (await gateway.get("/jobs", key=ALICE_KEY)).status_code == 200  # verified, cached

    first = [await gateway.get("/jobs", key=f"cgw_bob~bad-attempt-{i}-xxxx") for i in range(2)]
    blocked = await gateway.get("/jobs", key="cgw_bob~bad-attempt-3-xxxx")
    bob_now = await gateway.get("/jobs", key=BOB_KEY)
    alice_now = await gateway.get("/jobs", key=ALICE_KEY)
    other = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app, client=("10.1.2.3", 4321)),
        base_url="http://gateway.test",
    )
    async with other:
        elsewhere = await other.get("/jobs", headers={"X-API-Key": BOB_KEY})
    clock.advance(10)
    later = await gateway.get("/jobs", key=BOB_KEY)

    assert [r.status_code for r in first] == [401, 401]
    assert blocked.status_code == 429
    assert blocked.json()["reason"] == "TooManyFailedAttempts"
    assert blocked.headers["Retry-After"] == "10"
    assert bob_now.status_code == 429  # not verified yet: it would need hashing
    assert alice_now.status_code == 200  # verified before: the cache needs no hashing
    assert elsewhere.status_code == 200  # another address has its own budget
    assert later.status_code == 200
    assert gateway.services.keys.derivations == 3  # two bad attempts, bob's key elsewhere


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
