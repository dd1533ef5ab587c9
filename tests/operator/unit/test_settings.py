"""Operator settings from COMPOSE_* variables: defaults, parsing, and errors naming the variable."""

from __future__ import annotations

import pathlib

import pytest

from compose_operator import __main__ as entry
from compose_operator import settings
from tests.operator.conftest import PROFILES_YAML


@pytest.fixture
def profiles(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(PROFILES_YAML)
    return path


def test_defaults(profiles: pathlib.Path) -> None:
    config = settings.from_environment({"COMPOSE_PROFILES_PATH": str(profiles)})
    assert config.clusterwide
    assert config.metrics_port == 8080
    assert config.health_port == 8081
    assert config.max_running_per_namespace == 0
    assert sorted(config.profiles) == ["instantid-sdxl", "smoke"]
    assert config.standalone is False


def test_values_are_parsed(profiles: pathlib.Path) -> None:
    config = settings.from_environment(
        {
            "COMPOSE_PROFILES_PATH": str(profiles),
            "COMPOSE_NAMESPACES": " studio, batch ,,",
            "COMPOSE_STANDALONE": "true",
            "COMPOSE_MAX_RUNNING_PER_NAMESPACE": "3",
            "COMPOSE_OUTPUT_PREFIX": "results",
            "COMPOSE_OUTPUT_BUCKET": "",
            "UNRELATED": "ignored",
        }
    )
    assert config.namespaces == ("studio", "batch")
    assert not config.clusterwide
    assert config.standalone is True
    assert config.max_running_per_namespace == 3
    assert config.output_prefix == "results/"
    assert config.output_bucket is None


def test_every_bad_variable_is_named(profiles: pathlib.Path) -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.from_environment(
            {
                "COMPOSE_PROFILES_PATH": str(profiles),
                "COMPOSE_MAX_RUNNING_PER_NAMESPACE": "-1",
                "COMPOSE_METRICS_PORT": "http",
                "COMPOSE_RESULT_URL_BASE": "ftp://nope",
                "COMPOSE_STANDALONE": "perhaps",
            }
        )
    lines = str(caught.value).splitlines()
    assert len(lines) == 4
    assert any(line.startswith("COMPOSE_MAX_RUNNING_PER_NAMESPACE: ") for line in lines)
    assert any(line.startswith("COMPOSE_METRICS_PORT: ") for line in lines)
    assert any(line.startswith("COMPOSE_RESULT_URL_BASE: ") for line in lines)
    assert any(line.startswith("COMPOSE_STANDALONE: ") for line in lines)


def test_profiles_path_is_required_and_checked(tmp_path: pathlib.Path) -> None:
    with pytest.raises(settings.SettingsError, match=r"^COMPOSE_PROFILES_PATH: required"):
        settings.from_environment({})
    with pytest.raises(settings.SettingsError, match=r"COMPOSE_PROFILES_PATH: cannot read"):
        settings.from_environment({"COMPOSE_PROFILES_PATH": str(tmp_path / "missing.yaml")})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: broken\n  resources: {gpu: 99}\n  licence: {name: x}\n")
    with pytest.raises(settings.SettingsError, match=r"profiles\[broken\]\.resources\.gpu"):
        settings.from_environment({"COMPOSE_PROFILES_PATH": str(bad)})


def test_settings_file_is_read_and_the_environment_wins(
    profiles: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    env_file = tmp_path / "operator.env"
    env_file.write_text(
        f"# mounted from a ConfigMap\nCOMPOSE_PROFILES_PATH={profiles}\n"
        "COMPOSE_AWS_REGION='eu-west-1'\nCOMPOSE_JOB_TTL_SECONDS=60\n"
    )
    config = settings.from_environment(
        {"COMPOSE_SETTINGS_FILE": str(env_file), "COMPOSE_JOB_TTL_SECONDS": "90"}
    )
    assert config.aws_region == "eu-west-1"
    assert config.job_ttl_seconds == 90
    env_file.write_text("not a pair\n")
    with pytest.raises(settings.SettingsError, match=r"COMPOSE_SETTINGS_FILE: .*:1: expected"):
        settings.from_environment({"COMPOSE_SETTINGS_FILE": str(env_file)})


def test_main_exits_2_with_the_problems(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry.main([], environ={"COMPOSE_METRICS_PORT": "x"}) == 2
    err = capsys.readouterr().err
    assert "COMPOSE_PROFILES_PATH: required" in err
    assert "COMPOSE_METRICS_PORT:" in err


def test_main_exits_2_on_bad_retention_settings(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("[]\n")
    environ = {
        "COMPOSE_PROFILES_PATH": str(profiles),
        "COMPOSE_RETENTION_TTL_SECONDS_AFTER_FINISHED": "-1",
    }
    assert entry.main([], environ=environ) == 2
    err = capsys.readouterr().err
    assert "COMPOSE_RETENTION_TTL_SECONDS_AFTER_FINISHED: Input should be greater" in err


def test_help_lists_the_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        entry.main(["--help"], environ={})
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for name in settings.OperatorSettings.model_fields:
        if name not in ("profiles", "tracing_env"):  # tracing_env: the OTEL_* variables
            assert f"COMPOSE_{name.upper()}" in out
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in out
