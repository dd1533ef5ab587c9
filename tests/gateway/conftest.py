"""Fixtures of the gateway tests: the emulated cluster, the S3 server, API keys, the app.

The gateway runs in-process (its ASGI app behind an httpx client, lifespan included) against
the Kubernetes emulator (tests/support/kube_emulator.py, in its own thread) and the moto S3 server;
tests play the operator by patching CompositionJob status through ``kube`` (tests/support).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from compose_gateway import app as app_module
from compose_gateway import auth, routes
from compose_gateway import settings as settings_module
from tests.support import kube_client, s3
from tests.support import kube_emulator as emulation
from tests.support.kube_fixtures import kube, kube_url  # noqa: F401

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


class SteppingClock:
    """The emulator's clock: one second later at every reading, so creation order shows in
    ``creationTimestamp`` (which has one-second resolution) without sleeping."""

    def __init__(self) -> None:
        self._now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime.datetime:
        with self._lock:
            self._now += datetime.timedelta(seconds=1)
            return self._now


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def kube_emulator_thread() -> Iterator[emulation.EmulatorThread]:
    """The emulator of the shared fixtures, with a clock that steps on every reading."""
    thread = emulation.EmulatorThread(clock=SteppingClock())
    with thread:
        yield thread


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
    kube_url: str,  # noqa: F811
    s3_env: s3.S3Server,
    buckets: dict[str, str],
    key_file: Any,
) -> AsyncIterator[MakeGateway]:
    """Build gateways with settings overrides (and create_app keyword arguments)."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(app_kwargs: dict[str, Any] | None = None, **overrides: Any) -> Gateway:
            values: dict[str, Any] = {
                "namespace": NAMESPACE,
                "kube_url": kube_url,
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
def cluster(kube: kube_client.KubeClient) -> kube_client.KubeClient:  # noqa: F811
    """The test's own client on the emulated cluster (to play the operator and to look)."""
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
