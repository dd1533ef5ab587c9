"""Callbacks: signed POSTs when a job ends, retried with backoff, delivered once across passes
and restarts, never to private or metadata addresses."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import pytest

from compose_api import netguard
from compose_gateway import callbacks, naming, signing, translate
from tests.gateway import operator_play
from tests.gateway.conftest import (
    CALLBACK_SECRET,
    NAMESPACE,
    Gateway,
    GatewayCluster,
    MakeGateway,
    ManualClock,
    Receiver,
    original_request,
)
from tests.support import cluster_client, s3
from tests.support.cluster_client import poll
from tests.support.resources import COMPOSITION_JOBS

LOCAL = {"callback_allow_cidrs": "127.0.0.0/8", "callback_allow_http": True}


def _loop(gateway: Gateway) -> callbacks.CallbackLoop:
    loop = gateway.services.callback_loop
    assert loop is not None
    return loop


async def _job(cluster: cluster_client.ClusterClient, name: str) -> dict[str, Any]:
    return await cluster.get(COMPOSITION_JOBS, name, namespace=NAMESPACE)


async def test_a_callback_is_delivered_signed_and_once(
    make_gateway: MakeGateway,
    cluster: cluster_client.ClusterClient,
    receiver: Receiver,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
) -> None:
    gateway = await make_gateway(**LOCAL)
    created = (await gateway.post(original_request(callbackUrl=receiver.url))).json()
    name = created["jobId"]
    job = await _job(cluster, name)
    assert job["metadata"]["labels"][naming.CALLBACK_LABEL] == "pending"
    assert job["metadata"]["annotations"][naming.CALLBACK_URL_ANNOTATION] == receiver.url

    s3_env.client().put_object(Bucket=buckets["results"], Key="out/r.png", Body=b"image")
    await operator_play.succeed(
        cluster, name, NAMESPACE, s3_uri=f"s3://{buckets['results']}/out/r.png"
    )
    await cluster.wait_for(
        COMPOSITION_JOBS,
        name,
        lambda obj: (
            obj is not None and obj["metadata"]["labels"][naming.CALLBACK_LABEL] == "delivered"
        ),
        namespace=NAMESPACE,
    )

    assert len(receiver.received) == 1
    delivery = receiver.received[0]
    signature = dict(p.split("=", 1) for p in delivery.headers["X-Compose-Signature"].split(","))
    # The receiver's check, as the README shows it, with alice's own secret.
    alice_secret = hmac.new(
        CALLBACK_SECRET, b"compose-gateway callback key v1\0alice", hashlib.sha256
    ).hexdigest()
    message = signature["t"].encode() + b".alice." + delivery.body
    expected = hmac.new(alice_secret.encode(), message, hashlib.sha256).hexdigest()
    assert signature["k"] == "alice"
    assert hmac.compare_digest(signature["v1"], expected)
    bob_secret = signing.key_secret(CALLBACK_SECRET, "bob")
    header = delivery.headers["X-Compose-Signature"]
    assert not signing.verify(bob_secret, "bob", delivery.body, header, now=int(signature["t"]))
    assert delivery.headers["X-Compose-Delivery"] == job["metadata"]["uid"]
    payload = json.loads(delivery.body)
    assert payload["jobId"] == name
    assert (payload["status"], payload["event"]) == ("success", "job.succeeded")
    assert payload["message"] == "Image composition completed successfully"
    assert "X-Amz-Signature=" in payload["imageUrl"]

    # Later passes, and a restarted gateway, do not deliver it again.
    assert await _loop(gateway).run_once() == 0
    restarted = await make_gateway(**LOCAL, callback_poll_seconds=600)
    assert await _loop(restarted).run_once() == 0
    assert len(receiver.received) == 1
    view = (await gateway.get(created["statusUrl"])).json()
    assert view["callback"] == {"state": "delivered", "attempts": 1}


async def test_a_failed_job_is_reported_to_the_callback(
    make_gateway: MakeGateway, cluster: cluster_client.ClusterClient, receiver: Receiver
) -> None:
    gateway = await make_gateway(**LOCAL)
    created = (await gateway.post(original_request(callbackUrl=receiver.url))).json()
    await operator_play.fail(
        cluster, created["jobId"], NAMESPACE, reason="NoFaceFound", message="no face"
    )

    await poll(lambda: _count(receiver, 1), timeout=10)
    payload = json.loads(receiver.received[0].body)
    assert (payload["status"], payload["reason"], payload["message"]) == (
        "error",
        "NoFaceFound",
        "no face",
    )
    assert "imageUrl" not in payload


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.received) >= n


async def test_a_failed_delivery_is_retried_with_backoff(
    make_gateway: MakeGateway, cluster: cluster_client.ClusterClient, receiver: Receiver
) -> None:
    clock = ManualClock()
    gateway = await make_gateway(
        {"clock": clock}, **LOCAL, callback_poll_seconds=600, callback_backoff_seconds=30
    )
    loop = _loop(gateway)
    receiver.statuses = [500, 503]
    created = (await gateway.post(original_request(callbackUrl=receiver.url))).json()
    name = created["jobId"]
    assert await loop.run_once() == 0  # still running: nothing to send
    await operator_play.fail(cluster, name, NAMESPACE, reason="InputRejected", message="bad")

    assert await loop.run_once() == 1
    annotations = (await _job(cluster, name))["metadata"]["annotations"]
    assert annotations[naming.CALLBACK_ATTEMPTS_ANNOTATION] == "1"
    assert float(annotations[naming.CALLBACK_NEXT_ANNOTATION]) == clock.now + 30
    assert "HTTP 500" in annotations[naming.CALLBACK_RESULT_ANNOTATION]

    clock.advance(29)
    assert await loop.run_once() == 0  # not due yet
    clock.advance(1)
    assert await loop.run_once() == 1  # 503: the next delay doubles
    annotations = (await _job(cluster, name))["metadata"]["annotations"]
    assert float(annotations[naming.CALLBACK_NEXT_ANNOTATION]) == clock.now + 60

    clock.advance(60)
    assert await loop.run_once() == 1
    job = await _job(cluster, name)
    assert job["metadata"]["labels"][naming.CALLBACK_LABEL] == "delivered"
    assert len(receiver.received) == 3
    assert len({r.headers["X-Compose-Delivery"] for r in receiver.received}) == 1
    # Each attempt is signed with its own time.
    stamps = [r.headers["X-Compose-Signature"].split(",")[0] for r in receiver.received]
    assert stamps == [f"t={int(clock.now - 90)}", f"t={int(clock.now - 60)}", f"t={int(clock.now)}"]


async def test_delivery_gives_up_after_the_last_attempt(
    make_gateway: MakeGateway, cluster: cluster_client.ClusterClient, receiver: Receiver
) -> None:
    clock = ManualClock()
    gateway = await make_gateway(
        {"clock": clock}, **LOCAL, callback_poll_seconds=600, callback_max_attempts=2
    )
    receiver.statuses = [500, 500, 500]
    created = (await gateway.post(original_request(callbackUrl=receiver.url))).json()
    await operator_play.fail(cluster, created["jobId"], NAMESPACE, reason="JobLost", message="x")

    assert await _loop(gateway).run_once() == 1
    clock.advance(3600)
    assert await _loop(gateway).run_once() == 1
    clock.advance(3600)
    assert await _loop(gateway).run_once() == 0

    job = await _job(cluster, created["jobId"])
    assert job["metadata"]["labels"][naming.CALLBACK_LABEL] == "failed"
    assert len(receiver.received) == 2


async def test_a_name_that_later_resolves_to_a_private_address_is_refused_when_sent(
    make_gateway: MakeGateway, cluster: cluster_client.ClusterClient, receiver: Receiver
) -> None:
    # At submit both names are public; by the time the callback is sent, DNS points them at
    # the metadata service and at the local receiver (rebinding between submit and send).
    answers = {"hooks.example.test": ["93.184.215.14"], "meta.example.test": ["93.184.215.14"]}

    def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    # Even an allow-list never opens metadata addresses.
    wide = await make_gateway(
        {"resolver": resolver},
        callback_poll_seconds=600,
        callback_allow_cidrs="127.0.0.0/8,169.254.0.0/16",
    )
    metadata = (
        await wide.post(original_request(callbackUrl="https://meta.example.test/latest"))
    ).json()["jobId"]

    # The default policy: https only, no allow-list; the name will point at the local receiver.
    gateway = await make_gateway({"resolver": resolver}, callback_poll_seconds=600)
    port = receiver.url.split(":")[2].split("/")[0]
    url = f"https://hooks.example.test:{port}/hook"
    loopback = (await gateway.post(original_request(callbackUrl=url))).json()["jobId"]
    answers.update({"hooks.example.test": ["127.0.0.1"], "meta.example.test": ["169.254.169.254"]})
    await operator_play.fail(cluster, metadata, NAMESPACE, reason="NoFaceFound", message="x")
    assert await _loop(wide).run_once() == 1
    await operator_play.fail(cluster, loopback, NAMESPACE, reason="NoFaceFound", message="x")
    assert await _loop(gateway).run_once() == 1

    for name, why in ((metadata, "cloud metadata address"), (loopback, "loopback address")):
        job = await _job(cluster, name)
        assert job["metadata"]["labels"][naming.CALLBACK_LABEL] == "failed"
        result = job["metadata"]["annotations"][naming.CALLBACK_RESULT_ANNOTATION]
        assert result.startswith("refused") and why in result, result
    assert receiver.received == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.1/hook", "loopback address"),
        ("https://2130706433/hook", "loopback address"),
        ("https://0x7f.0.0.1/hook", "loopback address"),
        ("https://2852039166/latest", "cloud metadata address"),
        ("https://localhost/hook", "loopback address"),
        ("https://[::a9fe:a9fe]/latest", "IPv4-compatible IPv6 address"),
        ("https://[::ffff:127.0.0.1]/hook", "IPv4-mapped IPv6 address"),
        ("https://a..b/hook", "not a valid host name"),
        ("https://hooks.example.test/hook", "loopback address"),
    ],
)
async def test_a_callback_url_the_sender_would_refuse_is_422_at_submit(
    make_gateway: MakeGateway, cluster: cluster_client.ClusterClient, url: str, why: str
) -> None:
    def resolver(host: str, port: int) -> list[str]:
        if host == "hooks.example.test":
            return ["127.0.0.53"]
        return netguard.system_resolver(host, port)  # numeric spellings and /etc/hosts only

    gateway = await make_gateway({"resolver": resolver})

    response = await gateway.post(original_request(callbackUrl=url))

    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert error["field"] == "callbackUrl"
    assert why in error["message"]
    assert await cluster.list(COMPOSITION_JOBS, namespace=NAMESPACE) == []


async def test_callbacks_need_a_signing_secret(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway({"callback_secret": None})

    response = await gateway.post(original_request(callbackUrl="https://hooks.example.com/x"))

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "callbackUrl", "message": "callbacks are not enabled on this gateway"}
    ]
    assert gateway.services.callback_loop is None


def test_the_default_policy_refuses_private_and_metadata_literals() -> None:
    policy = netguard.Policy()
    for url in (
        "https://10.1.2.3/",
        "https://[::1]/",
        "https://169.254.169.254/",
        "https://192.168.0.1/",
        "https://[::ffff:10.0.0.1]/",
    ):
        assert translate.check_callback_url(url, policy) is not None, url
    assert translate.check_callback_url("https://hooks.example.com/x", policy) is None
    assert translate.check_callback_url("https://93.184.216.34/x", policy) is None


async def test_two_replicas_deliver_once(
    make_gateway: MakeGateway,
    cluster: cluster_client.ClusterClient,
    receiver: Receiver,
    gateway_cluster: GatewayCluster,
) -> None:
    since = gateway_cluster.plane.audit_offset()
    first = await make_gateway(**LOCAL, callback_poll_seconds=600)
    second = await make_gateway(**LOCAL, callback_poll_seconds=600)
    names = []
    for _ in range(3):
        created = (await first.post(original_request(callbackUrl=receiver.url))).json()
        await operator_play.fail(cluster, created["jobId"], NAMESPACE, reason="JobLost", message="")
        names.append(created["jobId"])

    # Both replicas claim every job from the same read (as when their passes overlap): the
    # claim is conditional on the resourceVersion read, so the API server lets one through.
    read = [await _job(cluster, name) for name in names]
    attempted = await asyncio.gather(
        *(_loop(replica)._deliver(obj) for obj in read for replica in (first, second))
    )
    assert sum(attempted) == 3
    assert sorted(json.loads(r.body)["jobId"] for r in receiver.received) == sorted(names)
    gateway = gateway_cluster.plane.request_records(user=gateway_cluster.user, since=since)
    claims = [r for r in gateway if r.verb == "patch" and r.status == 409]
    assert len(claims) == 3
    # Whole passes after that find nothing due, whichever replica runs them.
    assert await _loop(first).run_once() == await _loop(second).run_once() == 0
    assert len(receiver.received) == 3
