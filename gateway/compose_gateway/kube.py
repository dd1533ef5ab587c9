"""The gateway's only door to the Kubernetes API: CompositionJobs in one namespace.

Create, get, list (label selector, paginated), merge-patch metadata and delete: exactly the verbs
``permissions.REQUIRED_PERMISSIONS`` grants. In a cluster it authenticates with the pod's
service-account token and trusts the cluster CA. Outside one, ``COMPOSE_KUBE_URL`` names the API
server: ``https://...`` with an optional bearer token file (``COMPOSE_KUBE_TOKEN_FILE``) and CA
bundle (``COMPOSE_KUBE_CA_FILE``; unset: the system's trust store), or plain ``http://`` without
auth (the emulator of the tests, benchmarks). A token file is re-read as soon as it changes
(projected service-account tokens rotate in place, by a symlink swap), checked by one ``stat``
per request.

The app creates one :class:`KubeClient` in its lifespan and passes it to the handlers and the
callback loop. Errors come back as :class:`KubeError` carrying the HTTP status and the API's
``Status`` reason and message; 404 and 409 have their own subclasses.
"""

from __future__ import annotations

import json
import os
import pathlib
import ssl
import urllib.parse
from typing import Any

import aiohttp

from compose_api import models
from compose_gateway import settings as settings_module

SERVICE_ACCOUNT_DIR = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
LIST_CHUNK = 500


class KubeError(Exception):
    """A failed API request (or no answer at all: ``status`` 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}")


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class KubeClient:
    """CompositionJobs of one namespace over the Kubernetes REST API."""

    def __init__(
        self,
        *,
        base_url: str,
        namespace: str,
        timeout_seconds: float = 10.0,
        token_path: pathlib.Path | None = None,
        ca_path: pathlib.Path | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._namespace = namespace
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._token_path = token_path
        self._token: str | None = None
        self._token_stamp: tuple[int, int, int] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        if self._base_url.startswith("https://"):
            # The CA bundle when one is given, else the system's trust store; the host name is
            # always checked.
            try:
                self._ssl = ssl.create_default_context(
                    cafile=str(ca_path) if ca_path is not None else None
                )
            except (OSError, ssl.SSLError) as error:
                raise ValueError(f"Kubernetes CA file {ca_path}: {error}") from error
        self._path = f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{namespace}/{models.PLURAL}"

    @classmethod
    def from_settings(cls, settings: settings_module.Settings) -> KubeClient:
        if settings.kube_url:
            return cls(
                base_url=settings.kube_url,
                namespace=settings.namespace,
                timeout_seconds=settings.kube_timeout_seconds,
                token_path=settings.kube_token_file,
                ca_path=settings.kube_ca_file,
            )
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError(
                "not in a cluster (KUBERNETES_SERVICE_HOST is unset) and COMPOSE_KUBE_URL is unset"
            )
        if ":" in host:
            host = f"[{host}]"
        return cls(
            base_url=f"https://{host}:{port}",
            namespace=settings.namespace,
            timeout_seconds=settings.kube_timeout_seconds,
            token_path=SERVICE_ACCOUNT_DIR / "token",
            ca_path=SERVICE_ACCOUNT_DIR / "ca.crt",
        )

    @property
    def namespace(self) -> str:
        return self._namespace

    async def start(self) -> None:
        if self._session is None:
            connector: aiohttp.BaseConnector | None = None
            if self._ssl is not None:
                connector = aiohttp.TCPConnector(ssl=self._ssl)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the verbs

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", self._path, body=body)

    async def get(self, name: str) -> dict[str, Any]:
        return await self._request("GET", f"{self._path}/{_quote(name)}")

    async def list_page(
        self, *, label_selector: str, limit: int | None = None, continue_: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of jobs matching the selector, and the continue token of the next page."""
        params = {"labelSelector": label_selector}
        if limit is not None:
            params["limit"] = str(limit)
        if continue_:
            params["continue"] = continue_
        data = await self._request("GET", self._path, params=params)
        items = data.get("items") or []
        token = (data.get("metadata") or {}).get("continue") or None
        return [item for item in items if isinstance(item, dict)], token

    async def list_all(self, *, label_selector: str) -> list[dict[str, Any]]:
        """Every job matching the selector, fetched in chunks."""
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            items, token = await self.list_page(
                label_selector=label_selector, limit=LIST_CHUNK, continue_=token
            )
            found.extend(items)
            if not token:
                return found

    async def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (``metadata.resourceVersion`` in it makes it conditional)."""
        return await self._request(
            "PATCH",
            f"{self._path}/{_quote(name)}",
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def delete(self, name: str) -> None:
        await self._request(
            "DELETE",
            f"{self._path}/{_quote(name)}",
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )

    async def ping(self) -> None:
        """Raise KubeError unless the API answers a list of this namespace's jobs."""
        await self.list_page(label_selector="app.kubernetes.io/created-by=compose-gateway", limit=1)

    # --- plumbing

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if self._session is None:
            await self.start()
        session = self._session
        if session is None:  # pragma: no cover - start() always sets it
            raise KubeError(0, "NotStarted", "the client is closed")
        headers = {"Accept": "application/json"}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        try:
            async with session.request(
                method, self._base_url + path, params=params, data=data, headers=headers
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeError(0, "Unreachable", f"{method} {path}: {error!r}") from error
        try:
            parsed: Any = json.loads(text) if text else {}
        except ValueError:
            parsed = {}
        if status >= 400:
            reason = parsed.get("reason", "") if isinstance(parsed, dict) else ""
            message = parsed.get("message", "") if isinstance(parsed, dict) else ""
            kind = {404: NotFound, 409: Conflict}.get(status, KubeError)
            raise kind(status, reason or str(status), message or text[:500])
        return parsed if isinstance(parsed, dict) else {}

    def _bearer(self) -> str | None:
        """The token file's content, re-read whenever its inode, size or mtime changes.

        A file that cannot be read keeps the last token (a rotation in progress); the API server
        then answers 401 and the request fails as a KubeError, the next request tries again.
        """
        if self._token_path is None:
            return None
        try:
            info = self._token_path.stat()
            stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
            if stamp != self._token_stamp:
                self._token = self._token_path.read_text().strip() or None
                self._token_stamp = stamp
        except OSError:
            pass
        return self._token


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")
