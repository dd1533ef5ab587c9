"""``compose worker`` settings: read from the environment; each bad one exits 2 naming the
variable, before any model is loaded or any request sent."""

from __future__ import annotations

import json

import pytest

from compose_api import pools
from compose_inference import __main__ as entrypoint
from compose_inference import pool_worker

PROFILE = {
    "name": "tiny",
    "models": {"base": {"uri": "/models/base"}},
    "licence": {"name": "Apache-2.0"},
}


def good_env() -> dict[str, str]:
    return {
        pools.POD_ENV: "tiny-pool-workers-abc12",
        pools.NAMESPACE_ENV: "team-a",
        pools.NODE_ENV: "node-1",
        pools.POOL_ENV: "tiny-pool",
        pools.PROFILE_ENV: json.dumps(PROFILE),
        pools.LEASE_SECONDS_ENV: "9",
        pools.PORT_ENV: "8081",
        pools.POD_UID_ENV: "uid-1",
        "COMPOSE_KUBE_URL": "https://127.0.0.1:6443",
        "COMPOSE_OUTPUT_BUCKET": "results",
    }


def test_settings_are_read_from_the_environment() -> None:
    settings = pool_worker.Settings.from_env(good_env())
    assert (settings.pod, settings.namespace, settings.node, settings.pool) == (
        "tiny-pool-workers-abc12",
        "team-a",
        "node-1",
        "tiny-pool",
    )
    assert settings.profile.name == "tiny"
    assert str(settings.profile.models["base"].uri) == "/models/base"
    assert (settings.lease_seconds, settings.port, settings.pod_uid) == (9, 8081, "uid-1")
    assert settings.connection.server == "https://127.0.0.1:6443"
    assert settings.default_bucket == "results"


def test_defaults_are_the_pool_s() -> None:
    env = good_env()
    for name in (pools.LEASE_SECONDS_ENV, pools.PORT_ENV, pools.NODE_ENV, pools.POD_UID_ENV):
        del env[name]
    settings = pool_worker.Settings.from_env(env)
    assert settings.lease_seconds == pools.CompositionPoolSpec(profile="x").lease_seconds
    assert settings.port == pools.PROBE_PORT
    assert settings.node is None and settings.pod_uid is None


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        (pools.POD_ENV, "", f"{pools.POD_ENV}: required"),
        (pools.NAMESPACE_ENV, " ", f"{pools.NAMESPACE_ENV}: required"),
        (pools.POOL_ENV, "", f"{pools.POOL_ENV}: required"),
        (pools.PROFILE_ENV, "", f"{pools.PROFILE_ENV}: required"),
        (pools.PROFILE_ENV, "{not json", f"{pools.PROFILE_ENV}: not a model profile"),
        (pools.PROFILE_ENV, '{"name": "Bad Name!"}', f"{pools.PROFILE_ENV}.name"),
        (pools.LEASE_SECONDS_ENV, "1", f"{pools.LEASE_SECONDS_ENV}: '1': Input should be greater"),
        (pools.LEASE_SECONDS_ENV, "301", f"{pools.LEASE_SECONDS_ENV}: '301'"),
        (pools.LEASE_SECONDS_ENV, "ten", f"{pools.LEASE_SECONDS_ENV}: 'ten'"),
        (pools.PORT_ENV, "0", f"{pools.PORT_ENV}: '0'"),
        (pools.PORT_ENV, "70000", f"{pools.PORT_ENV}: '70000'"),
        ("COMPOSE_MAX_INPUT_PIXELS", "many", "COMPOSE_MAX_INPUT_PIXELS: 'many'"),
        ("COMPOSE_FETCH_ATTEMPTS", "0", "COMPOSE_FETCH_ATTEMPTS: must be at least 1"),
    ],
)
def test_a_bad_setting_exits_2_naming_it(
    name: str, value: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**good_env(), name: value}
    assert entrypoint.worker([], environ=env) == 2
    error = capsys.readouterr().err
    assert error.startswith("compose worker: error: ")
    assert fragment in error


def test_no_kubernetes_connection_exits_2_naming_the_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = good_env()
    del env["COMPOSE_KUBE_URL"]
    assert entrypoint.worker([], environ=env) == 2
    error = capsys.readouterr().err
    assert "COMPOSE_KUBE_URL, KUBECONFIG or the pod's service account" in error
    assert "KUBERNETES_SERVICE_HOST is unset" in error
