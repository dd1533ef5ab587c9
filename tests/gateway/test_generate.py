"""POST /generate: the original request and response shapes, async and wait modes, failures."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from compose_gateway import naming
from tests.gateway import operator_play
from tests.gateway.conftest import NAMESPACE, Gateway, MakeGateway, original_request
from tests.support import cluster_client, s3
from tests.support.resources import COMPOSITION_JOBS


async def _result_object(s3_server: s3.S3Server, bucket: str, data: bytes) -> str:
    s3_server.client().put_object(Bucket=bucket, Key="compose/result.png", Body=data)
    return f"s3://{bucket}/compose/result.png"


async def test_the_original_request_creates_a_job(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    response = await gateway.post(original_request())

    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"jobId", "status", "statusUrl"}
    assert body["status"] == "pending"
    assert body["statusUrl"] == f"/jobs/{body['jobId']}"
    assert response.headers["location"] == body["statusUrl"]
    job = await cluster.get(COMPOSITION_JOBS, body["jobId"], namespace=NAMESPACE)
    assert job["metadata"]["labels"][naming.OWNER_LABEL] == "alice"
    inputs = job["spec"]["inputs"]
    assert inputs["person"] == {"uri": "https://example.com/person.jpg"}
    assert [c["uri"] for c in inputs["clothing"]] == [
        "https://example.com/shirt.jpg",
        "https://example.com/pants.jpg",
    ]
    assert inputs["place"] == {"uri": "https://example.com/beach.jpg"}


async def test_optional_parameters_reach_the_spec(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    request = original_request(
        clothingImages=["https://example.com/a.jpg", {"url": "https://example.com/d.jpg",
                                                      "category": "shoes"}],
        prompt="a person on a beach at sunset",
        negativePrompt="blurry",
        seed=7,
        steps=12,
        guidance=4.5,
        width=768,
        height=1280,
        identityStrength=0.9,
        clothingStrength=0.7,
        placeStrength=0.5,
        format="webp",
        reuse=False,
    )  # fmt: skip
    response = await gateway.post(request)

    assert response.status_code == 202, response.text
    spec = (await cluster.get(COMPOSITION_JOBS, response.json()["jobId"], namespace=NAMESPACE))[
        "spec"
    ]
    assert spec["inputs"]["clothing"][1] == {
        "uri": "https://example.com/d.jpg",
        "category": "shoes",
    }
    params = spec["params"]
    assert (params["prompt"], params["negativePrompt"], params["seed"]) == (
        "a person on a beach at sunset",
        "blurry",
        7,
    )
    assert (params["steps"], params["guidance"], params["width"], params["height"]) == (
        12,
        4.5,
        768,
        1280,
    )
    assert (
        params["identityStrength"],
        params["clothingStrength"],
        params["placeStrength"],
    ) == (0.9, 0.7, 0.5)
    assert spec["output"]["format"] == "webp"
    assert spec["output"]["reuse"] is False
    # Images given by URL carry no hash: the inference image hashes what it fetches.
    assert "sha256" not in spec["inputs"]["person"]


async def test_reuse_is_on_unless_the_request_opts_out(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    for given, stored in ((None, True), (True, True), (False, False)):
        extra = {} if given is None else {"reuse": given}
        response = await gateway.post(original_request(**extra))
        assert response.status_code == 202, response.text
        job = await cluster.get(COMPOSITION_JOBS, response.json()["jobId"], namespace=NAMESPACE)
        assert job["spec"]["output"]["reuse"] is stored
    refused = await gateway.post(original_request(reuse="sometimes"))
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["reuse"]


async def test_wait_answers_the_original_success_response(
    gateway: Gateway,
    cluster: cluster_client.ClusterClient,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
) -> None:
    image = b"\x89PNG\r\n\x1a\nthe composed image"
    s3_uri = await _result_object(s3_env, buckets["results"], image)
    request = asyncio.create_task(gateway.post(original_request(), params={"wait": 20}))
    items = await cluster.wait_for_list(
        COMPOSITION_JOBS, lambda items: len(items) == 1, namespace=NAMESPACE
    )
    name = items[0]["metadata"]["name"]
    await operator_play.run(cluster, name, NAMESPACE)
    await operator_play.succeed(cluster, name, NAMESPACE, s3_uri=s3_uri, data=image)
    response = await request

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"imageUrl", "status", "message"}
    assert body["status"] == "success"
    assert body["message"] == "Image composition completed successfully"
    assert response.headers["location"] == f"/jobs/{name}"
    async with httpx.AsyncClient() as plain:
        downloaded = await plain.get(body["imageUrl"])
    assert downloaded.status_code == 200
    assert downloaded.content == image
    assert "X-Amz-Signature=" in body["imageUrl"]
    assert "X-Amz-Expires=3600" in body["imageUrl"]


async def test_cdn_base_url_replaces_presigning(
    make_gateway: MakeGateway, cluster: cluster_client.ClusterClient, buckets: dict[str, str]
) -> None:
    gateway = await make_gateway(cdn_base_url="https://images.example.com/")
    created = (await gateway.post(original_request())).json()
    s3_uri = f"s3://{buckets['results']}/compose/{created['jobId']}/result.png"
    await operator_play.succeed(cluster, created["jobId"], NAMESPACE, s3_uri=s3_uri)

    view = (await gateway.get(created["statusUrl"])).json()
    assert view["result"]["imageUrl"] == (
        f"https://images.example.com/compose/{created['jobId']}/result.png"
    )


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("NoFaceFound", 422),
        ("InputRejected", 422),
        ("InputUnavailable", 422),
        ("ContentRejected", 422),
        ("ModelLoadFailed", 502),
        ("BackoffLimitExceeded", 502),
        ("DeadlineExceeded", 504),
    ],
)
async def test_wait_answers_a_failure_with_its_reason(
    gateway: Gateway, cluster: cluster_client.ClusterClient, reason: str, code: int
) -> None:
    request = asyncio.create_task(
        gateway.post(original_request(), headers={"Prefer": "respond-async, wait=20"})
    )
    items = await cluster.wait_for_list(
        COMPOSITION_JOBS, lambda items: len(items) == 1, namespace=NAMESPACE
    )
    name = items[0]["metadata"]["name"]
    await operator_play.fail(cluster, name, NAMESPACE, reason=reason, message=f"it was {reason}")
    response = await request

    assert response.status_code == code
    assert response.json() == {
        "status": "error",
        "reason": reason,
        "message": f"it was {reason}",
        "jobId": name,
    }
    assert response.headers["preference-applied"] == "wait=20"


async def test_an_expired_wait_answers_202_with_the_job(gateway: Gateway) -> None:
    response = await gateway.post(original_request(), params={"wait": 0.2})

    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"jobId", "status", "statusUrl"}
    assert body["status"] == "pending"


async def test_the_wait_is_capped_by_the_settings(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(max_wait_seconds=0.1)
    response = await gateway.post(original_request(), headers={"Prefer": "wait=3600"})

    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=0.1"


async def test_a_job_deleted_while_waiting_is_gone(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    request = asyncio.create_task(gateway.post(original_request(), params={"wait": 20}))
    items = await cluster.wait_for_list(
        COMPOSITION_JOBS, lambda items: len(items) == 1, namespace=NAMESPACE
    )
    await cluster.delete(COMPOSITION_JOBS, items[0]["metadata"]["name"], namespace=NAMESPACE)
    response = await request

    assert response.status_code == 410
    assert response.json()["reason"] == "Cancelled"


async def test_json_error_responses_share_one_shape(gateway: Gateway) -> None:
    bodies: list[Any] = []
    for response in (
        await gateway.client.post("/generate", json=original_request()),
        await gateway.post({"personImage": "x"}),
        await gateway.get("/jobs/gw-00000000000000000000"),
        await gateway.get("/nowhere"),
    ):
        bodies.append(response.json())
    assert [b["status"] for b in bodies] == ["error"] * 4
    assert [b["reason"] for b in bodies] == ["Unauthorized", "InvalidRequest", "NotFound",
                                              "NotFound"]  # fmt: skip
    assert all(isinstance(b["message"], str) and b["message"] for b in bodies)


async def test_a_job_runs_on_the_default_pool_or_on_an_offered_one(
    make_gateway: MakeGateway, cluster: cluster_client.ClusterClient
) -> None:
    gateway = await make_gateway(default_pool="interactive", pools=["batch"])
    response = await gateway.post(original_request())
    assert response.status_code == 202, response.text
    job = await cluster.get(COMPOSITION_JOBS, response.json()["jobId"], namespace=NAMESPACE)
    assert job["spec"]["execution"]["pool"] == "interactive"
    chosen = await gateway.post(original_request(pool="batch"))
    assert chosen.status_code == 202, chosen.text
    job = await cluster.get(COMPOSITION_JOBS, chosen.json()["jobId"], namespace=NAMESPACE)
    assert job["spec"]["execution"]["pool"] == "batch"
    elsewhere = "s3://someone-elses-bucket/person.jpg"
    refused = await gateway.post(original_request(pool="gpu-hoarder", personImage=elsewhere))
    assert refused.status_code == 422
    fields = {item["field"]: item["message"] for item in refused.json()["errors"]}
    assert fields["pool"] == "'gpu-hoarder' is not offered here (batch, interactive)"
    assert "personImage" in fields  # named together with the request's other problems


async def test_without_pools_a_request_naming_one_is_refused(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    response = await gateway.post(original_request(pool="interactive"))
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "pool", "message": "'interactive' is not offered here (none)"}
    ]
    plain = await gateway.post(original_request())
    job = await cluster.get(COMPOSITION_JOBS, plain.json()["jobId"], namespace=NAMESPACE)
    assert "pool" not in job["spec"].get("execution", {})  # a Job per attempt, as before
