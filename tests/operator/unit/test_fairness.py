"""Fair share across owners within a priority, the per-owner limit, and a namespace with more
jobs holding slots than its cap (lowered cap, or jobs resumed outside the queue)."""

from __future__ import annotations

import dataclasses
import datetime

import pytest

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
    # Asked only for admissions (a freed slot), it stops before ordering, as when exactly full:
    # the slots over the cap are no negative number of free ones.
    admissions = queueing.decide(entries, queueing.Limits(per_namespace=2), ordered=False)
    assert (admissions.admitted, admissions.positions, admissions.depth) == (frozenset(), {}, 2)


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


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        # Each owner's next job competes by its own creation time, not by that of the job
        # before it or of the first one.
        (
            [("a0", "alice", 0), ("a1", "alice", 10), ("a2", "alice", 11),
             ("b0", "bob", 1), ("b1", "bob", 2), ("b2", "bob", 12)],
            ["a0", "b0", "b1", "a1", "a2", "b2"],
        ),
        (
            [("a0", "alice", 0), ("a1", "alice", 10), ("a2", "alice", 13),
             ("b0", "bob", 1), ("b1", "bob", 2), ("b2", "bob", 12)],
            ["a0", "b0", "b1", "a1", "b2", "a2"],
        ),
        # The first jobs compete by creation time, not by name, nor by a later job's time.
        ([("a-late", "alice", 5), ("b-early", "bob", 1)], ["b-early", "a-late"]),
        ([("a0", "alice", 0), ("a1", "alice", 20), ("b0", "bob", 1)], ["a0", "b0", "a1"]),
    ],
)  # fmt: skip
def test_between_owners_with_equal_shares_the_older_next_job_goes_first(
    jobs: list[tuple[str, str, int]], expected: list[str]
) -> None:
    entries = [entry(name, owner, second=second) for name, owner, second in jobs]
    assert [e.name for e in queueing.fair_order(entries, {})] == expected


def test_each_job_picked_counts_once_against_its_owners_share() -> None:
    # alice holds one slot; bob's first pick brings him level with her, and his next job,
    # older than hers, goes before it.
    entries = [entry("a0", "alice", second=5), entry("b0", "bob", second=1),
               entry("b1", "bob", second=2)]  # fmt: skip
    ordered = [e.name for e in queueing.fair_order(entries, {"alice": 1})]
    assert ordered == ["b0", "b1", "a0"]


def test_an_owner_over_its_limit_is_admitted_nothing() -> None:
    # The per-owner limit was lowered to 2 while alice ran 3: she stays over it, not at it.
    entries = [entry(f"run-{i}", "alice", running=True) for i in range(3)]
    entries += [entry("a-wait", "alice", second=1), entry("b-wait", "bob", second=2)]
    decision = queueing.decide(entries, queueing.Limits(per_namespace=10, per_owner=2))
    assert decision.admitted == {"b-wait"}
    assert decision.positions == {"a-wait": 1}


def test_a_job_that_neither_runs_nor_waits_is_not_queued() -> None:
    # Suspended by its user: it holds no slot and wants none.
    paused = dataclasses.replace(entry("paused", "alice"), waiting=False)
    decision = queueing.decide(
        [paused, entry("x", "bob", running=True), entry("y", "bob", second=1)],
        queueing.Limits(per_namespace=1),
    )
    assert (decision.admitted, decision.positions, decision.depth) == (frozenset(), {"y": 1}, 1)
    free = queueing.decide([paused], queueing.Limits(per_namespace=1))
    assert (free.admitted, free.positions, free.depth) == (frozenset(), {}, 0)


def test_no_caps_is_the_default_and_means_none() -> None:
    none = queueing.Limits()
    assert (none.per_namespace, none.per_owner) == (0, 0)
    assert none.any is False
    assert queueing.Limits(per_namespace=1).any is True
    assert queueing.Limits(per_owner=1).any is True


def test_the_queues_values_cannot_change_under_their_readers() -> None:
    decision = queueing.decide([entry("x", "alice")], queueing.Limits(per_namespace=1))
    for value in (entry("x", "alice"), queueing.Limits(), decision):
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.__setattr__("uid", "other")


def test_a_cap_and_a_queue_past_the_small_integers_count_exactly() -> None:
    # 310 jobs of one owner under a cap of 300: past 256, where Python's int identity no longer
    # follows equality, the counts must still be compared by value.
    entries = [entry(f"j{i:03d}", "alice", second=i) for i in range(310)]
    decision = queueing.decide(entries, queueing.Limits(per_namespace=300))
    assert decision.admitted == {f"j{i:03d}" for i in range(300)}
    assert order(decision) == [f"j{i:03d}" for i in range(300, 310)]
