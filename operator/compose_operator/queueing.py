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

:func:`decide` is the definition, a sort of the whole queue; :class:`Standing` keeps one
namespace's queue in that order as its entries change and answers the same for one job at a time,
so that admitting a queue of n jobs costs O(n log n) in all, not O(n^2) (with a bounded number of
owners and priority levels; ``benchmarks/queue_bench.py`` measures it).
"""

from __future__ import annotations

import bisect
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


@dataclasses.dataclass(frozen=True)
class Place:
    """One job's place as :func:`decide` gives it: ``admitted`` (may start now), else its
    ``position`` (1 = next; None when it does not wait), and the namespace's ``depth``."""

    admitted: bool
    position: int | None
    depth: int


_Key = tuple[datetime.datetime, str, str]  # (creation time, name, uid): one owner's order


def _key(entry: Entry) -> _Key:
    return (entry.created or _EPOCH, entry.name, entry.uid)


class Standing:
    """One namespace's queue, kept in order as its entries change, so that one job's place
    costs O(log n + owners x priority levels) comparisons (and a change, a list insert or
    delete) instead of :func:`decide`'s sort of every waiting job. It gives what :func:`decide`
    gives over the same entries (the unit tests compare the two after every step of random
    sequences of changes).

    Why that is possible: :func:`fair_order` merges the owners' queues. Within one priority
    level a job's round is how many jobs of its owner come before it (holding a slot, waiting
    at a higher priority, or earlier at this one), and the order is by (round, creation time,
    name, owner). So how many of another owner's jobs come before a given job needs only that
    owner's counts and one comparison, never a walk through its queue."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._holding: collections.Counter[str] = collections.Counter()
        self._levels: dict[int, dict[str, list[_Key]]] = {}  # priority -> owner -> waiting
        self._waiting = 0

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    @property
    def waiting(self) -> int:
        """How many jobs want a slot and hold none."""
        return self._waiting

    def put(self, uid: str, entry: Entry | None) -> None:
        """The job's entry now (None: it neither holds nor wants a slot)."""
        old = self._entries.pop(uid, None)
        if old is not None:
            self._unindex(old)
        if entry is not None:
            self._entries[uid] = entry
            self._index(entry)

    def _index(self, entry: Entry) -> None:
        if entry.running:
            self._holding[entry.owner] += 1
        elif entry.waiting:
            owners = self._levels.setdefault(entry.priority, {})
            bisect.insort(owners.setdefault(entry.owner, []), _key(entry))
            self._waiting += 1

    def _unindex(self, entry: Entry) -> None:
        if entry.running:
            self._holding[entry.owner] -= 1
            if not self._holding[entry.owner]:
                del self._holding[entry.owner]
        elif entry.waiting:
            owners = self._levels[entry.priority]
            keys = owners[entry.owner]
            del keys[bisect.bisect_left(keys, _key(entry))]
            self._waiting -= 1
            if not keys:
                del owners[entry.owner]
                if not owners:
                    del self._levels[entry.priority]

    def admitted(self, caps: Limits) -> list[str]:
        """The waiting jobs the caps let start now, in admission order: the first free slots'
        worth of the fair order, skipping the jobs of owners at their own limit."""
        if not caps.any:
            return [uid for uid, e in self._entries.items() if e.waiting and not e.running]
        # Caps are never negative (settings, ge=0): `!=` for `> 0` cannot change the result.
        if caps.per_namespace > 0:  # pragma: no mutate: *_Gt_NotEq
            # Below 0 when more jobs hold slots than the cap allows (a cap lowered): admits none.
            free = caps.per_namespace - sum(self._holding.values())
        else:
            free = self._waiting
        chosen: list[str] = []
        ahead: collections.Counter[str] = collections.Counter()  # owners' jobs at higher levels
        for priority in sorted(self._levels, reverse=True):
            # Only a shortcut: with no slot left the loop below admits nothing at this level, so
            # `>`, `==` or `is` for `>=` (chosen never passes free) cannot change the result.
            if len(chosen) >= free:  # pragma: no mutate: *_GtE_Gt, *_GtE_Eq, *_GtE_Is
                break  # pragma: no mutate: ReplaceBreakWithContinue
            owners = self._levels[priority]
            heap: list[tuple[int, datetime.datetime, str, str, str, int]] = []
            for owner, keys in owners.items():
                self._push(heap, owner, keys, ahead[owner], 0, caps)
            heapq.heapify(heap)
            # chosen grows by one up to free, never past it: `!=` for `<` cannot change it.
            while heap and len(chosen) < free:  # pragma: no mutate: *_Lt_NotEq
                *_, owner, uid, index = heapq.heappop(heap)
                chosen.append(uid)
                self._push(heap, owner, owners[owner], ahead[owner], index + 1, caps)
            for owner, keys in owners.items():
                ahead[owner] += len(keys)
        return chosen

    def _push(
        self,
        heap: list[tuple[int, datetime.datetime, str, str, str, int]],
        owner: str,
        keys: list[_Key],
        ahead: int,
        index: int,
        caps: Limits,
    ) -> None:
        """The owner's next waiting job onto the merge, unless it has none or is at its cap
        (before the namespace's slots run out, every earlier job of the owner was admitted)."""
        # index is at most len(keys) (one past the last popped): `==` for `>=` is the same.
        if index >= len(keys):  # pragma: no mutate: *_GtE_Eq
            return
        done = self._holding[owner] + ahead + index  # its jobs holding a slot or admitted
        # Caps are never negative (settings, ge=0): `!=` for `> 0` cannot change the result.
        if caps.per_owner > 0 and done >= caps.per_owner:  # pragma: no mutate: *_Gt_NotEq
            return
        created, name, uid = keys[index]
        heapq.heappush(heap, (done, created, name, owner, uid, index))

    def place(self, uid: str, caps: Limits) -> Place:
        """What :func:`decide` says of this one job."""
        chosen = self.admitted(caps)
        depth = self._waiting - len(chosen) if caps.any else 0
        entry = self._entries.get(uid)
        if entry is None or entry.running or not entry.waiting:
            return Place(False, None, depth)
        if not caps.any or uid in chosen:
            return Place(True, None, depth)
        taken = collections.Counter(self._entries[u].owner for u in chosen)
        return Place(False, self._position(entry, taken, caps), depth)

    def _position(self, entry: Entry, taken: Mapping[str, int], caps: Limits) -> int:
        """1 + the waiting jobs not admitted ahead of it: those of owners that may still start
        more first, then those of owners at their own limit (as :func:`decide` lists them)."""

        def blocked(owner: str) -> bool:
            limit = caps.per_owner  # 0: no per-owner cap (caps are never negative)
            return bool(limit) and self._holding[owner] + taken[owner] >= limit

        # For each owner: its waiting jobs at higher levels, and in all.
        higher: collections.Counter[str] = collections.Counter()
        total: collections.Counter[str] = collections.Counter()
        for priority, owners in self._levels.items():
            for owner, keys in owners.items():
                total[owner] += len(keys)
                if priority > entry.priority:
                    higher[owner] += len(keys)
        level = self._levels[entry.priority]
        mine = level[entry.owner]
        own_index = bisect.bisect_left(mine, _key(entry))
        own_round = self._holding[entry.owner] + higher[entry.owner] + own_index
        point = (entry.created or _EPOCH, entry.name, entry.owner, entry.uid)
        ahead_open = ahead_blocked = open_total = 0
        for owner in total:
            keys = level.get(owner, [])
            # Its jobs at this level whose round is below ours come first; of the one whose
            # round equals ours (at most one), creation time, name and owner decide.
            first = own_round - self._holding[owner] - higher[owner]
            count = min(max(first, 0), len(keys))
            if 0 <= first < len(keys):
                created, name, uid = keys[first]
                count += (created, name, owner, uid) < point
            before = max(0, higher[owner] + count - taken[owner])
            if blocked(owner):
                ahead_blocked += before
            else:
                ahead_open += before
                open_total += total[owner] - taken[owner]
        if blocked(entry.owner):
            return open_total + ahead_blocked + 1
        return ahead_open + 1
