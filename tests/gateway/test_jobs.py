"""GET /jobs/{id}, GET /jobs (history, paginated, newest first), DELETE /jobs/{id}; and that one
key never sees or cancels another key's jobs."""

from __future__ import annotations

import json

from compose_gateway import naming
from tests.gateway import operator_play
from tests.gateway.conftest import BOB_KEY, NAMESPACE, Gateway, MakeGateway, original_request
from tests.support import cluster_client, s3
from tests.support import kube_emulator as emulation
from tests.support.kube_fixtures import kube_emulator_thread
from tests.support.resources import COMPOSITION_JOBS

__all__ = ["kube_emulator_thread"]


async def test_job_status_follows_the_job(
    gateway: Gateway,
    cluster: cluster_client.ClusterClient,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
) -> None:
    created = (await gateway.post(original_request())).json()
    name = created["jobId"]

    pending = (await gateway.get(created["statusUrl"])).json()
    assert (pending["jobId"], pending["status"], pending["phase"]) == (name, "pending", "Pending")
    assert "result" not in pending

    await operator_play.run(cluster, name, NAMESPACE)
    running = (await gateway.get(created["statusUrl"])).json()
    assert (running["status"], running["reason"]) == ("running", "Running")
    assert running["message"] == "pod gw-0 is running on ip-10-0-0-1"
    assert [c["type"] for c in running["conditions"]] == ["Accepted", "Started"]

    s3_env.client().put_object(Bucket=buckets["results"], Key="r/result.png", Body=b"image")
    await operator_play.succeed(
        cluster, name, NAMESPACE, s3_uri=f"s3://{buckets['results']}/r/result.png", data=b"image"
    )
    done = (await gateway.get(created["statusUrl"])).json()
    assert (done["status"], done["phase"], done["reason"]) == ("success", "Succeeded", "Completed")
    assert done["timings"] == {"fetch": 0.4, "inference": 11.5, "upload": 0.2, "total": 14.0}
    assert done["completedAt"].startswith("2026-01-01T00:11:00")
    assert done["attempts"] == 1
    result = done["result"]
    assert result["s3Uri"] == f"s3://{buckets['results']}/r/result.png"
    assert (result["width"], result["height"], result["seed"], result["bytes"]) == (
        1024,
        1024,
        42,
        5,
    )
    assert "X-Amz-Signature=" in result["imageUrl"]
    assert result["reused"] is False


async def test_a_reused_result_says_so(
    gateway: Gateway,
    cluster: cluster_client.ClusterClient,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
) -> None:
    """The source job is not named: it may be another key's."""
    name = (await gateway.post(original_request())).json()["jobId"]
    s3_env.client().put_object(Bucket=buckets["results"], Key="r/again.png", Body=b"image")
    earlier = {"namespace": NAMESPACE, "name": "gw-earlier", "uid": "uid-earlier"}
    await operator_play.succeed(
        cluster, name, NAMESPACE, s3_uri=f"s3://{buckets['results']}/r/again.png",
        data=b"image", reused_from=earlier,
    )  # fmt: skip
    done = (await gateway.get(f"/jobs/{name}")).json()
    assert done["result"]["reused"] is True
    assert "gw-earlier" not in json.dumps(done)


async def test_a_failed_job_reports_its_reason(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    created = (await gateway.post(original_request())).json()
    await operator_play.fail(
        cluster, created["jobId"], NAMESPACE, reason="NoFaceFound", message="no face in person"
    )

    view = (await gateway.get(created["statusUrl"])).json()
    assert (view["status"], view["phase"]) == ("error", "Failed")
    assert (view["reason"], view["message"]) == ("NoFaceFound", "no face in person")


async def test_a_bad_continue_token_names_the_field(gateway: Gateway) -> None:
    response = await gateway.get("/jobs", params={"continue": "not-a-token"})

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "continue"


async def test_cancel_deletes_the_job(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    created = (await gateway.post(original_request())).json()

    response = await gateway.client.delete(
        created["statusUrl"], headers={"Authorization": "Bearer " + BOB_KEY}
    )
    assert response.status_code == 404
    assert await cluster.get_or_none(COMPOSITION_JOBS, created["jobId"], namespace=NAMESPACE)

    response = await gateway.client.delete(
        created["statusUrl"],
        headers={"X-API-Key": "cgw_alice-0123456789abcdefghijklmnopqrstuvwxyz"},
    )
    assert response.status_code == 200
    assert response.json() == {"jobId": created["jobId"], "status": "cancelled"}
    assert (
        await cluster.get_or_none(COMPOSITION_JOBS, created["jobId"], namespace=NAMESPACE) is None
    )
    assert (await gateway.get(created["statusUrl"])).status_code == 404


async def test_another_key_cannot_see_a_job(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    created = (await gateway.post(original_request())).json()

    assert (await gateway.get(created["statusUrl"], key=BOB_KEY)).status_code == 404
    assert (await gateway.get("/jobs", key=BOB_KEY)).json()["items"] == []
    job = await cluster.get(COMPOSITION_JOBS, created["jobId"], namespace=NAMESPACE)
    assert job["metadata"]["labels"][naming.OWNER_LABEL] == "alice"


async def test_jobs_not_made_by_the_gateway_are_not_found(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    body = {
        "apiVersion": "compose.nextunicorn.dev/v1alpha1",
        "kind": "CompositionJob",
        "metadata": {"name": "hand-made", "namespace": NAMESPACE},
        "spec": {
            "inputs": {
                "person": {"uri": "https://example.com/p.jpg"},
                "clothing": [{"uri": "https://example.com/c.jpg"}],
                "place": {"uri": "https://example.com/b.jpg"},
            }
        },
    }
    await cluster.create(COMPOSITION_JOBS, body, namespace=NAMESPACE)

    assert (await gateway.get("/jobs/hand-made")).status_code == 404
    response = await gateway.client.delete("/jobs/hand-made", headers={"X-API-Key": BOB_KEY})
    assert response.status_code == 404
    assert await cluster.get_or_none(COMPOSITION_JOBS, "hand-made", namespace=NAMESPACE)


async def test_an_unreadable_job_is_a_502_not_a_crash(
    make_gateway: MakeGateway, kube_emulator_thread: emulation.EmulatorThread
) -> None:
    # On the emulator, not the real control plane: the API server's schema refuses the broken
    # status below, so a real cluster shows this only when its CRD is newer than the gateway.
    gateway = await make_gateway(
        kube_url=kube_emulator_thread.url, kube_token_file=None, kube_ca_file=None
    )
    created = (await gateway.post(original_request())).json()
    # A status no operator of this project writes: a condition without its required fields.
    async with cluster_client.ClusterClient.at(
        kube_emulator_thread.url, namespace=NAMESPACE
    ) as cluster:
        await cluster.patch_status(
            COMPOSITION_JOBS,
            created["jobId"],
            {"phase": "Running", "conditions": [{"type": "Started", "status": "True"}]},
            namespace=NAMESPACE,
        )

    response = await gateway.get(created["statusUrl"])
    assert response.status_code == 502
    assert response.json()["reason"] == "UnreadableJob"
    assert (await gateway.get(created["statusUrl"], key=BOB_KEY)).status_code == 404
