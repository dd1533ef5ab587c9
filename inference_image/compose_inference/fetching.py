"""Stage 1: fetch the input images' bytes from S3, HTTPS, or (local mode only) the file system.

The runner calls ``Fetcher.fetch`` once per input. Every source is read with a byte limit (the
read stops as soon as it is passed), timeouts, and retries with exponential backoff for transient
errors only (5xx, throttling, timeouts, dropped connections); a missing object or a 4xx fails at
once with INPUT_UNAVAILABLE.

HTTPS URLs go through ``compose_api.netguard`` before every connection: the host is resolved, every
address checked, and the connection made to the checked address (Host header and TLS SNI keep the
name), so DNS rebinding cannot reach an internal address. Redirects are followed here, one hop at
a time, each hop checked the same way.
"""

from __future__ import annotations

import dataclasses
import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import urllib3
from urllib3 import exceptions as urllib3_exceptions

from compose_api import netguard
from compose_inference import errors, retrying, storage

MAX_BYTES_ENV = "COMPOSE_MAX_INPUT_BYTES"
ATTEMPTS_ENV = "COMPOSE_FETCH_ATTEMPTS"
BACKOFF_ENV = "COMPOSE_FETCH_BACKOFF_SECONDS"
CA_BUNDLE_ENV = "COMPOSE_FETCH_CA_BUNDLE"
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_redirects: int = 5
    backoff: retrying.Backoff = dataclasses.field(default_factory=retrying.Backoff)
    policy: netguard.Policy = dataclasses.field(default_factory=netguard.Policy)
    # Local mode: plain paths are read from the file system. Never in pod mode.
    allow_local_paths: bool = False
    # CA certificates (PEM file) trusted for HTTPS inputs instead of the system trust store.
    ca_bundle: str | None = None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, allow_local_paths: bool = False
    ) -> FetchSettings:
        env = dict(os.environ if environ is None else environ)
        return cls(
            max_bytes=_int_env(env, MAX_BYTES_ENV, DEFAULT_MAX_BYTES),
            backoff=retrying.Backoff(
                attempts=_int_env(env, ATTEMPTS_ENV, 4),
                base=_float_env(env, BACKOFF_ENV, 0.5),
            ),
            policy=netguard.Policy.from_env(env),
            allow_local_paths=allow_local_paths,
            ca_bundle=env.get(CA_BUNDLE_ENV, "").strip() or None,
        )


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{name}: must be at least 1, got {value}")
    return value


def _float_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{name}: must not be negative, got {value}")
    return value


class _Transient(Exception):
    """An HTTP failure worth retrying (5xx, 429, timeouts, resets)."""


