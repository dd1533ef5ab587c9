"""Pure admission for the operator-level cap on running jobs per namespace.

Used by :mod:`compose_operator.reconciler` when ``COMPOSE_MAX_RUNNING_PER_NAMESPACE`` is set and
a CompositionJob has no ``execution.queueName`` (with a queue name, Kueue admits instead: the Job
is created suspended and Kueue unsuspends it). Waiting jobs are ordered by ``execution.priority``
(higher first), then creation time, then name, so the order is total and stable.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One CompositionJob of a namespace as the queue sees it."""

    uid: str
    name: str
    priority: int
    created: datetime.datetime | None
    running: bool  # holds a slot: a Job exists and the CR is not finished
    waiting: bool  # wants a slot: accepted, not suspended, not finished, no Job yet


@dataclasses.dataclass(frozen=True)
class Decision:
    """``admitted`` may start now; ``positions`` (1 = next) for the rest of the waiting jobs."""

    admitted: frozenset[str]
    positions: Mapping[str, int]
    depth: int


def order_key(entry: Entry) -> tuple[int, datetime.datetime, str]:
    return (-entry.priority, entry.created or _EPOCH, entry.name)


def decide(entries: Iterable[Entry], cap: int) -> Decision:
    """Admit waiting jobs into free slots (``cap`` 0: no cap, every waiting job is admitted)."""
    items = list(entries)
    waiting = sorted((e for e in items if e.waiting and not e.running), key=order_key)
    if cap <= 0:
        return Decision(frozenset(e.uid for e in waiting), {}, 0)
    free = max(0, cap - sum(1 for e in items if e.running))
    admitted = waiting[:free]
    rest = waiting[free:]
    positions = {e.uid: index for index, e in enumerate(rest, start=1)}
    return Decision(frozenset(e.uid for e in admitted), positions, len(rest))
