"""Pure parts: settings from the environment, signatures, the Prefer header, backoff, job ids."""

from __future__ import annotations

import hashlib
import hmac
import io
import pathlib

import pydantic
import pytest

from compose_gateway import __main__ as gateway_main
from compose_gateway import app, callbacks, naming, routes, settings, signing


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOSE_KUBE_URL", "http://127.0.0.1:8001/")
    monkeypatch.setenv("COMPOSE_GATEWAY_NAMESPACE", "images")
    monkeypatch.setenv("COMPOSE_GATEWAY_CORS_ORIGINS", "https://app.example.com, https://x.io")
    monkeypatch.setenv("COMPOSE_GATEWAY_CALLBACK_ALLOW_CIDRS", '["10.1.0.0/16"]')
    monkeypatch.setenv("COMPOSE_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("COMPOSE_GATEWAY_INPUTS_PREFIX", "in")
    monkeypatch.setenv("COMPOSE_GATEWAY_PRESIGN_EXPIRES_SECONDS", "600")

    found = settings.Settings()

    assert found.kube_url == "http://127.0.0.1:8001"
    assert found.namespace == "images"
    assert found.cors_origins == ["https://app.example.com", "https://x.io"]
    assert found.callback_allow_cidrs == ["10.1.0.0/16"]
    assert found.s3_endpoint_url == "http://minio:9000"
    assert found.inputs_prefix == "in/"
    assert found.presign_expires_seconds == 600


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOSE_GATEWAY_CALLBACK_ALLOW_CIDRS", "10.0.0.0/8,not-a-cidr")
    with pytest.raises(pydantic.ValidationError, match="callback_allow_cidrs"):
        settings.Settings()


def test_settings_that_make_every_job_invalid_are_refused() -> None:
    bad = settings.Settings(output_bucket="Not_A_Bucket", kube_url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"spec\.output\.bucket"):
        app.create_app(bad)


def test_a_signature_covers_the_time_the_key_id_and_the_body() -> None:
    master, body, now = b"master-secret", b'{"jobId":"gw-1"}', 1_700_000_100
    alice, bob = signing.key_secret(master, "alice"), signing.key_secret(master, "bob")
    value = signing.header(bob, "bob", body, 1_700_000_000)
    expected = hmac.new(bob.encode(), b"1700000000.bob." + body, hashlib.sha256).hexdigest()

    assert value == f"t=1700000000,k=bob,v1={expected}"
    assert alice != bob and len(bob) == 64
    assert bob == hmac.new(master, b"compose-gateway callback key v1\0bob", "sha256").hexdigest()
    assert signing.verify(bob, "bob", body, value, now=now)
    assert not signing.verify(bob, "bob", body + b" ", value, now=now)
    assert not signing.verify(signing.key_secret(b"other", "bob"), "bob", body, value, now=now)
    assert not signing.verify(bob, "bob", body, value, now=1_700_000_301)  # a late replay
    assert not signing.verify(bob, "bob", body, value, now=1_699_999_699)  # from the future
    assert signing.verify(bob, "bob", body, value, now=1_700_000_300)  # the edge of the window
    assert not signing.verify(bob, "bob", body, "t=x,k=bob,v1=y", now=now)
    # alice signs a callback "for bob" with the only secret she has: bob's receiver refuses it,
    # whether she names herself or bob in the header.
    forged_as_alice = signing.header(alice, "alice", body, 1_700_000_000)
    forged_as_bob = signing.header(alice, "bob", body, 1_700_000_000)
    assert not signing.verify(bob, "bob", body, forged_as_alice, now=now)
    assert not signing.verify(bob, "bob", body, forged_as_bob, now=now)


@pytest.mark.parametrize(
    ("query", "prefer", "expected"),
    [
        (None, None, (0.0, False)),
        (5.0, "wait=50", (5.0, False)),
        (None, "wait=7", (7.0, True)),
        (None, "respond-async, wait=12", (12.0, True)),
        (None, "handling=lenient; wait=500", (60.0, True)),
        (None, "return=minimal", (0.0, False)),
        (1000.0, None, (60.0, False)),
    ],
)
def test_the_wait_comes_from_the_query_or_prefer(
    query: float | None, prefer: str | None, expected: tuple[float, bool]
) -> None:
    assert routes.wait_seconds(query, prefer, 60.0) == expected


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [callbacks.backoff(n, first=2.0, cap=30.0) for n in range(1, 7)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_job_ids_sort_newest_first_and_idempotent_ones_last() -> None:
    times = [1_767_225_600.0, 1_767_225_600.001, 1_767_225_601.5, 4_000_000_000.0]
    ids = [naming.random_job_name(t) for t in times]
    keyed = [naming.idempotent_job_name("alice", key) for key in ("a", "b", "c")]

    assert all(naming.is_job_name(name) for name in ids + keyed)
    assert sorted(ids) == ids[::-1]  # the API server's name order is newest first
    assert max(ids) < min(keyed)
    assert naming.idempotent_job_name("alice", "a") == keyed[0]
    assert naming.idempotent_job_name("bob", "a") != keyed[0]
    # Two jobs in the same millisecond still get distinct ids.
    assert len({naming.random_job_name(times[0]) for _ in range(50)}) == 50


def test_the_readme_documents_every_setting() -> None:
    readme = (pathlib.Path(__file__).parents[2] / "gateway" / "README.md").read_text()
    for name, field in settings.Settings.model_fields.items():
        env = f"{settings.ENV_PREFIX}{name.upper()}"
        if field.validation_alias is not None:
            env = str(field.validation_alias.choices[0])  # type: ignore[union-attr]
        assert f"`{env}`" in readme, env


def test_the_cli_prints_a_keys_callback_secret_and_refuses_bad_keys(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    master = tmp_path / "secret"
    master.write_text("master-s3cret\n")

    assert (
        gateway_main.main(["callback-secret", "--id", "alice", "--secret-file", str(master)]) == 0
    )
    assert capsys.readouterr().out.strip() == signing.key_secret(b"master-s3cret", "alice")

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    with pytest.raises(SystemExit):
        gateway_main.main(["hash-key", "--id", "app", "--scheme", "scrypt"])
    assert "must start with cgw_app~" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("cgw_other~a-chosen-secret-value\n"))
    with pytest.raises(SystemExit):
        gateway_main.main(["hash-key", "--id", "app"])
    assert "names another entry" in capsys.readouterr().err
