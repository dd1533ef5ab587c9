"""Fetching inputs: S3 and HTTP sources, limits, retries for transient errors only, and refusal
of forbidden addresses, also behind redirects."""

from __future__ import annotations

import pytest

from compose_api import contract
from compose_inference import errors, fetching
from tests.inference.io.conftest import HttpServer, Reply, SleepLog
from tests.support import s3


def make_fetcher(settings: fetching.FetchSettings, sleeps: SleepLog) -> fetching.Fetcher:
    return fetching.Fetcher(settings, sleep=sleeps)


def test_http_fetch_returns_the_body(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    url = http_server.serve("/person.png", b"\x89PNG-bytes")
    body = make_fetcher(fetch_settings, sleeps).fetch(url, field="spec.inputs.person.uri")
    assert body == b"\x89PNG-bytes"


def test_redirects_are_followed_within_the_allow_list(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    http_server.serve("/final.png", b"final")
    url = http_server.redirect("/hop1", "/hop2")
    http_server.redirect("/hop2", http_server.url("/final.png"), status=307)
    assert make_fetcher(fetch_settings, sleeps).fetch(url, field="f") == b"final"
    assert http_server.hits == {"/hop1": 1, "/hop2": 1, "/final.png": 1}


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata address"),
        ("http://127.0.0.2:{port}/secret", "loopback address"),
        ("http://10.0.0.1/internal", "private address"),
        ("http://[::ffff:127.0.0.1]:{port}/x", "IPv4-mapped IPv6 address"),
        ("http://[fd00:ec2::254]/latest/", "cloud metadata address"),
    ],
)
def test_redirect_to_a_forbidden_address_is_refused(
    http_server: HttpServer,
    fetch_settings: fetching.FetchSettings,
    sleeps: SleepLog,
    target: str,
    reason: str,
) -> None:
    url = http_server.redirect("/innocent.png", target.format(port=http_server.port))
    with pytest.raises(errors.InputRejected) as info:
        make_fetcher(fetch_settings, sleeps).fetch(url, field="spec.inputs.place.uri")
    assert info.value.exit_code == contract.ExitCode.INPUT_REJECTED
    message = str(info.value)
    assert message.startswith("spec.inputs.place.uri: refused")
    assert reason in message
    assert "redirected from" in message
    assert sleeps.delays == []  # a refusal is never retried


def test_direct_metadata_url_is_refused_without_connecting(
    fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    with pytest.raises(errors.InputRejected, match="cloud metadata address"):
        make_fetcher(fetch_settings, sleeps).fetch(
            "https://169.254.169.254/latest/meta-data/", field="f"
        )


def test_default_policy_refuses_the_local_server(http_server: HttpServer, sleeps: SleepLog) -> None:
    url = http_server.serve("/a.png", b"x").replace("http://", "https://")
    with pytest.raises(errors.InputRejected, match="loopback address"):
        make_fetcher(fetching.FetchSettings(), sleeps).fetch(url, field="f")
    assert http_server.hits == {}


def test_unreachable_url_retries_then_input_unavailable(
    fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    closed = HttpServer()  # bound, never started, then closed: nothing listens on its port
    closed.close_unstarted()
    with pytest.raises(errors.InputUnavailable) as info:
        make_fetcher(fetch_settings, sleeps).fetch(closed.url("/x.png"), field="spec.f")
    assert info.value.exit_code == contract.ExitCode.INPUT_UNAVAILABLE
    assert "unreachable after 3 attempts" in str(info.value)
    assert sleeps.delays == [0.25, 0.5]


def test_server_errors_are_retried_until_success(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    answers = iter([Reply(status=503), Reply(status=500), Reply(body=b"ok")])
    http_server.routes["/flaky"] = lambda: next(answers)
    assert make_fetcher(fetch_settings, sleeps).fetch(http_server.url("/flaky"), field="f") == (
        b"ok"
    )
    assert http_server.hits["/flaky"] == 3
    assert sleeps.delays == [0.25, 0.5]


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_client_errors_are_not_retried(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog, status: int
) -> None:
    url = http_server.serve("/gone.png", b"", status=status)
    with pytest.raises(errors.InputUnavailable, match=f"answered HTTP {status}"):
        make_fetcher(fetch_settings, sleeps).fetch(url, field="f")
    assert http_server.hits["/gone.png"] == 1
    assert sleeps.delays == []


def test_body_over_the_byte_limit_is_rejected(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    url = http_server.serve("/huge.png", b"\0" * (fetch_settings.max_bytes + 1))
    with pytest.raises(errors.InputRejected, match="more than the limit"):
        make_fetcher(fetch_settings, sleeps).fetch(url, field="f")


def test_redirect_loop_stops(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    url = http_server.redirect("/loop", "/loop")
    with pytest.raises(errors.InputUnavailable, match="more than 5 redirects"):
        make_fetcher(fetch_settings, sleeps).fetch(url, field="f")
    assert http_server.hits["/loop"] == 6


def test_s3_object_is_read(
    s3_env: s3.S3Server, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    bucket = s3_env.new_bucket("inputs")
    s3_env.client().put_object(Bucket=bucket, Key="a/person.jpg", Body=b"jpeg-bytes")
    fetcher = make_fetcher(fetch_settings, sleeps)
    assert fetcher.fetch(f"s3://{bucket}/a/person.jpg", field="f") == b"jpeg-bytes"


def test_missing_s3_object_is_input_unavailable_without_retry(
    s3_env: s3.S3Server, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    bucket = s3_env.new_bucket("inputs")
    with pytest.raises(errors.InputUnavailable) as info:
        make_fetcher(fetch_settings, sleeps).fetch(
            f"s3://{bucket}/nope.jpg", field="spec.inputs.person.uri"
        )
    assert str(info.value) == f"spec.inputs.person.uri: s3://{bucket}/nope.jpg does not exist"
    assert sleeps.delays == []


def test_missing_bucket_is_input_unavailable(
    s3_env: s3.S3Server, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    with pytest.raises(errors.InputUnavailable, match="bucket of s3://no-such-bucket-x/k"):
        make_fetcher(fetch_settings, sleeps).fetch("s3://no-such-bucket-x/k.png", field="f")


def test_s3_object_over_the_limit_is_rejected(
    s3_env: s3.S3Server, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    bucket = s3_env.new_bucket("inputs")
    s3_env.client().put_object(
        Bucket=bucket, Key="big", Body=b"\0" * (fetch_settings.max_bytes + 1)
    )
    with pytest.raises(errors.InputRejected, match="more than the limit"):
        make_fetcher(fetch_settings, sleeps).fetch(f"s3://{bucket}/big", field="f")


def test_local_paths_only_in_local_mode(
    tmp_path: pytest.TempPathFactory, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    import dataclasses
    from pathlib import Path

    path = Path(str(tmp_path)) / "p.png"
    path.write_bytes(b"local")
    with pytest.raises(errors.InputRejected, match="local paths only in local mode"):
        make_fetcher(fetch_settings, sleeps).fetch(str(path), field="f")
    local = dataclasses.replace(fetch_settings, allow_local_paths=True)
    assert make_fetcher(local, sleeps).fetch(str(path), field="f") == b"local"
    with pytest.raises(errors.InputUnavailable, match="does not exist"):
        make_fetcher(local, sleeps).fetch(str(path) + ".missing", field="f")
