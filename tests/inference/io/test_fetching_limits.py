"""Fetching at its edges: exactly the byte limit against one byte more on every source, which
HTTP statuses are retried, followed or final, and the settings' boundaries and defaults."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from compose_api import netguard
from compose_inference import errors, fetching
from tests.inference.io.conftest import HttpServer, Reply, SleepLog
from tests.support import s3


def _fetcher(settings: fetching.FetchSettings, sleeps: SleepLog) -> fetching.Fetcher:
    return fetching.Fetcher(settings, sleep=sleeps)


@pytest.fixture
def small(fetch_settings: fetching.FetchSettings) -> fetching.FetchSettings:
    """A limit small enough to write exact-size bodies quickly."""
    return dataclasses.replace(fetch_settings, max_bytes=10_000)


# -- exactly the limit passes, one byte more is refused ------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_http_body_of_exactly_the_limit_passes_and_one_byte_more_is_refused(
    http_server: HttpServer, small: fetching.FetchSettings, sleeps: SleepLog, chunked: bool
) -> None:
    limit = small.max_bytes
    chunk = 1000 if chunked else None
    http_server.routes["/exact"] = lambda: Reply(body=b"e" * limit, chunk_size=chunk)
    http_server.routes["/over"] = lambda: Reply(body=b"o" * (limit + 1), chunk_size=chunk)
    fetcher = _fetcher(small, sleeps)
    assert fetcher.fetch(http_server.url("/exact"), field="f") == b"e" * limit
    with pytest.raises(errors.InputRejected, match=f"limit of {limit}"):
        fetcher.fetch(http_server.url("/over"), field="f")
    assert http_server.hits["/over"] == 1  # too large is permanent


def test_an_s3_object_of_exactly_the_limit_passes_and_one_byte_more_is_refused(
    s3_env: s3.S3Server, small: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    limit = small.max_bytes
    bucket = s3_env.new_bucket("inputs")
    s3_env.client().put_object(Bucket=bucket, Key="exact", Body=b"e" * limit)
    s3_env.client().put_object(Bucket=bucket, Key="over", Body=b"o" * (limit + 1))
    fetcher = _fetcher(small, sleeps)
    assert fetcher.fetch(f"s3://{bucket}/exact", field="f") == b"e" * limit
    with pytest.raises(errors.InputRejected, match=f"is {limit + 1} bytes, more than the limit"):
        fetcher.fetch(f"s3://{bucket}/over", field="f")


def test_a_local_file_of_exactly_the_limit_passes_and_one_byte_more_is_refused(
    tmp_path: Path, small: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    local = dataclasses.replace(small, allow_local_paths=True)
    limit = local.max_bytes
    exact, over = tmp_path / "exact.png", tmp_path / "over.png"
    exact.write_bytes(b"e" * limit)
    over.write_bytes(b"o" * (limit + 1))
    fetcher = _fetcher(local, sleeps)
    assert fetcher.fetch(str(exact), field="f") == b"e" * limit
    with pytest.raises(errors.InputRejected, match=f"is {limit + 1} bytes, more than the limit"):
        fetcher.fetch(str(over), field="f")


def test_a_local_file_that_grows_past_the_limit_after_its_size_was_read_is_refused(
    tmp_path: Path, small: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    """A pipe has no size up front (like a file still being written): the read itself must stop
    at the limit and refuse, not hand on a body one byte over it."""
    local = dataclasses.replace(small, allow_local_paths=True)
    fifo = tmp_path / "growing.png"
    os.mkfifo(fifo)

    def writer() -> None:
        with fifo.open("wb") as handle:
            handle.write(b"g" * (local.max_bytes + 500))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    with pytest.raises(errors.InputRejected, match=f"larger than the limit of {local.max_bytes}"):
        _fetcher(local, sleeps).fetch(str(fifo), field="spec.inputs.person.uri")
    thread.join(timeout=5)


# -- HTTP statuses ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog, status: int
) -> None:
    answers = iter([Reply(status=status), Reply(body=b"second time lucky")])
    http_server.routes["/flaky"] = lambda: next(answers)
    body = _fetcher(fetch_settings, sleeps).fetch(http_server.url("/flaky"), field="f")
    assert body == b"second time lucky"
    assert http_server.hits["/flaky"] == 2
    assert len(sleeps.delays) == 1


@pytest.mark.parametrize("status", [300, 304, 401, 426, 430, 501, 505])
def test_other_statuses_fail_at_once(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog, status: int
) -> None:
    """Neither success, nor a redirect, nor transient: 304 and 300 are not followed (no
    Location is used), 501 and 505 are not worth a retry."""
    http_server.routes["/final"] = lambda: Reply(status=status, headers={"Location": "/elsewhere"})
    http_server.serve("/elsewhere", b"must not be fetched")
    with pytest.raises(errors.InputUnavailable, match=f"answered HTTP {status}$"):
        _fetcher(fetch_settings, sleeps).fetch(http_server.url("/final"), field="f")
    assert http_server.hits == {"/final": 1}
    assert sleeps.delays == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_every_redirect_status_is_followed(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog, status: int
) -> None:
    http_server.serve("/target.png", b"moved here")
    url = http_server.redirect("/old.png", "/target.png", status=status)
    assert _fetcher(fetch_settings, sleeps).fetch(url, field="f") == b"moved here"
    assert http_server.hits == {"/old.png": 1, "/target.png": 1}


@pytest.mark.parametrize("status", [200, 203, 206, 299])
def test_every_success_status_returns_the_body(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog, status: int
) -> None:
    url = http_server.serve("/ok.png", b"body", status=status)
    assert _fetcher(fetch_settings, sleeps).fetch(url, field="f") == b"body"


def test_a_redirect_without_a_location_fails_naming_the_status(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    http_server.routes["/nowhere"] = lambda: Reply(status=302)
    with pytest.raises(errors.InputUnavailable, match="answered 302 without a Location"):
        _fetcher(fetch_settings, sleeps).fetch(http_server.url("/nowhere"), field="f")


@pytest.mark.parametrize("uri", ["t3://bucket/key.png", "ftp://host/key.png", "S4://b/k"])
def test_an_unknown_scheme_is_refused_as_such(
    fetch_settings: fetching.FetchSettings, sleeps: SleepLog, uri: str
) -> None:
    with pytest.raises(errors.InputRejected) as info:
        _fetcher(fetch_settings, sleeps).fetch(uri, field="spec.inputs.place.uri")
    assert str(info.value) == (
        f"spec.inputs.place.uri: {uri!r} is not an s3:// or https:// URI"
        " (local paths only in local mode)"
    )


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "field", "value"),
    [
        ("COMPOSE_MAX_INPUT_BYTES", "1", "max_bytes", 1),
        ("COMPOSE_MAX_INPUT_BYTES", " 1234 ", "max_bytes", 1234),
        ("COMPOSE_FETCH_ATTEMPTS", "1", "attempts", 1),
        ("COMPOSE_FETCH_ATTEMPTS", "9", "attempts", 9),
        ("COMPOSE_FETCH_MIN_BYTES_PER_SECOND", "0", "min_rate", 0),
        ("COMPOSE_FETCH_BACKOFF_SECONDS", "0", "base", 0.0),
        ("COMPOSE_FETCH_BACKOFF_SECONDS", "1.5", "base", 1.5),
        ("COMPOSE_FETCH_DEADLINE_SECONDS", "0.01", "deadline", 0.01),
        ("COMPOSE_FETCH_CA_BUNDLE", " /etc/ca.pem ", "ca_bundle", "/etc/ca.pem"),
    ],
)
def test_each_setting_takes_its_smallest_allowed_and_an_ordinary_value(
    name: str, raw: str, field: str, value: object
) -> None:
    settings = fetching.FetchSettings.from_env({name: raw})
    where = settings.backoff if field in ("attempts", "base") else settings
    assert getattr(where, field) == value


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("COMPOSE_FETCH_ATTEMPTS", "0", "COMPOSE_FETCH_ATTEMPTS: must be at least 1, got 0"),
        ("COMPOSE_MAX_INPUT_BYTES", "-1", "COMPOSE_MAX_INPUT_BYTES: must be at least 1, got -1"),
        ("COMPOSE_FETCH_BACKOFF_SECONDS", "-0.01", "must not be negative, got -0.01"),
        ("COMPOSE_FETCH_DEADLINE_SECONDS", "-1", "must be more than 0, got -1.0"),
        ("COMPOSE_FETCH_DEADLINE_SECONDS", "inf", "must be a finite number, got 'inf'"),
        ("COMPOSE_FETCH_BACKOFF_SECONDS", "soon", "'soon' is not a number"),
    ],
)
def test_each_setting_refuses_the_value_just_past_its_bound(
    name: str, raw: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        fetching.FetchSettings.from_env({name: raw})


def test_the_defaults_are_the_documented_ones() -> None:
    """inference_image/README.md documents these; the gateway's uploads rely on the byte limit."""
    readme = (Path(__file__).resolve().parents[3] / "inference_image" / "README.md").read_text()
    assert "`COMPOSE_MAX_INPUT_BYTES`, 25 MiB" in readme
    defaults = fetching.FetchSettings.from_env({})
    assert defaults.max_bytes == 25 * 1024 * 1024
    assert defaults.backoff.attempts == 4
    assert defaults.backoff.base == 0.5
    assert defaults.ca_bundle is None
    assert defaults.allow_local_paths is False
    assert fetching.FetchSettings.from_env({}, allow_local_paths=True).allow_local_paths is True


