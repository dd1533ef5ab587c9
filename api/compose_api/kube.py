"""The one Kubernetes API client of the project: a small asyncio client over aiohttp.

The operator, the gateway and the pool workers talk to the API server through this module, with
one error hierarchy (:class:`KubeError` and its subclasses by HTTP status). It does only what they
need: JSON requests on resource paths, list with paging, merge/JSON/apply patches (a
``metadata.resourceVersion`` in a merge patch makes it conditional), deletes with preconditions,
and watches that yield ``(type, object)`` pairs.

Where the client connects comes from a :class:`Connection`: the pod's service account
(:meth:`Connection.in_cluster`), a kubeconfig (:meth:`Connection.from_kubeconfig`), or explicit
settings (``COMPOSE_KUBE_URL`` with an optional token file and CA bundle,
:meth:`Connection.from_env`). A token file is re-read whenever it changes (projected
service-account tokens rotate in place), checked by one ``stat`` per request.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pathlib
import ssl
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import yaml

SERVICE_ACCOUNT_DIR = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
LIST_CHUNK = 500

Obj = dict[str, Any]


# -- errors -----------------------------------------------------------------------------------


class KubeError(Exception):
    """A failed API request: HTTP status (0: no answer at all), the Status reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Unreachable(KubeError):
    """No HTTP answer: connection refused, reset, TLS failure or timeout."""


class Unauthorized(KubeError):
    pass


class Forbidden(KubeError):
    pass


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: the object exists already (AlreadyExists) or changed since it was read (Conflict)."""


class Gone(KubeError):
    """410: a watch or list continue token is too old; list again."""


class Invalid(KubeError):
    """422: the object does not pass the API server's validation."""


class TooManyRequests(KubeError):
    pass