class Fetcher:
    """Reads input bytes. One instance serves many jobs; clients are created on first use."""

    def __init__(
        self,
        settings: FetchSettings,
        *,
        s3_client: Any | None = None,
        resolver: netguard.Resolver = netguard.system_resolver,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._s3 = s3_client
        self._resolver = resolver
        self._sleep = sleep

    def fetch(self, uri: str, *, field: str) -> bytes:
        """The bytes behind ``uri``; ``field`` (``spec.inputs.person.uri``) names it in errors."""
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
        if scheme == "s3":
            return self._fetch_s3(uri, field=field)
        if scheme in ("https", "http"):
            return self._fetch_http(uri, field=field)
        if not scheme and self.settings.allow_local_paths:
            return self._fetch_local(Path(uri), field=field)
        raise errors.InputRejected(
            f"{field}: {uri!r} is not an s3:// or https:// URI"
            + ("" if self.settings.allow_local_paths else " (local paths only in local mode)")
        )

    # -- S3 ---------------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = storage.make_client(
                connect_timeout=self.settings.connect_timeout,
                read_timeout=self.settings.read_timeout,
            )
        return self._s3

    def _fetch_s3(self, uri: str, *, field: str) -> bytes:
        try:
            location = storage.parse_uri(uri)
        except ValueError as error:
            raise errors.InputRejected(f"{field}: {error}") from None
        if not location.key:
            raise errors.InputRejected(f"{field}: {uri}: no object key")
        limit = self.settings.max_bytes

        def read() -> bytes:
            response = self._client().get_object(Bucket=location.bucket, Key=location.key)
            body = response["Body"]
            try:
                size = response.get("ContentLength")
                if size is not None and int(size) > limit:
                    raise errors.InputRejected(
                        f"{field}: {uri} is {size} bytes, more than the limit of {limit}"
                    )
                data: bytes = body.read(limit + 1)
            finally:
                body.close()
            if len(data) > limit:
                raise errors.InputRejected(f"{field}: {uri} is larger than the limit of {limit}")
            return data

        try:
            return retrying.call(
                read,
                transient=storage.is_transient,
                backoff=self.settings.backoff,
                sleep=self._sleep,
            )
        except retrying.RetriesExhausted as error:
            raise errors.InputUnavailable(
                f"{field}: {uri} could not be read after {error.attempts} attempts: {error.last}"
            ) from error
        except errors.ComposeError:
            raise
        except Exception as error:
            code = storage.error_code(error)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise errors.InputUnavailable(f"{field}: {uri} does not exist") from error
            if code in ("NoSuchBucket",):
                raise errors.InputUnavailable(f"{field}: bucket of {uri} does not exist") from error
            if code in ("AccessDenied", "403"):
                raise errors.InputUnavailable(f"{field}: access to {uri} denied") from error
            raise errors.InputUnavailable(f"{field}: {uri} could not be read: {error}") from error

    # -- HTTPS ------------------------------------------------------------------------------

    def _fetch_http(self, uri: str, *, field: str) -> bytes:
        def transient(error: BaseException) -> bool:
            return isinstance(error, _Transient)

        try:
            return retrying.call(
                lambda: self._follow(uri, field=field),
                transient=transient,
                backoff=self.settings.backoff,
                sleep=self._sleep,
            )
        except retrying.RetriesExhausted as error:
            raise errors.InputUnavailable(
                f"{field}: {_safe(uri)} unreachable after {error.attempts} attempts: {error.last}"
            ) from error

    def _follow(self, uri: str, *, field: str) -> bytes:
        url = uri
        for _hop in range(self.settings.max_redirects + 1):
            try:
                destination = netguard.check_url(url, self.settings.policy, resolver=self._resolver)
            except netguard.ForbiddenAddressError as error:
                via = "" if url == uri else f" (redirected from {_safe(uri)})"
                raise errors.InputRejected(f"{field}: refused {error}{via}") from None
            except OSError as error:  # the name did not resolve: DNS may recover, so retry
                raise _Transient(f"{destination_name(url)} did not resolve: {error}") from error
            status, location, body = self._request(destination, field=field)
            if status in _REDIRECTS:
                if not location:
                    raise errors.InputUnavailable(
                        f"{field}: {_safe(url)} answered {status} without a Location"
                    )
                url = urllib.parse.urljoin(url, location)
                continue
            if 200 <= status < 300:
                return body
            if status in _TRANSIENT_STATUS:
                raise _Transient(f"{_safe(url)} answered HTTP {status}")
            raise errors.InputUnavailable(f"{field}: {_safe(url)} answered HTTP {status}")
        raise errors.InputUnavailable(
            f"{field}: {_safe(uri)}: more than {self.settings.max_redirects} redirects"
        )

    def _request(
        self, destination: netguard.Destination, *, field: str
    ) -> tuple[int, str | None, bytes]:
        settings = self.settings
        timeout = urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout)
        pool: urllib3.HTTPConnectionPool
        if destination.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(
                destination.ip_literal.strip("[]"),
                destination.port,
                timeout=timeout,
                retries=False,
                cert_reqs="CERT_REQUIRED",
                ca_certs=settings.ca_bundle,
                server_hostname=destination.host,
                assert_hostname=destination.host,
            )
        else:
            pool = urllib3.HTTPConnectionPool(
                destination.ip_literal.strip("[]"),
                destination.port,
                timeout=timeout,
                retries=False,
            )
        default_port = 443 if destination.scheme == "https" else 80
        host_header = destination.host if ":" not in destination.host else f"[{destination.host}]"
        if destination.port != default_port:
            host_header = f"{host_header}:{destination.port}"
        try:
            response = pool.urlopen(
                "GET",
                destination.target,
                headers={"Host": host_header, "User-Agent": "compose-inference/1"},
                redirect=False,
                retries=False,
                preload_content=False,
                assert_same_host=False,
            )
            try:
                status = response.status
                if status in _REDIRECTS or not 200 <= status < 300:
                    return status, response.headers.get("Location"), b""
                return status, None, self._read_limited(response, destination.url, field=field)
            finally:
                response.release_conn()
        except (urllib3_exceptions.TimeoutError, urllib3_exceptions.ProtocolError) as error:
            raise _Transient(f"{_safe(destination.url)}: {type(error).__name__}") from error
        except urllib3_exceptions.NewConnectionError as error:
            raise _Transient(f"{_safe(destination.url)}: connection failed") from error
        except urllib3_exceptions.SSLError as error:
            raise errors.InputUnavailable(
                f"{field}: {_safe(destination.url)}: TLS failed: {error}"
            ) from error
        except urllib3_exceptions.HTTPError as error:
            raise _Transient(f"{_safe(destination.url)}: {error}") from error
        finally:
            pool.close()

    def _read_limited(self, response: Any, url: str, *, field: str) -> bytes:
        limit = self.settings.max_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise errors.InputRejected(
                f"{field}: {_safe(url)} is {declared} bytes, more than the limit of {limit}"
            )
        chunks: list[bytes] = []
        total = 0
        for chunk in response.stream(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise errors.InputRejected(
                    f"{field}: {_safe(url)} is larger than the limit of {limit} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    # -- local ------------------------------------------------------------------------------

    def _fetch_local(self, path: Path, *, field: str) -> bytes:
        limit = self.settings.max_bytes
        try:
            size = path.stat().st_size
            if size > limit:
                raise errors.InputRejected(
                    f"{field}: {path} is {size} bytes, more than the limit of {limit}"
                )
            with path.open("rb") as handle:
                return handle.read(limit + 1)[: limit + 1]
        except FileNotFoundError:
            raise errors.InputUnavailable(f"{field}: {path} does not exist") from None
        except IsADirectoryError:
            raise errors.InputRejected(f"{field}: {path} is a directory") from None
        except PermissionError:
            raise errors.InputUnavailable(f"{field}: {path} is not readable") from None


def destination_name(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _safe(url: str) -> str:
    """The URL without its query string (it may carry a presigned signature)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
