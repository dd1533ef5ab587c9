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
service-account tokens rotate in place), checked by one ``stat`` per request. A client made with
a ``login`` function instead (the operator's: kopf's login handlers) logs in before its first
request and again when the API server answers 401, then retries that request once.

A connection that cannot be used (no cluster found, a kubeconfig without the named context, a CA
bundle or client certificate that does not load) raises :class:`ConfigError`, which is both a
:class:`KubeError` (status 0) and a :class:`ValueError` (bad settings, named in the message).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import pathlib
import ssl
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson
import yaml

SERVICE_ACCOUNT_DIR = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
LIST_CHUNK = 500

Obj = dict[str, Any]


# -- errors -----------------------------------------------------------------------------------


class KubeError(Exception):
    """A failed API request: HTTP status (0: no answer at all), the Status reason and message,
    and its ``details`` (the object named, and for 422 the ``causes``: field and reason)."""

    def __init__(
        self, status: int, reason: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class Unreachable(KubeError):
    """No HTTP answer: connection refused, reset, TLS failure or timeout."""


class ConfigError(KubeError, ValueError):
    """A connection that cannot be used: not in a cluster, a bad kubeconfig, a CA bundle or
    client certificate that does not load. Status 0; the message names the file or setting."""


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


def error_for(
    status: int, reason: str, message: str, details: Mapping[str, Any] | None = None
) -> KubeError:
    return _BY_STATUS.get(status, KubeError)(status, reason, message, details)


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
    """Where the API server is and how to authenticate to it.

    Certificates and keys come as files or as PEM text (``*_data``); PEM text never touches the
    disk longer than it takes to load it into the TLS context."""

    server: str
    token: str | None = None
    token_file: pathlib.Path | None = None
    ca_file: pathlib.Path | None = None
    ca_data: str | None = None  # PEM
    cert_file: pathlib.Path | None = None
    key_file: pathlib.Path | None = None
    cert_data: str | None = None  # PEM
    key_data: str | None = None  # PEM
    insecure: bool = False
    namespace: str | None = None  # the default namespace (service account, kubeconfig context)

    @classmethod
    def in_cluster(cls, folder: pathlib.Path = SERVICE_ACCOUNT_DIR) -> Connection:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError(0, "NotInCluster", "KUBERNETES_SERVICE_HOST is unset")
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
        """The current (or named) context of a kubeconfig: server, CA, token or client cert.

        File references are relative to the kubeconfig's folder; ``*-data`` values are base64."""
        try:
            config = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(0, "BadKubeconfig", f"{file}: {error}") from error
        if not isinstance(config, dict):
            raise ConfigError(0, "BadKubeconfig", f"{file}: not a kubeconfig mapping")
        wanted = context or config.get("current-context")
        found = _named(config.get("contexts"), wanted, "context", file)
        cluster = _named(config.get("clusters"), found.get("cluster"), "cluster", file)
        user = _named(config.get("users"), found.get("user"), "user", file, optional=True)
        server = str(cluster.get("server") or "")
        if not server.startswith(("https://", "http://")):
            raise ConfigError(
                0, "BadKubeconfig", f"{file}: cluster {found.get('cluster')!r} has no server URL"
            )
        token_file = user.get("tokenFile")
        return cls(
            server=server,
            token=user.get("token"),
            token_file=(file.parent / str(token_file)).resolve() if token_file else None,
            ca_file=_path_in(cluster, "certificate-authority", file),
            ca_data=_data_in(cluster, "certificate-authority-data", file),
            cert_file=_path_in(user, "client-certificate", file),
            key_file=_path_in(user, "client-key", file),
            cert_data=_data_in(user, "client-certificate-data", file),
            key_data=_data_in(user, "client-key-data", file),
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
            namespace=found.get("namespace"),
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        """The TLS context (False for plain ``http://``); :class:`ConfigError` naming what did
        not load."""
        if self.server.startswith("http://"):
            return False
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file else None, cadata=self.ca_data
            )
        except (OSError, ssl.SSLError) as error:
            where = f"CA file {self.ca_file}" if self.ca_file else "CA data"
            raise ConfigError(0, "BadCertificate", f"Kubernetes {where}: {error}") from error
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file or self.cert_data:
            _load_client_certificate(context, self)
        return context


def _load_client_certificate(context: ssl.SSLContext, connection: Connection) -> None:
    """ssl loads client certificates from files only: PEM text goes through a private
    temporary folder that is removed at once."""
    with tempfile.TemporaryDirectory(prefix="kube-") as folder:
        cert = connection.cert_file
        key = connection.key_file
        if connection.cert_data:
            cert = pathlib.Path(folder) / "client.crt"
            cert.write_text(connection.cert_data)
        if connection.key_data:
            key = pathlib.Path(folder) / "client.key"
            key.touch(mode=0o600)
            key.write_text(connection.key_data)
        try:
            context.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as error:
            where = f"file {connection.cert_file}" if connection.cert_file else "data"
            raise ConfigError(
                0, "BadCertificate", f"Kubernetes client certificate {where}: {error}"
            ) from error


def _named(
    items: Any, name: Any, kind: str, file: pathlib.Path, *, optional: bool = False
) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(kind)
            return dict(value) if isinstance(value, dict) else {}
    if optional:
        return {}
    raise ConfigError(0, "BadKubeconfig", f"{file}: no {kind} named {name!r}")


def _path_in(section: Mapping[str, Any], key: str, file: pathlib.Path) -> pathlib.Path | None:
    """A kubeconfig file reference, relative to the kubeconfig's folder."""
    value = section.get(key)
    return (file.parent / str(value)).resolve() if value else None


def _data_in(section: Mapping[str, Any], key: str, file: pathlib.Path) -> str | None:
    """A kubeconfig ``*-data`` value: base64 of PEM text."""
    value = section.get(key)
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(0, "BadKubeconfig", f"{file}: {key} is not base64 PEM") from error


# -- the client -------------------------------------------------------------------------------

Login = Callable[[], Awaitable[Connection]]


class Client:
    """JSON requests to one API server. One per process; ``close()`` it at the end.

    Give it a :class:`Connection`, or a ``login`` coroutine function that returns one: it is
    awaited before the first request and again after a 401 (credentials that rotate), once for
    all the requests that got a 401 with the same credentials, and each of them is sent once
    more with the new ones. Requests in flight keep their connection: a login that changes only
    the token keeps the connection pool; one that changes the server or TLS settings starts a
    new pool and closes the old one with the client."""

    def __init__(
        self,
        connection: Connection | None = None,
        *,
        login: Login | None = None,
        timeout_seconds: float = 30.0,
        user_agent: str = "nextunicorn-compose",
        connection_limit: int = 32,
    ) -> None:
        if (connection is None) == (login is None):
            raise TypeError("Client needs either a connection or a login function")
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._user_agent = user_agent
        self._limit = connection_limit
        self._connection: Connection | None = None
        self._base = ""
        self._ssl: ssl.SSLContext | bool = False
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[aiohttp.ClientSession] = []  # pools of earlier TLS settings
        self._generation = 0  # bumped by each login
        self._token: str | None = None
        self._token_stamp: tuple[int, int, int] | None = None
        self._logging_in = asyncio.Lock()  # concurrent first requests log in once
        if connection is not None:
            self._use(connection)

    @property
    def connection(self) -> Connection:
        """The connection in use (logged in on first use with a ``login`` function)."""
        if self._connection is None:
            raise KubeError(0, "NotLoggedIn", "no request has been made yet")
        return self._connection

    def _use(self, connection: Connection) -> None:
        old = self._connection
        if old is None or _transport(old) != _transport(connection):
            self._ssl = connection.ssl_context()
            if self._session is not None:
                self._retired.append(self._session)  # its requests in flight finish on it
                self._session = None
        self._connection = connection
        self._base = connection.server.rstrip("/")
        self._token = connection.token
        self._token_stamp = None
        self._generation += 1

    async def _connect(self) -> tuple[aiohttp.ClientSession, int]:
        """The session to send on, and the login generation its credentials come from."""
        if self._connection is None:
            if self._login is None:  # pragma: no cover - __init__ sets one or the other
                raise KubeError(0, "NotLoggedIn", "no connection and no login function")
            async with self._logging_in:
                if self._connection is None:
                    self._use(await self._login())
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit),
                headers={"User-Agent": self._user_agent},
            )
        return self._session, self._generation

    async def _relogin(self, generation: int) -> bool:
        """After a 401 with the credentials of ``generation``: log in again unless another
        request already did (True: send again), or False when there is no login function."""
        if self._login is None:
            return False
        async with self._logging_in:
            if generation == self._generation:
                self._use(await self._login())
        return True

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        for session in [*self._retired, self._session]:
            if session is not None:
                await session.close()
        self._retired.clear()
        self._session = None

    def _bearer(self) -> str | None:
        """The token file's content, re-read whenever its inode, size or mtime changes; a file
        that cannot be read keeps the last token (a rotation in progress)."""
        file = self._connection.token_file if self._connection else None
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
        session, generation = await self._connect()
        try:
            return await self._send(session, method, path, body, params, content_type)
        except Unauthorized:
            if not await self._relogin(generation):
                raise
        session, _ = await self._connect()
        return await self._send(session, method, path, body, params, content_type)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: Any,
        params: Mapping[str, str] | None,
        content_type: str,
    ) -> Obj:
        data: str | bytes | None = None
        if body is not None:
            # orjson: UTF-8, no spaces, and a sixth or less of the CPU of json.dumps per body.
            data = (
                body
                if isinstance(body, str)
                else orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
            )
        try:
            async with session.request(
                method,
                self._base + path,
                params=dict(params) if params else None,
                data=data,
                headers=self._headers(content_type if body is not None else None),
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise Unreachable(0, "Unreachable", f"{method} {path}: {error!r}") from error
        try:
            parsed: Any = orjson.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        if status >= 400:
            raise _status_error(status, parsed, raw.decode(errors="replace"))
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
        propagation: str | None = "Background",
        missing_ok: bool = True,
    ) -> Obj | None:
        """Delete, optionally only the object with that uid or resourceVersion (409 otherwise);
        a missing object is fine (None) unless ``missing_ok`` is false. ``propagation`` None
        leaves the dependents to the resource's default (batch/v1 Jobs: orphaned). The answer
        is the object as it is being deleted (finalizers pending) or a Status."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation is not None:
            options["propagationPolicy"] = propagation
        preconditions = {
            key: value
            for key, value in (("uid", uid), ("resourceVersion", resource_version))
            if value
        }
        if preconditions:
            options["preconditions"] = preconditions
        try:
            return await self.request("DELETE", path, body=options)
        except NotFound:
            if not missing_ok:
                raise
            return None

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
        send_initial_events: bool = False,
    ) -> AsyncIterator[tuple[str, Obj]]:
        """``(type, object)`` per watch event (ADDED, MODIFIED, DELETED, BOOKMARK) until the
        server ends the stream; an ERROR event raises its :class:`KubeError` (410: list again).

        ``send_initial_events`` asks for the current objects first as ADDED events, then a
        BOOKMARK (the watch-list protocol, instead of a list before the watch)."""
        params = {"watch": "true", "timeoutSeconds": str(timeout_seconds),
                  "allowWatchBookmarks": "true"}  # fmt: skip
        if resource_version:
            params["resourceVersion"] = resource_version
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if send_initial_events:
            params["sendInitialEvents"] = "true"
            params["resourceVersionMatch"] = "NotOlderThan"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
        for last_try in (False, True):
            session, generation = await self._connect()
            try:
                async with session.get(
                    self._base + path, params=params, headers=self._headers(None), timeout=timeout
                ) as response:
                    if response.status >= 400:
                        text = await response.text()
                        try:
                            parsed: Any = json.loads(text)
                        except ValueError:
                            parsed = {}
                        error = _status_error(response.status, parsed, text)
                        retry = isinstance(error, Unauthorized) and not last_try
                        if retry and await self._relogin(generation):
                            continue
                        raise error
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = orjson.loads(line)  # about twice as fast as json's
                        kind = str(event.get("type") or "")
                        obj = event.get("object") or {}
                        if kind == "ERROR":
                            raise _status_error(int(obj.get("code") or 500), obj, "")
                        yield kind, obj
                    return
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                raise Unreachable(0, "Unreachable", f"WATCH {path}: {error!r}") from error


def _transport(connection: Connection) -> Connection:
    """What the connection pool depends on: the connection without its credentials."""
    return dataclasses.replace(connection, token=None, token_file=None, namespace=None)


def _status_error(status: int, parsed: Any, text: str) -> KubeError:
    """The error for an HTTP error answer, from its ``Status`` object when it sent one."""
    found = parsed if isinstance(parsed, dict) else {}
    details = found.get("details")
    return error_for(
        status,
        str(found.get("reason") or status),
        str(found.get("message") or text[:500]),
        details if isinstance(details, dict) else None,
    )
