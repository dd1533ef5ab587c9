"""Fixtures of the gateway tests: the real test cluster, the S3 server, API keys, the app.

The gateway runs in-process (its ASGI app behind an httpx client, lifespan included) against
the real test control plane (tests/support/control_plane.py), authenticated with the token of a
service account that has exactly the chart's gateway Role, and the moto S3 server; tests play
the operator by patching CompositionJob status through ``kube`` (a cluster-admin client).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from compose_api import models
from compose_gateway import app as app_module
from compose_gateway import auth, routes
from compose_gateway import settings as settings_module
from tests.support import cluster_client, s3
from tests.support import control_plane as cp
from tests.support.cluster_fixtures import control_plane, kubectl_path

__all__ = ["control_plane"]

NAMESPACE = "compose"
ALICE_KEY = "cgw_alice-0123456789abcdefghijklmnopqrstuvwxyz"
BOB_KEY = "cgw_bob~0123456789abcdefghijklmnopqrstuvwxyz0"
CALLBACK_SECRET = b"callback-signing-secret-for-tests"
KEY_FILE = "\n".join(
    [
        f"alice: sha256:{hashlib.sha256(ALICE_KEY.encode()).hexdigest()}",
        f"bob: {auth.hash_key(BOB_KEY, scheme='scrypt')}",
    ]
)


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass(frozen=True)
class GatewayCluster:
    """The session's real control plane, the gateway's namespace and its credentials."""

    plane: cp.ControlPlane
    user: str  # the gateway service account, as the API server names it in the audit log
    token_file: pathlib.Path


def _chart_gateway_rbac() -> list[dict[str, Any]]:
    """The chart's gateway ServiceAccount, Role and RoleBinding for NAMESPACE."""
    helm = str(pathlib.Path(kubectl_path()).with_name("helm"))
    done = subprocess.run(
        [helm, "template", "nextunicorn-compose", str(cp.REPO / "charts" / "nextunicorn-compose"),
         "--namespace", NAMESPACE, "--set", "gateway.enabled=true",
         "--set", "gateway.apiKeysSecret.name=keys",
         "--set", "networkPolicy.apiServerCidrs[0]=127.0.0.1/32"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return [
        d
        for d in yaml.safe_load_all(done.stdout)
        if d
        and d["kind"] in {"ServiceAccount", "Role", "RoleBinding"}
        and d["metadata"]["name"].endswith("-gateway")
    ]


@pytest.fixture(scope="session")
def gateway_cluster(
    control_plane: cp.ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> GatewayCluster:
    """NAMESPACE with exactly the chart's gateway RBAC, and a token of its service account."""
    control_plane.create_namespace(NAMESPACE)
    objects = _chart_gateway_rbac()
    subprocess.run(
        [kubectl_path(), "apply", "-f", "-"],
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        capture_output=True, text=True, env=control_plane.kubectl_env(), check=True, timeout=60,
    )  # fmt: skip
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    token_file = tmp_path_factory.mktemp("gateway") / "token"
    token_file.write_text(control_plane.service_account_token(NAMESPACE, account))
    return GatewayCluster(control_plane, f"system:serviceaccount:{NAMESPACE}:{account}", token_file)


@pytest.fixture
def kube_url(gateway_cluster: GatewayCluster) -> str:
    return gateway_cluster.plane.url


@pytest.fixture(autouse=True)
def _empty_namespace(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every CompositionJob in NAMESPACE is deleted after each test that used the cluster, so
    each test starts from an empty namespace."""
    yield
    if "gateway_cluster" not in request.fixturenames:
        return
    plane: cp.ControlPlane = request.getfixturevalue("gateway_cluster").plane
    path = f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{NAMESPACE}/{models.PLURAL}"
    plane.request("DELETE", path)
    deadline = time.monotonic() + 30
    while plane.request("GET", path)["items"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"CompositionJobs left in {NAMESPACE} after 30 s")
        time.sleep(0.1)


@pytest_asyncio.fixture
async def kube(gateway_cluster: GatewayCluster) -> AsyncIterator[cluster_client.ClusterClient]:
    """A cluster-admin test client in NAMESPACE."""
    async with gateway_cluster.plane.admin(NAMESPACE) as client:
        yield client


@pytest.fixture
def key_file(tmp_path: Any) -> Any:
    path = tmp_path / "api-keys.yaml"
    path.write_text(KEY_FILE)
    return path


@dataclasses.dataclass
class Gateway:
    """A running gateway app and a client on it."""

    app: Any
    client: httpx.AsyncClient
    settings: settings_module.Settings
    services: routes.Services

    async def post(self, body: Any, *, key: str = ALICE_KEY, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        return await self.client.post("/generate", json=body, headers=headers, **kwargs)

    async def get(self, path: str, *, key: str = ALICE_KEY, **kwargs: Any) -> httpx.Response:
        headers = {"X-API-Key": key, **kwargs.pop("headers", {})}
        return await self.client.get(path, headers=headers, **kwargs)


MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def buckets(s3_env: s3.S3Server) -> dict[str, str]:
    return {"inputs": s3_env.new_bucket("inputs"), "results": s3_env.new_bucket("results")}


@pytest_asyncio.fixture
async def make_gateway(
    gateway_cluster: GatewayCluster,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
    key_file: Any,
) -> AsyncIterator[MakeGateway]:
    """Build gateways with settings overrides (and create_app keyword arguments)."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(app_kwargs: dict[str, Any] | None = None, **overrides: Any) -> Gateway:
            values: dict[str, Any] = {
                "namespace": NAMESPACE,
                "kube_url": gateway_cluster.plane.url,
                "kube_token_file": gateway_cluster.token_file,
                "kube_ca_file": gateway_cluster.plane.pki.ca_cert,
                "inputs_bucket": buckets["inputs"],
                "s3_endpoint_url": s3_env.endpoint_url,
                "aws_region": s3.REGION,
                "api_keys_file": key_file,
                "rate_limit_per_minute": 0,
                "job_poll_seconds": 0.02,
                "callback_poll_seconds": 0.05,
                "callback_backoff_seconds": 0.05,
                "callback_timeout_seconds": 5,
            }
            values.update(overrides)
            settings = settings_module.Settings(**values)
            kwargs = {"callback_secret": CALLBACK_SECRET, **(app_kwargs or {})}
            app = app_module.create_app(settings, **kwargs)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
                )
            )
            return Gateway(app=app, client=client, settings=settings, services=app.state.services)

        yield make


@pytest_asyncio.fixture
async def gateway(make_gateway: MakeGateway) -> Gateway:
    return await make_gateway()


@pytest.fixture
def cluster(kube: cluster_client.ClusterClient) -> cluster_client.ClusterClient:
    """The test's own client on the cluster (to play the operator and to look)."""
    return kube


def original_request(**extra: Any) -> dict[str, Any]:
    """The request of the original API's README."""
    return {
        "personImage": "https://example.com/person.jpg",
        "clothingImages": ["https://example.com/shirt.jpg", "https://example.com/pants.jpg"],
        "placeImage": "https://example.com/beach.jpg",
        **extra,
    }


@dataclasses.dataclass
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A callback receiver on 127.0.0.1: records each POST; answers the queued statuses, then
    204."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.statuses: list[int] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 204
        return web.Response(status=status)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    application = web.Application()
    application.router.add_post("/hook", found.handle)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    found.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield found
    finally:
        await runner.cleanup()
