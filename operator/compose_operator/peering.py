"""This instance's peering priority, and whether it is the standby one (from kopf's peering
object).

kopf pauses every peer that shares the highest priority, so replicas of one Deployment must not
tie: :func:`effective_priority` (called by ``__main__`` at start-up) adds a stable offset derived
from the pod name to ``COMPOSE_PEERING_PRIORITY`` unless ``COMPOSE_PEERING_PRIORITY_JITTER`` is
false or the operator runs standalone.

kopf pauses its watches and handlers when a peer with a higher (or the same) priority is alive,
but it does not tell the handlers' own background work. The safety-net sweep in
:mod:`compose_operator.handlers` asks :func:`standing_down` before each round, so a standby
instance never acts on what it last saw. Pure: the caller fetches the peering object.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from typing import Any

from compose_operator.settings import OperatorSettings

JITTER_RANGE = 1000  # offsets 0..999


def priority_offset(pod_name: str) -> int:
    """A stable offset in ``0..JITTER_RANGE-1`` for one pod: the same across container restarts,
    different (but for a 1-in-1000 chance) for each pod of a Deployment."""
    digest = hashlib.sha256(pod_name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % JITTER_RANGE


def effective_priority(settings: OperatorSettings, pod_name: str) -> int:
    """``COMPOSE_PEERING_PRIORITY`` plus this pod's offset (none when standalone or when
    ``COMPOSE_PEERING_PRIORITY_JITTER`` is false)."""
    if settings.standalone or not settings.peering_priority_jitter:
        return settings.peering_priority
    return settings.peering_priority + priority_offset(pod_name)


def _parse(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def standing_down(
    peers: Mapping[str, Any], *, identity: str, priority: int, now: datetime.datetime
) -> bool:
    """True when another live peer has a priority >= ours (kopf's own rule for pausing).

    ``peers`` is the peering object's ``status``: identity -> {priority, lifetime, lastseen}.
    """
    for peer_id, info in peers.items():
        if peer_id == identity or not isinstance(info, Mapping):
            continue
        seen = _parse(info.get("lastseen"))
        if seen is None:
            continue
        lifetime = datetime.timedelta(seconds=int(info.get("lifetime", 60) or 0))
        if seen + lifetime <= now:
            continue  # dead: kopf cleans it up
        if int(info.get("priority", 0) or 0) >= priority:
            return True
    return False
