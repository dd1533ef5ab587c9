"""History: pages read from the API server one page at a time, newest first; per-key quotas on
outstanding and retained jobs; the retention TTL written into new jobs."""

from __future__ import annotations

from typing import Any

from compose_api import kube
from compose_gateway import jobs, kubeapi, naming
from tests.gateway import operator_play
from tests.gateway.conftest import (
    ALICE_KEY,
    BOB_KEY,
    NAMESPACE,
    Gateway,
    GatewayCluster,
    MakeGateway,
    ManualClock,
    original_request,
)
from tests.support import cluster_client
from tests.support.resources import COMPOSITION_JOBS


class CountingKubeClient(kubeapi.KubeClient):
    """The real client, recording how many objects each list of alice's jobs returned (the
    callback loop's lists of pending callbacks are left out)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listed: list[int] = []

    async def list_page(
        self, *, label_selector: str, limit: int | None = None, continue_: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        items, token = await super().list_page(
            label_selector=label_selector, limit=limit, continue_=continue_
        )
        if label_selector == naming.owner_selector("alice"):
            self.listed.append(len(items))
        return items, token


async def _gateway(make_gateway: MakeGateway, cluster: GatewayCluster, **overrides: Any) -> Gateway:
    client = CountingKubeClient(
        kube.Connection(
            server=cluster.plane.url,
            token_file=cluster.token_file,
            ca_file=cluster.plane.pki.ca_cert,
        ),
        namespace=NAMESPACE,
    )
    clock = ManualClock(start=1_767_225_600.0)
    monotonic = ManualClock()
    return await make_gateway(
        {"kube_client": client, "clock": clock, "monotonic": monotonic}, **overrides
    )


async def _submit(gateway: Gateway, count: int, **kwargs: Any) -> list[str]:
    names = []
    clock = gateway.services.jobs._clock
    for _ in range(count):
        response = await gateway.post(original_request(), **kwargs)
        assert response.status_code == 202, response.text
        names.append(response.json()["jobId"])
        clock.advance(0.002)  # type: ignore[attr-defined]
    return names


async def test_history_is_paged_by_the_api_server_newest_first(
    make_gateway: MakeGateway, gateway_cluster: GatewayCluster
) -> None:
    gateway = await _gateway(make_gateway, gateway_cluster)
    names = await _submit(gateway, 5)
    await gateway.post(original_request(), key=BOB_KEY)
    client = gateway.services.kube
    assert isinstance(client, CountingKubeClient)
    client.listed.clear()

    pages: list[list[str]] = []
    token = None
    while True:
        params = {"limit": 2} | ({"continue": token} if token else {})
        body = (await gateway.get("/jobs", params=params)).json()
        pages.append([item["jobId"] for item in body["items"]])
        token = body.get("continue")
        if not token:
            break

    assert pages == [names[4:2:-1], names[2:0:-1], names[0:1]]
    # Each page read pages of at most `limit` from the API server, never every job of the key.
    # (The real API server may answer a page with fewer items, even none, and a continue token:
    # it filters by label after reading `limit` keys.)
    assert all(count <= 2 for count in client.listed), client.listed
    assert sum(client.listed) == 5


async def test_idempotent_jobs_come_after_the_others(
    make_gateway: MakeGateway, gateway_cluster: GatewayCluster
) -> None:
    gateway = await _gateway(make_gateway, gateway_cluster)
    keyed = await _submit(gateway, 1, headers={"Idempotency-Key": "k-1"})
    plain = await _submit(gateway, 2)

    body = (await gateway.get("/jobs")).json()

    assert [item["jobId"] for item in body["items"]] == [plain[1], plain[0], keyed[0]]


async def test_a_bad_continue_token_from_the_api_server_names_the_field(gateway: Gateway) -> None:
    response = await gateway.get("/jobs", params={"continue": "eyJ2IjoieCJ9"})

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "continue", "message": "not a continue token from a previous page"}
    ]


async def test_outstanding_jobs_beyond_the_quota_are_429_until_one_finishes(
    make_gateway: MakeGateway,
    gateway_cluster: GatewayCluster,
    cluster: cluster_client.ClusterClient,
) -> None:
    gateway = await _gateway(make_gateway, gateway_cluster, max_outstanding_jobs_per_key=2)
    names = await _submit(gateway, 2)

    refused = await gateway.post(original_request())
    other_key = await gateway.post(original_request(), key=BOB_KEY)
    await operator_play.succeed(cluster, names[0], NAMESPACE, s3_uri="s3://results/a.png")
    after = await gateway.post(original_request())

    assert refused.status_code == 429
    assert refused.json()["reason"] == "QuotaExceeded"
    assert "2 jobs queued or running" in refused.json()["message"]
    assert refused.headers["Retry-After"] == "30"
    assert other_key.status_code == 202
    assert after.status_code == 202
    jobs = await cluster.list(COMPOSITION_JOBS, namespace=NAMESPACE)
    assert len(jobs) == 4  # the refused request created nothing
    # The finished job lost its outstanding label when it was counted: the list stays short.
    finished = await cluster.get(COMPOSITION_JOBS, names[0], namespace=NAMESPACE)
    assert naming.OUTSTANDING_LABEL not in finished["metadata"]["labels"]
    running = await cluster.get(COMPOSITION_JOBS, names[1], namespace=NAMESPACE)
    assert running["metadata"]["labels"][naming.OUTSTANDING_LABEL] == "true"


async def test_retained_jobs_beyond_the_quota_are_429_until_one_is_deleted(
    make_gateway: MakeGateway,
    gateway_cluster: GatewayCluster,
    cluster: cluster_client.ClusterClient,
) -> None:
    gateway = await _gateway(make_gateway, gateway_cluster, max_retained_jobs_per_key=3)
    names = await _submit(gateway, 3)
    for name in names:
        await operator_play.fail(cluster, name, NAMESPACE, reason="NoFaceFound", message="x")
    client = gateway.services.kube
    assert isinstance(client, CountingKubeClient)
    client.listed.clear()

    refused = await gateway.post(original_request())
    assert client.listed == []  # counted once, then kept up to date by the creations
    assert (await gateway.client.delete(f"/jobs/{names[0]}", headers=_alice())).status_code == 200
    after = await gateway.post(original_request())

    assert refused.status_code == 429
    assert "keeps 3 jobs" in refused.json()["message"]
    assert "Retry-After" not in refused.headers
    assert after.status_code == 202


async def test_the_retained_count_is_taken_again_after_a_while(
    make_gateway: MakeGateway,
    gateway_cluster: GatewayCluster,
    cluster: cluster_client.ClusterClient,
) -> None:
    gateway = await _gateway(make_gateway, gateway_cluster, max_retained_jobs_per_key=2)
    names = await _submit(gateway, 2)
    assert (await gateway.post(original_request())).status_code == 429
    # Deleted behind this replica's back (another replica, the operator's retention).
    for name in names:
        await cluster.delete(COMPOSITION_JOBS, name, namespace=NAMESPACE)

    still = await gateway.post(original_request())
    gateway.app.state.services.jobs._monotonic.advance(jobs.RETAINED_RECOUNT_SECONDS)
    recounted = await gateway.post(original_request())

    assert still.status_code == 429
    assert recounted.status_code == 202


async def test_a_replay_is_not_refused_by_a_full_quota(
    make_gateway: MakeGateway, gateway_cluster: GatewayCluster
) -> None:
    gateway = await _gateway(make_gateway, gateway_cluster, max_outstanding_jobs_per_key=1)
    first = await gateway.post(original_request(), headers={"Idempotency-Key": "once"})
    again = await gateway.post(original_request(), headers={"Idempotency-Key": "once"})
    new = await gateway.post(original_request(), headers={"Idempotency-Key": "twice"})

    assert first.status_code == again.status_code == 202
    assert again.json()["jobId"] == first.json()["jobId"]
    assert new.status_code == 429


async def test_new_jobs_carry_the_configured_retention(
    make_gateway: MakeGateway, cluster: cluster_client.ClusterClient
) -> None:
    gateway = await make_gateway(job_ttl_seconds_after_finished=86400)
    default = await make_gateway()

    kept = (await gateway.post(original_request())).json()["jobId"]
    unset = (await default.post(original_request())).json()["jobId"]

    job = await cluster.get(COMPOSITION_JOBS, kept, namespace=NAMESPACE)
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    job = await cluster.get(COMPOSITION_JOBS, unset, namespace=NAMESPACE)
    assert "ttlSecondsAfterFinished" not in job["spec"]


def _alice() -> dict[str, str]:
    return {"X-API-Key": ALICE_KEY}
