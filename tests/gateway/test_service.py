"""Health, readiness, metrics, CORS and the OpenAPI document."""

from __future__ import annotations

import httpx
import pydantic
import pytest

from compose_gateway import app as app_module
from compose_gateway import settings as settings_module
from tests.gateway.conftest import Gateway, MakeGateway, original_request


async def test_health_and_readiness(gateway: Gateway) -> None:
    assert (await gateway.client.get("/healthz")).json() == {"status": "ok"}
    assert (await gateway.client.get("/readyz")).json() == {"status": "ok"}


async def test_not_ready_without_the_cluster(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(
        kube_url="http://127.0.0.1:9",
        kube_token_file=None,
        kube_ca_file=None,
        kube_timeout_seconds=2,
    )

    response = await gateway.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reason"] == "NotReady"
    assert (await gateway.client.get("/healthz")).status_code == 200
    # A request that needs the cluster says so, as a 503 rather than a crash.
    created = await gateway.post(original_request())
    assert created.status_code == 503
    assert created.json()["reason"] == "KubernetesUnavailable"


async def _metrics(gateway: Gateway) -> httpx.Response:
    transport = httpx.ASGITransport(app=app_module.metrics_app(gateway.app))
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics.test") as client:
        return await client.get("/metrics")


async def test_metrics_count_requests_by_route_on_their_own_port(gateway: Gateway) -> None:
    await gateway.post(original_request())
    await gateway.get("/jobs/gw-00000000000000000000")

    text = (await _metrics(gateway)).text
    assert 'compose_gateway_requests_total{code="202",method="POST",route="/generate"} 1.0' in text
    assert 'compose_gateway_requests_total{code="404",method="GET",route="/jobs/{job_id}"} 1.0' in (
        text
    )
    assert 'compose_gateway_jobs_created_total{input="json"} 1.0' in text
    # Not on the API's port, where the Ingress routes.
    assert (await gateway.client.get("/metrics")).status_code == 404


def test_the_metrics_port_must_differ_from_the_api_port() -> None:
    with pytest.raises(pydantic.ValidationError, match="metrics_port"):
        settings_module.Settings(port=8080, metrics_port=8080)
    assert settings_module.Settings(port=8080, metrics_port=8080, metrics_enabled=False)


async def test_cors_allows_only_the_configured_origins(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(cors_origins="https://app.example.com")
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
    }

    allowed = await gateway.client.options(
        "/generate", headers={"Origin": "https://app.example.com", **preflight}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    refused = await gateway.client.options(
        "/generate", headers={"Origin": "https://evil.example.com", **preflight}
    )
    assert "access-control-allow-origin" not in refused.headers


async def test_the_openapi_document_describes_the_original_contract(gateway: Gateway) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    generate = document["paths"]["/generate"]["post"]
    body = generate["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["application/json"]["schema"]["required"] == [
        "personImage",
        "clothingImages",
        "placeImage",
    ]
    assert {"200", "202", "401", "413", "422", "429"} <= set(generate["responses"])
    schemes = document["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
