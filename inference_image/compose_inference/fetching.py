"""Stage 1: fetch the input images' bytes from S3, HTTPS, or (local mode only) the file system.

The runner calls ``Fetcher.fetch`` once per input. Every source is read with a byte limit (the
read stops as soon as it is passed, with or without a Content-Length), timeouts, and retries with
exponential backoff for transient errors only (5xx, 408/425/429, timeouts, dropped connections,
names that do not resolve); a missing object or another 4xx fails at once with INPUT_UNAVAILABLE.

Each input also has an overall deadline (``COMPOSE_FETCH_DEADLINE_SECONDS``, 120) covering every
attempt and wait, and a minimum transfer rate (``COMPOSE_FETCH_MIN_BYTES_PER_SECOND``, 64 KiB/s,
judged after ``rate_grace`` seconds of a transfer). The classification: a short outage (refused
connections, 5xx, throttling, a stalled read) is retried while the deadline leaves time for the
next attempt; a server that trickles bytes below the minimum rate, or a transfer still running at
the deadline, is hopeless and fails at once, not retried. Either way the failure is
INPUT_UNAVAILABLE, which the operator does not retry: one slow input costs at most the
deadline of GPU time, not the Job's deadline times its retries.

HTTPS URLs go through ``compose_api.netguard`` before every connection: the host is resolved, every
address checked, and the connection made to the checked address (Host header and TLS SNI keep the
name), so DNS rebinding cannot reach an internal address. Redirects are followed here, one hop at
a time, each hop checked the same way.
"""

from __future__ import annotations

import dataclasses
import math
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
DEADLINE_ENV = "COMPOSE_FETCH_DEADLINE_SECONDS"
MIN_RATE_ENV = "COMPOSE_FETCH_MIN_BYTES_PER_SECOND"
CA_BUNDLE_ENV = "COMPOSE_FETCH_CA_BUNDLE"
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
# Only the size of each read: any positive size gives the same bytes and the same limits.
_CHUNK = 64 * 1024  # pragma: no mutate
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_redirects: int = 5
    deadline: float = 120.0  # seconds per input, every attempt and wait included
    min_rate: int = 64 * 1024  # bytes per second, averaged; 0 switches the check off
    rate_grace: float = 5.0  # seconds of a transfer before its rate is judged
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
            deadline=_float_env(env, DEADLINE_ENV, 120.0, positive=True),
            min_rate=_int_env(env, MIN_RATE_ENV, 64 * 1024, minimum=0),
            backoff=retrying.Backoff(
                attempts=_int_env(env, ATTEMPTS_ENV, 4),
                base=_float_env(env, BACKOFF_ENV, 0.5),
            ),
            policy=netguard.Policy.from_env(env),
            allow_local_paths=allow_local_paths,
            ca_bundle=env.get(CA_BUNDLE_ENV, "").strip() or None,
        )


