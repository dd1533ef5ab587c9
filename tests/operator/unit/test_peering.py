"""A standby instance recognises itself from kopf's peering object (kopf's pausing rule)."""

from __future__ import annotations

import datetime

from compose_operator import peering

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
