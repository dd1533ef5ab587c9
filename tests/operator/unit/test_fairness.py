"""Fair share across owners within a priority, the per-owner limit, and a namespace with more
jobs holding slots than its cap (lowered cap, or jobs resumed outside the queue)."""

from __future__ import annotations

import datetime

from compose_operator import queueing

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def entry(
    name: str, owner: str, *, second: int = 0, priority: int = 0, running: bool = False
) -> queueing.Entry:
    return queueing.Entry(
        uid=name,
        name=name,
        priority=priority,
        created=T0 + datetime.timedelta(seconds=second),
        running=running,
        waiting=not running,
        owner=owner,
    )


def order(decision: queueing.Decision) -> list[str]:
    return sorted(decision.positions, key=lambda uid: decision.positions[uid])


def test_one_owners_burst_does_not_take_every_slot() -> None:
    # alice submits four jobs first, bob one a second later: bob gets the second slot.
    entries = [entry(f"alice-{i}", "alice", second=i) for i in range(4)]
    entries.append(entry("bob-0", "bob", second=10))
    decision = queueing.decide(entries, queueing.Limits(per_namespace=2))
    assert decision.admitted == {"alice-0", "bob-0"}
    assert order(decision) == ["alice-1", "alice-2", "alice-3"]


def test_owners_take_turns_counting_the_slots_they_already_hold() -> None:
    entries = [
        entry("alice-run", "alice", running=True),
        *(entry(f"alice-{i}", "alice", second=i) for i in range(3)),
        *(entry(f"bob-{i}", "bob", second=5 + i) for i in range(3)),
        *(entry(f"carol-{i}", "carol", second=9 + i) for i in range(2)),
    ]
    decision = queueing.decide(entries, queueing.Limits(per_namespace=1))
    assert decision.admitted == frozenset()  # the one slot is alice's
    # alice already holds one: bob and carol go first, then everyone in turn (oldest head first).
    assert order(decision) == [
        "bob-0",
        "carol-0",
        "alice-0",
        "bob-1",
        "carol-1",
        "alice-1",
        "bob-2",
        "alice-2",
    ]


def test_priority_comes_before_fairness() -> None:
    entries = [
        entry("alice-urgent", "alice", priority=5, second=3),
        entry("alice-run", "alice", running=True),
        entry("bob-0", "bob", second=1),
    ]
    decision = queueing.decide(entries, queueing.Limits(per_namespace=2))
    assert decision.admitted == {"alice-urgent"}
    assert decision.positions == {"bob-0": 1}


def test_the_per_owner_limit_holds_an_owner_back_while_others_start() -> None:
    entries = [
        entry("alice-run", "alice", running=True),
        entry("alice-0", "alice", second=1),
        entry("alice-1", "alice", second=2),
        entry("bob-0", "bob", second=3),
    ]
    decision = queueing.decide(entries, queueing.Limits(per_namespace=10, per_owner=1))
    assert decision.admitted == {"bob-0"}
    assert order(decision) == ["alice-0", "alice-1"]
    assert decision.depth == 2


def test_the_per_owner_limit_works_without_a_namespace_cap() -> None:
    entries = [entry(f"alice-{i}", "alice", second=i) for i in range(3)]
    entries.append(entry("bob-0", "bob", second=9))
    decision = queueing.decide(entries, queueing.Limits(per_owner=2))
    assert decision.admitted == {"alice-0", "alice-1", "bob-0"}
    assert decision.positions == {"alice-2": 1}


def test_jobs_without_an_owner_share_one() -> None:
    entries = [entry("a", "", second=1), entry("b", "", second=2), entry("c", "carol", second=3)]
    decision = queueing.decide(entries, queueing.Limits(per_namespace=2))
    assert decision.admitted == {"a", "c"}


def test_more_running_than_the_cap_admits_nothing() -> None:
    # The cap was lowered from 4 to 2 while 3 jobs ran: no slot is free, none is admitted.
    entries = [entry(f"run-{i}", "alice", running=True) for i in range(3)]
    entries += [entry("wait-0", "bob", second=1), entry("wait-1", "bob", second=2)]
    decision = queueing.decide(entries, queueing.Limits(per_namespace=2))
    assert decision.admitted == frozenset()
    assert decision.positions == {"wait-0": 1, "wait-1": 2}
    assert decision.depth == 2


def test_the_order_is_linear_in_work_not_quadratic() -> None:
    # 2,000 waiting jobs from 50 owners: every one gets a distinct position, owners interleave.
    entries = [entry(f"j{i:04d}", f"owner-{i % 50}", second=i) for i in range(2000)]
    decision = queueing.decide(entries, queueing.Limits(per_namespace=0, per_owner=0))
    assert len(decision.admitted) == 2000  # no caps: everything starts
    capped = queueing.decide(entries, queueing.Limits(per_namespace=50))
    assert {e.split("j")[1] for e in capped.admitted} == {f"{i:04d}" for i in range(50)}
    assert sorted(capped.positions.values()) == list(range(1, 1951))


def test_admissions_alone_cost_no_ordering_when_the_namespace_is_full() -> None:
    entries = [entry("run", "alice", running=True), entry("wait", "bob", second=1)]
    full = queueing.decide(entries, queueing.Limits(per_namespace=1), ordered=False)
    assert (full.admitted, full.positions, full.depth) == (frozenset(), {}, 1)
    free = queueing.decide(entries, queueing.Limits(per_namespace=2), ordered=False)
    assert free.admitted == {"wait"}
