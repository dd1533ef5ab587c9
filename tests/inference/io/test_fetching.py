"""Fetching inputs: S3 and HTTP sources, limits, retries for transient errors only, and refusal
of forbidden addresses, also behind redirects."""

from __future__ import annotations

import dataclasses
import re
import socket

import pytest

from compose_api import contract
from compose_inference import errors, fetching, retrying
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
    from pathlib import Path

    path = Path(str(tmp_path)) / "p.png"
    path.write_bytes(b"local")
    with pytest.raises(errors.InputRejected, match="local paths only in local mode"):
        make_fetcher(fetch_settings, sleeps).fetch(str(path), field="f")
    local = dataclasses.replace(fetch_settings, allow_local_paths=True)
    assert make_fetcher(local, sleeps).fetch(str(path), field="f") == b"local"
    with pytest.raises(errors.InputUnavailable, match="does not exist"):
        make_fetcher(local, sleeps).fetch(str(path) + ".missing", field="f")


# -- byte limits without a Content-Length, deadlines, slow servers, retry classification --------


class StepClock:
    """A clock that moves ``step`` seconds at every reading and by every (recorded) sleep."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 0.0
        self.step = step
        self.delays: list[float] = []

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds


def test_a_chunked_body_without_a_length_is_read(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    body = bytes(range(256)) * 1000
    http_server.routes["/chunked"] = lambda: Reply(body=body, chunk_size=4096)
    assert make_fetcher(fetch_settings, sleeps).fetch(http_server.url("/chunked"), field="f") == (
        body
    )


def test_a_chunked_body_over_the_limit_is_refused_while_streaming(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    """No Content-Length to refuse up front: the streaming read must stop at the limit."""
    body = b"\0" * (fetch_settings.max_bytes + 1)
    http_server.routes["/endless"] = lambda: Reply(body=body, chunk_size=64 * 1024)
    with pytest.raises(errors.InputRejected) as info:
        make_fetcher(fetch_settings, sleeps).fetch(
            http_server.url("/endless"), field="spec.inputs.place.uri"
        )
    assert str(info.value) == (
        f"spec.inputs.place.uri: {http_server.url('/endless')} is larger than the limit of"
        f" {fetch_settings.max_bytes} bytes"
    )
    assert sleeps.delays == []  # too large is permanent: not retried


def test_a_trickling_server_fails_once_below_the_minimum_rate(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings
) -> None:
    """A server sending a few bytes at a time would hold a GPU pod for hours: below the
    minimum rate (judged after the grace period) the input is hopeless and is not retried."""
    http_server.routes["/slow"] = lambda: Reply(body=b"x" * 400, chunk_size=10)
    settings = dataclasses.replace(fetch_settings, min_rate=1024, rate_grace=5.0, deadline=1e6)
    clock = StepClock(step=1.0)  # every read appears to take a second: 10 bytes/s
    fetcher = fetching.Fetcher(settings, sleep=clock.sleep, clock=clock)
    with pytest.raises(errors.InputUnavailable) as info:
        fetcher.fetch(http_server.url("/slow"), field="spec.inputs.person.uri")
    message = str(info.value)
    assert message.startswith("spec.inputs.person.uri: ")
    assert "too slow:" in message and "below the minimum of 1024" in message
    assert http_server.hits["/slow"] == 1 and clock.delays == []
    # The same server is fine when the rate check is off and the deadline is far.
    relaxed = fetching.Fetcher(
        dataclasses.replace(settings, min_rate=0), sleep=clock.sleep, clock=StepClock(1.0)
    )
    assert relaxed.fetch(http_server.url("/slow"), field="f") == b"x" * 400


def test_a_transfer_still_running_at_the_deadline_fails_once(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings
) -> None:
    http_server.routes["/long"] = lambda: Reply(body=b"y" * 400, chunk_size=10)
    settings = dataclasses.replace(fetch_settings, min_rate=0, deadline=30.0)
    clock = StepClock(step=1.0)
    fetcher = fetching.Fetcher(settings, sleep=clock.sleep, clock=clock)
    with pytest.raises(errors.InputUnavailable, match="the fetch deadline of 30 s passed"):
        fetcher.fetch(http_server.url("/long"), field="f")
    assert http_server.hits["/long"] == 1 and clock.delays == []


def test_retries_stop_when_the_deadline_leaves_no_time_for_another(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings
) -> None:
    http_server.routes["/down"] = lambda: Reply(status=503)
    settings = dataclasses.replace(
        fetch_settings, deadline=5.0, backoff=retrying.Backoff(attempts=10, base=1.0, cap=8.0)
    )
    clock = StepClock()  # moves only by the backoff sleeps
    fetcher = fetching.Fetcher(settings, sleep=clock.sleep, clock=clock)
    with pytest.raises(errors.InputUnavailable) as info:
        fetcher.fetch(http_server.url("/down"), field="f")
    # 0 s: fail, wait 1; 1 s: fail, wait 2; 3 s: fail, and a wait of 4 would pass 5 s.
    assert clock.delays == [1.0, 2.0]
    assert http_server.hits["/down"] == 3
    assert "unreachable after 3 attempts (the fetch deadline of 5 s left no time" in str(info.value)


def test_throttling_is_retried(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    answers = iter([Reply(status=429), Reply(body=b"after the throttle")])
    http_server.routes["/busy"] = lambda: next(answers)
    body = make_fetcher(fetch_settings, sleeps).fetch(http_server.url("/busy"), field="f")
    assert body == b"after the throttle"
    assert http_server.hits["/busy"] == 2 and sleeps.delays == [0.25]


def test_a_name_that_does_not_resolve_is_retried(
    http_server: HttpServer, fetch_settings: fetching.FetchSettings, sleeps: SleepLog
) -> None:
    """DNS may recover (a resolver restart, a new record): a failed lookup is transient."""
    http_server.serve("/p.png", b"resolved")
    lookups: list[str] = []

    def flaky_resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        if len(lookups) == 1:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return ["127.0.0.1"]

    url = f"http://images.example.test:{http_server.port}/p.png"
    fetcher = fetching.Fetcher(fetch_settings, sleep=sleeps, resolver=flaky_resolver)
    assert fetcher.fetch(url, field="f") == b"resolved"
    assert lookups == ["images.example.test", "images.example.test"]
    assert sleeps.delays == [0.25]

    def never(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(errors.InputUnavailable) as info:
        fetching.Fetcher(fetch_settings, sleep=sleeps, resolver=never).fetch(url, field="f")
    assert "unreachable after 3 attempts" in str(info.value)
    assert "images.example.test did not resolve" in str(info.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"COMPOSE_FETCH_ATTEMPTS": "0"}, "COMPOSE_FETCH_ATTEMPTS: must be at least 1, got 0"),
        ({"COMPOSE_FETCH_ATTEMPTS": "-3"}, "COMPOSE_FETCH_ATTEMPTS: must be at least 1, got -3"),
        ({"COMPOSE_FETCH_ATTEMPTS": "two"}, "COMPOSE_FETCH_ATTEMPTS: 'two' is not an integer"),
        ({"COMPOSE_FETCH_DEADLINE_SECONDS": "0"}, "COMPOSE_FETCH_DEADLINE_SECONDS: must be more"),
        ({"COMPOSE_FETCH_DEADLINE_SECONDS": "nan"}, "must be a finite number"),
        ({"COMPOSE_FETCH_MIN_BYTES_PER_SECOND": "-1"}, "must be at least 0, got -1"),
        ({"COMPOSE_FETCH_BACKOFF_SECONDS": "-0.5"}, "must not be negative"),
        ({"COMPOSE_MAX_INPUT_BYTES": "0"}, "COMPOSE_MAX_INPUT_BYTES: must be at least 1"),
    ],
)
def test_bad_fetch_settings_are_refused_naming_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        fetching.FetchSettings.from_env(environ)


def test_fetch_settings_from_the_environment() -> None:
    settings = fetching.FetchSettings.from_env(
        {
            "COMPOSE_FETCH_ATTEMPTS": "1",
            "COMPOSE_FETCH_DEADLINE_SECONDS": "45",
            "COMPOSE_FETCH_MIN_BYTES_PER_SECOND": "0",
        }
    )
    assert (settings.backoff.attempts, settings.deadline, settings.min_rate) == (1, 45.0, 0)
    assert settings.backoff.delays() == []
    defaults = fetching.FetchSettings.from_env({})
    assert (defaults.backoff.attempts, defaults.deadline, defaults.min_rate) == (4, 120.0, 65536)
