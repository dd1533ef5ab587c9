"""A standby instance recognises itself from kopf's peering object (kopf's pausing rule), and
replicas get distinct, stable peering priorities."""

from __future__ import annotations

import datetime
import pathlib

import pytest

from compose_operator import peering, settings
from tests.operator.conftest import PROFILES_YAML

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


def peer(priority: int, seconds_ago: int, lifetime: int = 60) -> dict[str, object]:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_a_live_peer_with_higher_or_equal_priority_makes_us_stand_by() -> None:
    assert peering.standing_down({"other": peer(20, 5)}, identity="me", priority=10, now=NOW)
    assert peering.standing_down({"other": peer(10, 5)}, identity="me", priority=10, now=NOW)


def test_lower_dead_or_own_entries_do_not() -> None:
    peers = {"me": peer(99, 1), "low": peer(5, 1), "dead": peer(50, 61), "junk": "x"}
    assert not peering.standing_down(peers, identity="me", priority=10, now=NOW)
    assert not peering.standing_down({}, identity="me", priority=0, now=NOW)


def test_each_pod_gets_a_stable_offset_added_to_the_base_priority(tmp_path: pathlib.Path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES_YAML)
    base = {"COMPOSE_PROFILES_PATH": str(profiles), "COMPOSE_PEERING_PRIORITY": "100"}
    config = settings.from_environment(base)
    pods = [f"compose-operator-7d9f8c6b5-{suffix}" for suffix in ("x2k4q", "p8mzt", "a1b2c")]
    priorities = [peering.effective_priority(config, pod) for pod in pods]
    assert priorities == [peering.effective_priority(config, pod) for pod in pods]  # stable
    assert len(set(priorities)) == len(pods)  # replicas do not tie
    assert all(100 <= value < 100 + peering.JITTER_RANGE for value in priorities)
    offsets = {peering.priority_offset(f"pod-{index}") for index in range(200)}
    assert len(offsets) > 150 and min(offsets) >= 0 and max(offsets) < peering.JITTER_RANGE


def test_no_offset_when_jitter_is_off_or_standalone(tmp_path: pathlib.Path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES_YAML)
    base = {"COMPOSE_PROFILES_PATH": str(profiles), "COMPOSE_PEERING_PRIORITY": "100"}
    off = settings.from_environment({**base, "COMPOSE_PEERING_PRIORITY_JITTER": "false"})
    alone = settings.from_environment({**base, "COMPOSE_STANDALONE": "true"})
    assert off.peering_priority_jitter is False
    assert peering.effective_priority(off, "compose-operator-7d9f8c6b5-x2k4q") == 100
    assert peering.effective_priority(alone, "compose-operator-7d9f8c6b5-x2k4q") == 100
    with pytest.raises(settings.SettingsError, match="COMPOSE_PEERING_PRIORITY_JITTER"):
        settings.from_environment({**base, "COMPOSE_PEERING_PRIORITY_JITTER": "sometimes"})