_BY_STATUS: dict[int, type[KubeError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
}


def error_for(status: int, reason: str, message: str) -> KubeError:
    return _BY_STATUS.get(status, KubeError)(status, reason, message)


# -- paths ------------------------------------------------------------------------------------


def path(
    api_version: str,
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """``/api/v1/namespaces/ns/pods/name/status`` and the like, names quoted."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base]
    if namespace is not None:
        parts.append(f"namespaces/{_quote(namespace)}")
    parts.append(plural)
    if name is not None:
        parts.append(_quote(name))
        if subresource is not None:
            parts.append(subresource)
    return "/".join(parts)


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# -- connection -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: str | None = None
    token_file: pathlib.Path | None = None
    ca_file: pathlib.Path | None = None
    ca_data: str | None = None  # PEM
    cert_file: pathlib.Path | None = None
    key_file: pathlib.Path | None = None
    insecure: bool = False
    namespace: str | None = None  # the default namespace (service account, kubeconfig context)

    @classmethod
    def in_cluster(cls, folder: pathlib.Path = SERVICE_ACCOUNT_DIR) -> Connection:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise KubeError(0, "NotInCluster", "KUBERNETES_SERVICE_HOST is unset")
        if ":" in host:
            host = f"[{host}]"
        namespace_file = folder / "namespace"
        namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
        return cls(
            server=f"https://{host}:{port}",
            token_file=folder / "token",
            ca_file=folder / "ca.crt",
            namespace=namespace,
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = "COMPOSE_KUBE_"
    ) -> Connection:
        """``<prefix>URL`` (with ``TOKEN_FILE`` and ``CA_FILE``) when set; else ``KUBECONFIG``
        when set; else the service account."""
        env = os.environ if environ is None else environ
        url = env.get(f"{prefix}URL", "").strip()
        if url:
            token_file = env.get(f"{prefix}TOKEN_FILE", "").strip()
            ca_file = env.get(f"{prefix}CA_FILE", "").strip()
            return cls(
                server=url,
                token_file=pathlib.Path(token_file) if token_file else None,
                ca_file=pathlib.Path(ca_file) if ca_file else None,
            )
        kubeconfig = env.get("KUBECONFIG", "").strip()
        if kubeconfig and not env.get("KUBERNETES_SERVICE_HOST"):
            return cls.from_kubeconfig(pathlib.Path(kubeconfig.split(os.pathsep)[0]))
        return cls.in_cluster()

    @classmethod
    def from_kubeconfig(cls, file: pathlib.Path, *, context: str | None = None) -> Connection:
        """The current (or named) context of a kubeconfig: server, CA, token or client cert."""
        try:
            config = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise KubeError(0, "BadKubeconfig", f"{file}: {error}") from error
        wanted = context or config.get("current-context")
        found = _named(config.get("contexts"), wanted, "context", file)
        cluster = _named(config.get("clusters"), found.get("cluster"), "cluster", file)
        user = _named(config.get("users"), found.get("user"), "user", file, optional=True)
        ca_data = cluster.get("certificate-authority-data")
        cert_file = _file_from(user, "client-certificate", file)
        key_file = _file_from(user, "client-key", file)
        token_file = user.get("tokenFile")
        return cls(
            server=str(cluster.get("server") or ""),
            token=user.get("token"),
            token_file=pathlib.Path(token_file) if token_file else None,
            ca_file=_file_from(cluster, "certificate-authority", file, data=False),
            ca_data=base64.b64decode(ca_data).decode() if ca_data else None,
            cert_file=cert_file,
            key_file=key_file,
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
            namespace=found.get("namespace"),
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.server.startswith("http://"):
            return False
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file else None, cadata=self.ca_data
        )
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            context.load_cert_chain(
                str(self.cert_file), str(self.key_file) if self.key_file else None
            )
        return context


def _named(
    items: Any, name: Any, kind: str, file: pathlib.Path, *, optional: bool = False
) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(kind)
            return dict(value) if isinstance(value, dict) else {}
    if optional:
        return {}
    raise KubeError(0, "BadKubeconfig", f"{file}: no {kind} named {name!r}")


def _file_from(
    section: Mapping[str, Any], key: str, file: pathlib.Path, *, data: bool = True
) -> pathlib.Path | None:
    """A kubeconfig file reference (relative to the kubeconfig), or its ``-data`` inline twin
    written to a private temporary file (ssl wants files for client certificates)."""
    if section.get(key):
        return (file.parent / str(section[key])).resolve()
    inline = section.get(f"{key}-data") if data else None
    if not inline:
        return None
    handle = tempfile.NamedTemporaryFile(delete=False, suffix=".pem", prefix="kube-")  # noqa: SIM115
    with handle:
        handle.write(base64.b64decode(inline))
    return pathlib.Path(handle.name)


# -- the client -------------------------------------------------------------------------------


class Client:
    """JSON requests to one API server. One per process; ``close()`` it at the end."""

    def __init__(
        self,
        connection: Connection,
        *,
        timeout_seconds: float = 30.0,
        user_agent: str = "nextunicorn-compose",
        connection_limit: int = 32,
    ) -> None:
        self.connection = connection
        self._base = connection.server.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._user_agent = user_agent
        self._limit = connection_limit
        self._ssl = connection.ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._token = connection.token
        self._token_stamp: tuple[int, int, int] | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit),
                headers={"User-Agent": self._user_agent},
            )
        return self._session

    def _bearer(self) -> str | None:
        """The token file's content, re-read whenever its inode, size or mtime changes; a file
        that cannot be read keeps the last token (a rotation in progress)."""
        file = self.connection.token_file
        if file is None:
            return self._token
        try:
            info = file.stat()
            stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
            if stamp != self._token_stamp:
                self._token = file.read_text().strip() or None
                self._token_stamp = stamp
        except OSError:
            pass
        return self._token

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One request; the decoded JSON object, or a :class:`KubeError` subclass."""
        data = None
        if body is not None:
            data = body if isinstance(body, str) else json.dumps(body)
        try:
            async with self._session_now().request(
                method,
                self._base + path,
                params=dict(params) if params else None,
                data=data,
                headers=self._headers(content_type if body is not None else None),
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise Unreachable(0, "Unreachable", f"{method} {path}: {error!r}") from error
        try:
            parsed: Any = json.loads(text) if text else {}
        except ValueError:
            parsed = {}
        if status >= 400:
            found = parsed if isinstance(parsed, dict) else {}
            raise error_for(
                status,
                str(found.get("reason") or status),
                str(found.get("message") or text[:500]),
            )
        return parsed if isinstance(parsed, dict) else {}

    # -- verbs ------------------------------------------------------------------------------

    async def get(self, path: str) -> Obj:
        return await self.request("GET", path)

    async def get_or_none(self, path: str) -> Obj | None:
        try:
            return await self.request("GET", path)
        except NotFound:
            return None

    async def create(self, path: str, body: Mapping[str, Any]) -> Obj:
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: Mapping[str, Any]) -> Obj:
        return await self.request("PUT", path, body=body)

    async def patch(
        self,
        path: str,
        patch: Any,
        *,
        content_type: str = MERGE_PATCH,
        field_manager: str | None = None,
        force: bool = False,
    ) -> Obj:
        """A merge patch by default; ``metadata.resourceVersion`` in it makes it conditional
        (409 :class:`Conflict` when the object changed since)."""
        params: dict[str, str] = {}
        if field_manager:
            params["fieldManager"] = field_manager
        if force:
            params["force"] = "true"
        return await self.request(
            "PATCH", path, body=patch, params=params or None, content_type=content_type
        )

    async def delete(
        self,
        path: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        propagation: str = "Background",
        missing_ok: bool = True,
    ) -> None:
        """Delete, optionally only the object with that uid or resourceVersion (409 otherwise);
        a missing object is fine unless ``missing_ok`` is false."""
        options: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": propagation,
        }
        preconditions = {
            key: value
            for key, value in (("uid", uid), ("resourceVersion", resource_version))
            if value
        }
        if preconditions:
            options["preconditions"] = preconditions
        try:
            await self.request("DELETE", path, body=options)
        except NotFound:
            if not missing_ok:
                raise

    async def list_page(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
    ) -> tuple[list[Obj], str | None, str]:
        """One page: the items, the continue token of the next page, the list's
        resourceVersion (to watch from)."""
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if limit is not None:
            params["limit"] = str(limit)
        if continue_:
            params["continue"] = continue_
        data = await self.request("GET", path, params=params)
        meta = data.get("metadata") or {}
        items = [item for item in data.get("items") or [] if isinstance(item, dict)]
        return items, meta.get("continue") or None, str(meta.get("resourceVersion") or "")

    async def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        chunk: int = LIST_CHUNK,
    ) -> tuple[list[Obj], str]:
        """Every item, fetched in chunks, and the list's resourceVersion."""
        found: list[Obj] = []
        token: str | None = None
        while True:
            items, token, version = await self.list_page(
                path,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=chunk,
                continue_=token,
            )
            found.extend(items)
            if not token:
                return found, version

    async def watch(
        self,
        path: str,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[tuple[str, Obj]]:
        """``(type, object)`` per watch event (ADDED, MODIFIED, DELETED, BOOKMARK) until the
        server ends the stream; an ERROR event raises its :class:`KubeError` (410: list again)."""
        params = {"watch": "true", "timeoutSeconds": str(timeout_seconds),
                  "allowWatchBookmarks": "true"}  # fmt: skip
        if resource_version:
            params["resourceVersion"] = resource_version
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
        try:
            async with self._session_now().get(
                self._base + path, params=params, headers=self._headers(None), timeout=timeout
            ) as response:
                if response.status >= 400:
                    text = await response.text()
                    try:
                        found = json.loads(text)
                    except ValueError:
                        found = {}
                    found = found if isinstance(found, dict) else {}
                    raise error_for(
                        response.status,
                        str(found.get("reason") or response.status),
                        str(found.get("message") or text[:500]),
                    )
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind = str(event.get("type") or "")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        raise error_for(
                            int(obj.get("code") or 500),
                            str(obj.get("reason") or ""),
                            str(obj.get("message") or ""),
                        )
                    yield kind, obj
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise Unreachable(0, "Unreachable", f"WATCH {path}: {error!r}") from error