def _int_env(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _float_env(
    env: Mapping[str, str], name: str, default: float, *, positive: bool = False
) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {raw!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}: must be more than 0, got {value}")
    if value < 0:
        raise ValueError(f"{name}: must not be negative, got {value}")
    return value


class _Transient(Exception):
    """An HTTP failure worth retrying (5xx, 429, timeouts, resets)."""


# Nothing assigns a budget's fields; frozen only says so (False for True changes nothing).
@dataclasses.dataclass(frozen=True)  # pragma: no mutate: ReplaceTrueWithFalse
class _Budget:
    """The time one input may take: every attempt and wait end by ``deadline`` (a clock time)."""

    deadline: float
    clock: Callable[[], float]

    def remaining(self) -> float:
        return self.deadline - self.clock()


class Fetcher:
    """Reads input bytes. One instance serves many jobs; clients are created on first use."""

    def __init__(
        self,
        settings: FetchSettings,
        *,
        s3_client: Any | None = None,
        resolver: netguard.Resolver = netguard.system_resolver,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._s3 = s3_client
        self._resolver = resolver
        self._sleep = sleep
        self._clock = clock

    def fetch(self, uri: str, *, field: str) -> bytes:
        """The bytes behind ``uri``; ``field`` (``spec.inputs.person.uri``) names it in errors."""
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
        budget = _Budget(self._clock() + self.settings.deadline, self._clock)
        if scheme == "s3":
            return self._fetch_s3(uri, field=field, budget=budget)
        if scheme in ("https", "http"):
            return self._fetch_http(uri, field=field, budget=budget)
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

    def _fetch_s3(self, uri: str, *, field: str, budget: _Budget) -> bytes:
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
                return self._read_limited(
                    lambda: body.read(_CHUNK), uri, field=field, budget=budget
                )
            finally:
                body.close()

        try:
            return retrying.call(
                read,
                transient=storage.is_transient,
                backoff=self.settings.backoff,
                sleep=self._sleep,
                deadline=budget.deadline,
                clock=self._clock,
            )
        except retrying.RetriesExhausted as error:
            raise errors.InputUnavailable(
                f"{field}: {uri} could not be read after {error.attempts} attempts"
                f"{self._why(error)}: {error.last}"
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

    def _fetch_http(self, uri: str, *, field: str, budget: _Budget) -> bytes:
        def transient(error: BaseException) -> bool:
            return isinstance(error, _Transient)

        try:
            return retrying.call(
                lambda: self._follow(uri, field=field, budget=budget),
                transient=transient,
                backoff=self.settings.backoff,
                sleep=self._sleep,
                deadline=budget.deadline,
                clock=self._clock,
            )
        except retrying.RetriesExhausted as error:
            raise errors.InputUnavailable(
                f"{field}: {_safe(uri)} unreachable after {error.attempts} attempts"
                f"{self._why(error)}: {error.last}"
            ) from error

    def _why(self, error: retrying.RetriesExhausted) -> str:
        return (
            f" (the fetch deadline of {self.settings.deadline:g} s left no time for another)"
            if error.deadline
            else ""
        )

    def _follow(self, uri: str, *, field: str, budget: _Budget) -> bytes:
        url = uri
        for hop in range(self.settings.max_redirects + 1):
            try:
                destination = netguard.check_url(url, self.settings.policy, resolver=self._resolver)
            except netguard.ForbiddenAddressError as error:
                via = f" (redirected from {_safe(uri)})" if hop else ""
                raise errors.InputRejected(f"{field}: refused {error}{via}") from None
            except OSError as error:  # the name did not resolve: DNS may recover, so retry
                raise _Transient(f"{destination_name(url)} did not resolve: {error}") from error
            status, location, body = self._request(destination, field=field, budget=budget)
            if status in _REDIRECTS:
                if not location:
                    raise errors.InputUnavailable(
                        f"{field}: {_safe(url)} answered {status} without a Location"
                    )
                url = urllib.parse.urljoin(url, location)
                continue
            if _success(status):
                return body
            if status in _TRANSIENT_STATUS:
                raise _Transient(f"{_safe(url)} answered HTTP {status}")
            raise errors.InputUnavailable(f"{field}: {_safe(url)} answered HTTP {status}")
        raise errors.InputUnavailable(
            f"{field}: {_safe(uri)}: more than {self.settings.max_redirects} redirects"
        )

    def _request(
        self, destination: netguard.Destination, *, field: str, budget: _Budget
    ) -> tuple[int, str | None, bytes]:
        settings = self.settings
        # No single connect or read may wait past the input's deadline.
        left = max(0.05, budget.remaining())
        timeout = urllib3.Timeout(
            connect=min(settings.connect_timeout, left), read=min(settings.read_timeout, left)
        )
        pool: urllib3.HTTPConnectionPool
        # The scheme is "https" or "http" (netguard), and "http" < "https": `>=` is the same test.
        if destination.scheme == "https":  # pragma: no mutate: *_Eq_GtE
            # The pools' own retries are never used: urlopen() below passes retries=False.
            pool = urllib3.HTTPSConnectionPool(
                destination.ip_literal.strip("[]"),
                destination.port,
                timeout=timeout,
                retries=False,  # pragma: no mutate: ReplaceFalseWithTrue
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
                retries=False,  # pragma: no mutate: ReplaceFalseWithTrue
            )
        try:
            # With retries=False urllib3 hands a redirect back instead of following it, whatever
            # `redirect` says; and the target is a path ("/..."), which urllib3 always takes for
            # the pool's own host: neither flag's True can change what is sent or returned.
            response = pool.urlopen(
                "GET",
                destination.target,
                headers={"Host": host_header(destination), "User-Agent": "compose-inference/1"},
                redirect=False,  # pragma: no mutate: ReplaceFalseWithTrue
                retries=False,
                preload_content=False,
                assert_same_host=False,  # pragma: no mutate: ReplaceFalseWithTrue
            )
            try:
                status = response.status
                if status in _REDIRECTS or not _success(status):
                    return status, response.headers.get("Location"), b""
                declared = response.headers.get("Content-Length")
                limit = self.settings.max_bytes
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise errors.InputRejected(
                        f"{field}: {_safe(destination.url)} is {declared} bytes, more than the"
                        f" limit of {limit}"
                    )
                # read1: whatever has arrived, so a trickling server is measured as it trickles
                # instead of blocking a 64 KiB read for hours.
                body = self._read_limited(
                    lambda: response.read1(_CHUNK), destination.url, field=field, budget=budget
                )
                return status, None, body
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

    def _read_limited(
        self, read: Callable[[], bytes], url: str, *, field: str, budget: _Budget
    ) -> bytes:
        """Read chunks until the end, refusing more than ``max_bytes`` (whatever the headers
        said), and failing a transfer that is too slow or runs past the deadline."""
        settings = self.settings
        limit = settings.max_bytes
        chunks: list[bytes] = []
        total = 0
        started = self._clock()
        while True:
            chunk = read()
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                raise errors.InputRejected(
                    f"{field}: {_safe(url)} is larger than the limit of {limit} bytes"
                )
            chunks.append(chunk)
            now = self._clock()
            elapsed = now - started
            if now > budget.deadline:
                raise errors.InputUnavailable(
                    f"{field}: {_safe(url)} too slow: {total} bytes when the fetch deadline of"
                    f" {settings.deadline:g} s passed"
                )
            if settings.min_rate and elapsed > settings.rate_grace:
                # min_rate is a whole number: rate < min_rate exactly when floor(rate) < min_rate,
                # so `//` for `/` cannot change the result.
                rate = total / elapsed  # pragma: no mutate: *_Div_FloorDiv
                if rate < settings.min_rate:
                    raise errors.InputUnavailable(
                        f"{field}: {_safe(url)} too slow: {rate:.0f} bytes/s over {elapsed:.0f} s,"
                        f" below the minimum of {settings.min_rate} ({MIN_RATE_ENV})"
                    )

    # -- local ------------------------------------------------------------------------------

    def _fetch_local(self, path: Path, *, field: str) -> bytes:
        limit = self.settings.max_bytes
        try:
            size = path.stat().st_size
            if size > limit:
                raise errors.InputRejected(
                    f"{field}: {path} is {size} bytes, more than the limit of {limit}"
                )
            # The size read above may be stale (a file still being written, a pipe): the read
            # itself stops one byte past the limit and refuses.
            with path.open("rb") as handle:
                data = handle.read(limit + 1)
            if len(data) > limit:
                raise errors.InputRejected(
                    f"{field}: {path} is larger than the limit of {limit} bytes"
                )
            return data
        except FileNotFoundError:
            raise errors.InputUnavailable(f"{field}: {path} does not exist") from None
        except IsADirectoryError:
            raise errors.InputRejected(f"{field}: {path} is a directory") from None
        except PermissionError:
            raise errors.InputUnavailable(f"{field}: {path} is not readable") from None


def host_header(destination: netguard.Destination) -> str:
    """The Host header for ``destination``: its name (an IPv6 literal in brackets), and its port
    unless that is the scheme's default (RFC 9110)."""
    host = f"[{destination.host}]" if ":" in destination.host else destination.host
    # The scheme is "https" or "http", and "http" < "https": `>=` for `==` is the same test.
    default_port = 443 if destination.scheme == "https" else 80  # pragma: no mutate: *_Eq_GtE
    return host if destination.port == default_port else f"{host}:{destination.port}"


def _success(status: int) -> bool:
    return 200 <= status < 300


def destination_name(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _safe(url: str) -> str:
    """The URL without its query string (it may carry a presigned signature)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
