"""Fetching at its edges: exactly the byte limit against one byte more on every source, which
HTTP statuses are retried, followed or final, and the settings' boundaries and defaults."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from pathlib import Path

import pytest

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