def test_settings_cannot_change_under_a_fetcher(fetch_settings: fetching.FetchSettings) -> None:
    """One Fetcher serves many jobs: its settings are frozen."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        fetch_settings.max_bytes = 1  # type: ignore[misc]


# -- a pipe past the limit, odd limits ------------------------------------------------------------


@pytest.mark.parametrize("limit", [10_000, 10_001])
def test_a_pipe_past_the_limit_is_refused_without_waiting_for_its_end(
    tmp_path: Path, small: fetching.FetchSettings, sleeps: SleepLog, limit: int
) -> None:
    """A pipe that has sent one byte more than the limit is refused at once, while its writer
    still holds it open: the read stops one byte past the limit, it does not wait for more."""
    local = dataclasses.replace(small, allow_local_paths=True, max_bytes=limit)
    fifo = tmp_path / "endless.png"
    os.mkfifo(fifo)
    refused = threading.Event()
    closed_first: list[bool] = []

    def writer() -> None:
        with fifo.open("wb") as handle:
            handle.write(b"p" * (limit + 1))
            handle.flush()
            closed_first.append(not refused.wait(timeout=5))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    with pytest.raises(errors.InputRejected, match=f"larger than the limit of {limit} bytes"):
        _fetcher(local, sleeps).fetch(str(fifo), field="f")
    refused.set()
    thread.join(timeout=10)
    assert closed_first == [False]


def test_a_local_file_of_exactly_an_odd_limit_passes_whole(
    tmp_path: Path, small: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    local = dataclasses.replace(small, allow_local_paths=True, max_bytes=10_001)
    exact = tmp_path / "exact.png"
    exact.write_bytes(bytes(range(256)) * 39 + b"x" * 17)
    assert _fetcher(local, sleeps).fetch(str(exact), field="f") == exact.read_bytes()


# -- statuses that are not a success: their bodies are never read -----------------------------


@pytest.mark.parametrize("status", [300, 404, 501])
def test_a_failed_answer_is_named_by_its_status_whatever_its_body(
    http_server: HttpServer, small: fetching.FetchSettings, sleeps: SleepLog, status: int
) -> None:
    # An error page larger than the limit: the answer fails for its status, the page unread.
    http_server.routes["/page"] = lambda: Reply(status=status, body=b"e" * (small.max_bytes + 1))
    with pytest.raises(errors.InputUnavailable, match=f"answered HTTP {status}$"):
        _fetcher(small, sleeps).fetch(http_server.url("/page"), field="f")


def test_an_informational_status_is_no_success(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    http_server.routes["/early"] = lambda: Reply(status=199, body=b"")
    with pytest.raises(errors.InputUnavailable, match=r"answered HTTP 199$"):
        _fetcher(fetch_settings, sleeps).fetch(http_server.url("/early"), field="f")


# -- the Host header -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "host", "port", "header"),
    [
        ("https", "images.example.com", 443, "images.example.com"),
        ("http", "images.example.com", 80, "images.example.com"),
        ("https", "images.example.com", 8443, "images.example.com:8443"),
        ("https", "images.example.com", 80, "images.example.com:80"),  # below the default
        ("http", "images.example.com", 443, "images.example.com:443"),
        ("http", "images.example.com", 8080, "images.example.com:8080"),
        ("https", "2606:4700::1111", 443, "[2606:4700::1111]"),
        ("https", "2606:4700::1111", 8443, "[2606:4700::1111]:8443"),
    ],
)
def test_the_host_header_carries_the_port_only_when_it_is_not_the_default(
    scheme: str, host: str, port: int, header: str
) -> None:
    url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}/a.png"
    destination = netguard.check_url(
        url, netguard.Policy(allow_http=True), resolver=lambda h, p: ["93.184.215.14"]
    )
    assert destination.port == port
    assert fetching.host_header(destination) == header


# -- time: the deadline, the minimum rate and its grace, at their bounds -------------------------


class Ticks:
    """A clock that moves ``step`` seconds at every reading, from ``start``."""

    def __init__(self, step: float, start: float = 1000.0) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


CHUNK = 64 * 1024


@pytest.fixture
def three_chunks(s3_env: s3.S3Server) -> str:
    """An S3 object read in exactly three reads of 64 KiB."""
    bucket = s3_env.new_bucket("inputs")
    s3_env.client().put_object(Bucket=bucket, Key="three", Body=b"t" * (3 * CHUNK))
    return f"s3://{bucket}/three"


def _timed(settings: fetching.FetchSettings, clock: Ticks, **changes: Any) -> fetching.Fetcher:
    changed = dataclasses.replace(settings, max_bytes=10 * CHUNK, **changes)
    return fetching.Fetcher(changed, sleep=SleepLog(), clock=clock)


# The S3 path reads the clock once for the deadline, once when the transfer starts and once
# after each chunk: with Ticks(1.0) from 1000, the deadline is 1001 + deadline, chunk k arrives
# at 1002 + k, k seconds into the transfer, at 64 KiB/s.


def test_a_transfer_whose_last_chunk_arrives_at_the_deadline_passes(
    three_chunks: str, fetch_settings: fetching.FetchSettings
) -> None:
    on_time = _timed(fetch_settings, Ticks(1.0), deadline=4.0, min_rate=0)
    late = _timed(fetch_settings, Ticks(1.0), deadline=3.5, min_rate=0)

    assert on_time.fetch(three_chunks, field="f") == b"t" * (3 * CHUNK)
    with pytest.raises(errors.InputUnavailable, match=r"too slow: 196608 bytes when the fetch"):
        late.fetch(three_chunks, field="f")


def test_the_rate_is_judged_only_after_the_grace_period(
    three_chunks: str, fetch_settings: fetching.FetchSettings
) -> None:
    # Far below any rate (64 KiB/s against 1 GB/s), but never past the grace of 3 s.
    strict = {"min_rate": 10**9, "deadline": 1e6}
    within = _timed(fetch_settings, Ticks(1.0), rate_grace=3.0, **strict)
    past = _timed(fetch_settings, Ticks(1.0), rate_grace=2.5, **strict)

    assert within.fetch(three_chunks, field="f") == b"t" * (3 * CHUNK)
    with pytest.raises(errors.InputUnavailable, match=r"too slow: 65536 bytes/s over 3 s"):
        past.fetch(three_chunks, field="f")


@pytest.mark.parametrize(
    ("step", "min_rate", "passes"),
    [
        (1.0, 65536, True),  # exactly the minimum
        (1.0, 65535, True),
        (1.0, 65537, False),
        (2.0, 32769, False),  # 32768 bytes/s
        (2.0, 32768, True),
    ],
)
def test_a_transfer_at_exactly_the_minimum_rate_passes_and_just_below_fails(
    three_chunks: str,
    fetch_settings: fetching.FetchSettings,
    step: float,
    min_rate: int,
    passes: bool,
) -> None:
    fetcher = _timed(fetch_settings, Ticks(step), min_rate=min_rate, rate_grace=0.5, deadline=1e6)
    if passes:
        assert fetcher.fetch(three_chunks, field="f") == b"t" * (3 * CHUNK)
    else:
        with pytest.raises(errors.InputUnavailable, match=f"below the minimum of {min_rate}"):
            fetcher.fetch(three_chunks, field="f")


# -- no single wait past the deadline ------------------------------------------------------------


@pytest.fixture
def stalled(http_server: HttpServer) -> str:
    """Headers at once, the body 0.6 s later."""
    http_server.routes["/stalled"] = lambda: Reply(body=b"late", chunk_size=4, chunk_delay=0.6)
    return http_server.url("/stalled")


def test_a_read_never_waits_past_the_deadline(
    stalled: str, fetch_settings: fetching.FetchSettings
) -> None:
    # 0.2 s left (the clock stands still): the read gives up after 0.2 s, not after its 5 s.
    settings = dataclasses.replace(fetch_settings, deadline=0.2, read_timeout=5.0)
    fetcher = fetching.Fetcher(settings, sleep=SleepLog(), clock=lambda: 1000.0)
    with pytest.raises(errors.InputUnavailable, match="unreachable after 1 attempts"):
        fetcher.fetch(stalled, field="f")


def test_an_attempt_that_starts_at_the_deadline_still_gets_a_short_timeout(
    stalled: str, fetch_settings: fetching.FetchSettings
) -> None:
    # The clock is already past the deadline when the request starts: a floor of 0.05 s, not a
    # negative timeout (which urllib3 would refuse with a ValueError).
    settings = dataclasses.replace(fetch_settings, deadline=0.5)
    fetcher = fetching.Fetcher(settings, sleep=SleepLog(), clock=Ticks(1.0))
    with pytest.raises(errors.InputUnavailable, match=r"fetch deadline of 0\.5 s left no time"):
        fetcher.fetch(stalled, field="f")


def test_the_settings_defaults_are_the_documented_ones() -> None:
    """What FetchSettings() gives without the environment (connect/read timeouts and the rate's
    grace have no variable) matches inference_image/README.md and from_env."""
    readme = (Path(__file__).resolve().parents[3] / "inference_image" / "README.md").read_text()
    assert "timeouts (5 s to connect, 30 s per read," in readme
    assert "64 KiB/s,\njudged after 5 s" in readme and "at most 5)" in readme
    defaults = fetching.FetchSettings()
    assert (defaults.connect_timeout, defaults.read_timeout, defaults.rate_grace) == (5, 30, 5)
    assert (defaults.max_redirects, defaults.deadline, defaults.min_rate) == (5, 120, 64 * 1024)
    from_env = fetching.FetchSettings.from_env({})
    assert dataclasses.replace(from_env, policy=defaults.policy) == defaults


# -- S3 URIs and errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "why"), [("s3:///key.png", "no bucket"), ("s3://bucket", "no object key")]
)
def test_an_s3_uri_without_bucket_or_key_is_refused_naming_the_field(
    fetch_settings: fetching.FetchSettings, sleeps: SleepLog, uri: str, why: str
) -> None:
    with pytest.raises(errors.InputRejected, match=f"^spec.inputs.place.uri: .*{why}"):
        _fetcher(fetch_settings, sleeps).fetch(uri, field="spec.inputs.place.uri")


def test_an_archived_s3_object_is_unavailable_and_not_called_denied(
    s3_env: s3.S3Server, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    bucket = s3_env.new_bucket("inputs")
    s3_env.client().put_object(Bucket=bucket, Key="cold.png", Body=b"c", StorageClass="GLACIER")
    with pytest.raises(errors.InputUnavailable) as info:
        _fetcher(fetch_settings, sleeps).fetch(f"s3://{bucket}/cold.png", field="f")
    assert str(info.value).startswith(f"f: s3://{bucket}/cold.png could not be read: ")
    assert "InvalidObjectState" in str(info.value) and sleeps.delays == []
