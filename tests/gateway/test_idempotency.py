"""Idempotency-Key: the same key and body give the same job; another body is a 409."""

from __future__ import annotations

from tests.gateway.conftest import BOB_KEY, Gateway, original_request
from tests.support import cluster_client
from tests.support.resources import COMPOSITION_JOBS


async def test_the_same_key_and_body_give_the_same_job(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    headers = {"Idempotency-Key": "order-1234"}
    first = await gateway.post(original_request(seed=3), headers=headers)
    # The same request, written differently (key order), is the same request.
    again = dict(reversed(list(original_request(seed=3).items())))
    second = await gateway.post(again, headers=headers)

    assert first.status_code == second.status_code == 202
    assert first.json()["jobId"] == second.json()["jobId"]
    assert len(await cluster.list(COMPOSITION_JOBS, namespace="compose")) == 1


async def test_the_same_key_with_another_body_is_a_conflict(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    headers = {"Idempotency-Key": "order-1234"}
    first = await gateway.post(original_request(), headers=headers)
    second = await gateway.post(original_request(steps=10), headers=headers)

    assert first.status_code == 202
    assert second.status_code == 409
    assert second.json()["reason"] == "IdempotencyConflict"
    jobs = await cluster.list(COMPOSITION_JOBS, namespace="compose")
    assert [job["spec"]["params"]["steps"] for job in jobs] == [30]


async def test_idempotency_keys_belong_to_one_api_key(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    headers = {"Idempotency-Key": "order-1234"}
    alice = await gateway.post(original_request(), headers=headers)
    bob = await gateway.post(original_request(), headers=headers, key=BOB_KEY)

    assert alice.status_code == bob.status_code == 202
    assert alice.json()["jobId"] != bob.json()["jobId"]
    assert len(await cluster.list(COMPOSITION_JOBS, namespace="compose")) == 2


async def test_without_a_key_each_request_is_a_new_job(gateway: Gateway) -> None:
    first = await gateway.post(original_request())
    second = await gateway.post(original_request())

    assert first.json()["jobId"] != second.json()["jobId"]
