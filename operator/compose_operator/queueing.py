"""Pure admission under the operator's caps: running jobs per namespace and per owner.

Used by :mod:`compose_operator.reconciler` when ``COMPOSE_MAX_RUNNING_PER_NAMESPACE`` or
``COMPOSE_MAX_RUNNING_PER_OWNER`` is set and a CompositionJob has no ``execution.queueName``
(with a queue name, Kueue admits instead: the Job is created suspended and Kueue unsuspends it).

The order is total and stable:

1. ``execution.priority``, higher first;
2. within one priority, fair share across owners (the gateway's owner label; jobs without one
   share the owner ``""``): the next slot goes to the owner with the fewest jobs holding a slot
   (running, and those already picked ahead in this order), so owners take turns and one owner's
   burst cannot hold every slot;
3. within one owner, creation time, then name.

An owner at ``COMPOSE_MAX_RUNNING_PER_OWNER`` is admitted nothing more until one of its jobs
finishes; its waiting jobs keep their places at the end of the queue.

What holds a slot (see :class:`Entry`) is what a cluster admin reads: a child Job that exists,
is not suspended and is not finished as the Job controller sees it (neither Complete nor Failed),
plus a job admitted whose Job is being created. So a composition whose pod succeeded keeps its
slot until the Job controller marks the Job Complete, and the cap is never exceeded, even by one.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import heapq
from collections.abc import Iterable, Mapping

# The creation time of a job without one: it sorts first. Any instant long before Kubernetes
# existed sorts the same against real creation times, so another date cannot change the order.
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)  # pragma: no mutate: NumberReplacer


@dataclasses.dataclass(frozen=True)
class Entry:
    """One CompositionJob of a namespace as the queue sees it."""

    uid: str
    name: str
    priority: int
    created: datetime.datetime | None
    running: bool  # holds a slot: an unfinished, unsuspended Job, or admitted and being created
    waiting: bool  # wants a slot: accepted, not suspended, not finished, no Job running
    owner: str = ""  # the gateway's owner label; "" for jobs created without one


@dataclasses.dataclass(frozen=True)
class Limits:
    """The caps: 0 means none."""

    per_namespace: int = 0
    per_owner: int = 0

    @property
    def any(self) -> bool:
        # The settings refuse negative caps (ge=0), so `!=` for `>` cannot change the result.
        return self.per_namespace > 0 or self.per_owner > 0  # pragma: no mutate: *_Gt_NotEq


@dataclasses.dataclass(frozen=True)
class Decision:
    """``admitted`` may start now; ``positions`` (1 = next) for the rest of the waiting jobs."""

    admitted: frozenset[str]
    positions: Mapping[str, int]
    depth: int


def order_key(entry: Entry) -> tuple[int, datetime.datetime, str]:
    # fair_order sorts with this key only the jobs of one owner within one priority level, so
    # the priority is the same for all of them: a change to its sign cannot change the order.
    return (-entry.priority, entry.created or _EPOCH, entry.name)  # pragma: no mutate: *USub*


def fair_order(waiting: Iterable[Entry], holding: Mapping[str, int]) -> list[Entry]:
    """Waiting jobs in admission order: priority, then fair share across owners, then age.

    ``holding`` counts each owner's jobs that already hold a slot. O(n log n)."""
    by_level: dict[int, dict[str, list[Entry]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for entry in waiting:
        by_level[entry.priority][entry.owner].append(entry)
    counts = collections.Counter(holding)
    order: list[Entry] = []
    for priority in sorted(by_level, reverse=True):
        queues = by_level[priority]
        heap: list[tuple[int, datetime.datetime, str, str, int]] = []
        for owner, items in queues.items():
            items.sort(key=order_key)
            head = items[0]
            heap.append((counts[owner], head.created or _EPOCH, head.name, owner, 0))
        heapq.heapify(heap)
        while heap:
            _, _, _, owner, index = heapq.heappop(heap)
            items = queues[owner]
            order.append(items[index])
            counts[owner] += 1
            # index + 1 never exceeds len(items), so `!=` for `<` cannot change the result.
            if index + 1 < len(items):  # pragma: no mutate: *_Lt_NotEq
                following = items[index + 1]
                heapq.heappush(
                    heap,
                    (counts[owner], following.created or _EPOCH, following.name, owner, index + 1),
                )
    return order


def decide(entries: Iterable[Entry], caps: Limits, *, ordered: bool = True) -> Decision:
    """Admit waiting jobs into free slots (no caps: every waiting job is admitted).

    ``ordered=False``: only the admissions are wanted (a freed slot), so a full namespace
    costs no ordering at all."""
    items = list(entries)
    waiting = [e for e in items if e.waiting and not e.running]
    if not caps.any:
        return Decision(frozenset(e.uid for e in waiting), {}, 0)
    holding = collections.Counter(e.owner for e in items if e.running)
    running = sum(holding.values())
    # Caps are never negative (settings, ge=0): `!=` for `> 0` cannot change the result.
    capped = caps.per_namespace > 0  # pragma: no mutate: *_Gt_NotEq
    # max(0, ...): more jobs than the cap can hold slots when the cap was lowered, or when
    # jobs resumed outside the queue; that must admit nothing, not a negative slice.
    free = max(0, caps.per_namespace - running) if capped else len(waiting)
    # free is never negative (max above), so `<=` for `==` cannot change the result.
    if not ordered and (free == 0 or not waiting):  # pragma: no mutate: *_Eq_LtE
        return Decision(frozenset(), {}, len(waiting))
    order = fair_order(waiting, holding)
    admitted: list[Entry] = []
    rest: list[Entry] = []
    blocked: list[Entry] = []  # their owner is at its own limit
    taken = collections.Counter(holding)
    # Caps are never negative (settings, ge=0): `!=` for `> 0` cannot change the result.
    owner_capped = caps.per_owner > 0  # pragma: no mutate: *_Gt_NotEq
    for entry in order:
        if owner_capped and taken[entry.owner] >= caps.per_owner:
            blocked.append(entry)
        # admitted grows by one up to free, never past it: `!=` for `<` cannot change the result.
        elif len(admitted) < free:  # pragma: no mutate: *_Lt_NotEq
            admitted.append(entry)
            taken[entry.owner] += 1
        else:
            rest.append(entry)
    queued = rest + blocked
    positions = {e.uid: index for index, e in enumerate(queued, start=1)}
    return Decision(frozenset(e.uid for e in admitted), positions, len(queued))
