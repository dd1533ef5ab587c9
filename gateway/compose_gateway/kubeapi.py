"""The gateway's Kubernetes API calls: CompositionJobs in one namespace, typed.

Create, get, list (label selector, paginated), merge-patch metadata and delete: exactly the verbs
``permissions.REQUIRED_PERMISSIONS`` grants, over the project's one client
(:class:`compose_api.kube.Client`). In a cluster it authenticates with the pod's service-account
token and trusts the cluster CA. Outside one, ``COMPOSE_KUBE_URL`` names the API server:
``https://...`` with an optional bearer token file (``COMPOSE_KUBE_TOKEN_FILE``, re-read when it
rotates) and CA bundle (``COMPOSE_KUBE_CA_FILE``; unset: the system's trust store), or plain
``http://`` without auth (the emulator of the tests, benchmarks).

The app creates one :class:`KubeClient` in :func:`compose_gateway.app.create_app` and passes it
to the handlers and the callback loop. Errors are :mod:`compose_api.kube`'s: a
:class:`~compose_api.kube.KubeError` carrying the HTTP status (0: no answer) and the API's
``Status`` reason and message, with a subclass per status (``NotFound``, ``Conflict``, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from compose_api import kube, models
from compose_gateway import settings as settings_module

USER_AGENT = "compose-gateway"


class KubeClient:
    """CompositionJobs of one namespace over the Kubernetes REST API."""

    def __init__(
        self, connection: kube.Connection, *, namespace: str, timeout_seconds: float = 10.0
    ) -> None:
        self._api = kube.Client(connection, timeout_seconds=timeout_seconds, user_agent=USER_AGENT)
        self._namespace = namespace
        self._path = kube.path(models.API_VERSION, models.PLURAL, namespace=namespace)

    @classmethod
    def from_settings(cls, settings: settings_module.Settings) -> KubeClient:
        """``COMPOSE_KUBE_URL`` (with its token and CA files) when set, else the service
        account; a CA file that does not load is a :class:`compose_api.kube.ConfigError`."""
        if settings.kube_url:
            connection = kube.Connection(
                server=settings.kube_url,
                token_file=settings.kube_token_file,
                ca_file=settings.kube_ca_file,
            )
        else:
            connection = kube.Connection.in_cluster()
        return cls(
            connection,
            namespace=settings.namespace,
            timeout_seconds=settings.kube_timeout_seconds,
        )

    @property
    def namespace(self) -> str:
        return self._namespace

    async def close(self) -> None:
        await self._api.close()

    def _named(self, name: str) -> str:
        return kube.path(models.API_VERSION, models.PLURAL, namespace=self._namespace, name=name)

    # --- the verbs

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._api.create(self._path, body)

    async def get(self, name: str) -> dict[str, Any]:
        return await self._api.get(self._named(name))

    async def list_page(
        self, *, label_selector: str, limit: int | None = None, continue_: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of jobs matching the selector, and the continue token of the next page."""
        items, token, _ = await self._api.list_page(
            self._path, label_selector=label_selector, limit=limit, continue_=continue_
        )
        return items, token

    async def list_all(self, *, label_selector: str) -> list[dict[str, Any]]:
        """Every job matching the selector, fetched in chunks."""
        items, _ = await self._api.list(self._path, label_selector=label_selector)
        return items

    async def watch_one(
        self, name: str, *, resource_version: str, seconds: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The changes of one job after ``resource_version``, for at most ``seconds``."""
        async for kind, obj in self._api.watch(
            self._path,
            resource_version=resource_version,
            field_selector=f"metadata.name={name}",
            timeout_seconds=seconds,
        ):
            yield kind, obj

    async def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (``metadata.resourceVersion`` in it makes it conditional)."""
        return await self._api.patch(self._named(name), patch)

    async def delete(self, name: str) -> None:
        """Delete the job (:class:`compose_api.kube.NotFound` when it is not there)."""
        await self._api.delete(self._named(name), missing_ok=False)

    async def ping(self) -> None:
        """Raise KubeError unless the API answers a list of this namespace's jobs."""
        await self.list_page(label_selector="app.kubernetes.io/created-by=compose-gateway", limit=1)
