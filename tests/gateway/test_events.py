"""GET /jobs/{id}/events: Server-Sent Events of a job's status, read while they stream from a
gateway served over HTTP, as the operator moves the job along; and the result's download URL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.gateway import operator_play, serving
from tests.gateway.conftest import (
    ALICE_KEY,
    BOB_KEY,
    NAMESPACE,
    Gateway,
    MakeGateway,
    original_request,
)
from tests.support import cluster_client, s3
from tests.support.resources import COMPOSITION_JOBS

Event = tuple[str, Any]


async def _events(response: httpx.Response) -> AsyncIterator[Event]:
    """(event name, decoded data) of each event; ("retry", ms) and ("comment", text) too."""
    name, data = "message", []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("retry: "):
            yield "retry", int(line.removeprefix("retry: "))
        elif line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))


async def _next_status(events: AsyncIterator[Event]) -> dict[str, Any]:
    async for name, data in events:
        if name == "status":
            found: dict[str, Any] = data
            return found
        assert name in {"retry", "comment"}, (name, data)
    raise AssertionError("the stream ended before a status event")


async def test_events_follow_a_job_to_its_result(
    make_gateway: MakeGateway,
    cluster: cluster_client.ClusterClient,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
) -> None:
    gateway = await make_gateway(job_poll_seconds=0.05)
    job_id = (await gateway.post(original_request())).json()["jobId"]
    s3_env.client().put_object(Bucket=buckets["results"], Key="r/out.png", Body=b"the image")

    async with (
        serving.serve(gateway.app) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as client,
        client.stream(
            "GET", f"/jobs/{job_id}/events", headers={"Authorization": f"Bearer {ALICE_KEY}"}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        events = _events(response)
        assert await anext(events) == ("retry", 2000)

        pending = await _next_status(events)
        assert (pending["jobId"], pending["status"], pending["phase"]) == (
            job_id,
            "pending",
            "Pending",
        )

        await operator_play.run(cluster, job_id, NAMESPACE)
        running = await _next_status(events)
        assert (running["status"], running["reason"]) == ("running", "Running")
        assert [c["type"] for c in running["conditions"]] == ["Accepted", "Started"]

        uri = f"s3://{buckets['results']}/r/out.png"
        await operator_play.succeed(cluster, job_id, NAMESPACE, s3_uri=uri, data=b"the image")
        done = await _next_status(events)
        assert (done["status"], done["reason"]) == ("success", "Completed")
        assert done["timings"]["inference"] == 11.5
        assert await anext(events) == ("end", {"jobId": job_id, "status": "success"})
        assert [event async for event in events] == []  # and the stream closes

        image = await client.get(done["result"]["imageUrl"])
        assert image.content == b"the image"
        download = await client.get(done["result"]["downloadUrl"])
        assert download.content == b"the image"
        assert download.headers["content-disposition"] == f'attachment; filename="{job_id}.png"'


async def test_a_deleted_job_ends_its_stream_with_gone(
    make_gateway: MakeGateway, cluster: cluster_client.ClusterClient
) -> None:
    gateway = await make_gateway(job_poll_seconds=0.05)
    job_id = (await gateway.post(original_request())).json()["jobId"]

    async with (
        serving.serve(gateway.app) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as client,
        client.stream("GET", f"/jobs/{job_id}/events", headers={"X-API-Key": ALICE_KEY}) as got,
    ):
        events = _events(got)
        assert (await _next_status(events))["status"] == "pending"
        await cluster.delete(COMPOSITION_JOBS, job_id, namespace=NAMESPACE)
        rest = [event async for event in events if event[0] != "comment"]

    gone = {"jobId": job_id, "reason": "Cancelled", "message": "the job was deleted"}
    assert rest == [("gone", gone)]


async def test_an_ended_job_streams_its_status_and_end_at_once(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    job_id = (await gateway.post(original_request())).json()["jobId"]
    await operator_play.fail(cluster, job_id, NAMESPACE, reason="NoFaceFound", message="no face")

    response = await gateway.get(f"/jobs/{job_id}/events")

    names = [line for line in response.text.splitlines() if line.startswith("event: ")]
    assert names == ["event: status", "event: end"]
    assert '"reason":"NoFaceFound"' in response.text
    last = response.text.rstrip("\n").rsplit("\n", 1)[1]
    assert json.loads(last.removeprefix("data: ")) == {"jobId": job_id, "status": "error"}


async def test_a_stream_closes_at_its_time_limit_for_the_client_to_reconnect(
    make_gateway: MakeGateway,
) -> None:
    gateway = await make_gateway(job_poll_seconds=0.05, events_max_seconds=0.3)
    job_id = (await gateway.post(original_request())).json()["jobId"]

    response = await gateway.get(f"/jobs/{job_id}/events")

    assert response.status_code == 200
    assert response.text.startswith("retry: 2000\n\nevent: status\n")
    # One status (nothing changed), no end: the job goes on; the client reconnects.
    assert response.text.count("event: ") == 1


async def test_events_of_another_keys_job_are_not_found(gateway: Gateway) -> None:
    job_id = (await gateway.post(original_request())).json()["jobId"]

    response = await gateway.get(f"/jobs/{job_id}/events", key=BOB_KEY)

    assert response.status_code == 404
    assert response.json()["reason"] == "NotFound"
    assert (await gateway.client.get(f"/jobs/{job_id}/events")).status_code == 401


async def test_a_cdn_result_has_no_download_url(
    make_gateway: MakeGateway,
    cluster: cluster_client.ClusterClient,
    buckets: dict[str, str],
) -> None:
    gateway = await make_gateway(cdn_base_url="https://cdn.example.com")
    job_id = (await gateway.post(original_request(format="jpeg"))).json()["jobId"]
    uri = f"s3://{buckets['results']}/r/out.jpg"
    await operator_play.succeed(cluster, job_id, NAMESPACE, s3_uri=uri)

    result = (await gateway.get(f"/jobs/{job_id}")).json()["result"]

    assert result["imageUrl"] == "https://cdn.example.com/r/out.jpg"
    assert "downloadUrl" not in result
