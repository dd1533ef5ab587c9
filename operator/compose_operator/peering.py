"""Whether this operator instance is the standby one, read from kopf's peering object.

kopf pauses its watches and handlers when a peer with a higher (or the same) priority is alive,
but it does not tell the handlers' own background work. The safety-net sweep in
:mod:`compose_operator.handlers` asks :func:`standing_down` before each round, so a standby
instance never acts on what it last saw. Pure: the caller fetches the peering object.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any


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
