"""The HTTP probes of a pool worker (``compose worker``): ``/healthz`` and ``/readyz``.

``pool_worker`` starts them before it loads its models, on ``COMPOSE_WORKER_PORT``
(``compose_api.pools.PROBE_PORT`` by default), in its own event loop:

- ``/healthz`` (liveness) answers 200 whenever the event loop answers, also while the models
  load (that runs in a thread), so a long first load does not get the container killed;
- ``/readyz`` (readiness) answers 200 only when the worker is warm, its Lease is fresh and it is
  not draining; otherwise 503 with the reason as text.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

# None when ready, else why not (the body of the 503).
Readiness = Callable[[], str | None]


class Probes:
    """An aiohttp server with the two probe paths."""

    def __init__(self, readiness: Readiness, *, port: int, host: str = "0.0.0.0") -> None:
        self._readiness = readiness
        self._port = port
        self._host = host
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        why = self._readiness()
        if why is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {why}\n")
