"""The incremental queue (:class:`queueing.Standing`) against the pure :func:`queueing.decide`:
after every change of random sequences, each job's place and the admissions are the same."""

from __future__ import annotations

import dataclasses
import datetime
import random

import pytest

from compose_operator import queueing

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
CAPS = [
    queueing.Limits(per_namespace=n, per_owner=o) for n in (0, 1, 2, 4) for o in (0, 1, 2) if n or o
]


def random_entry(rng: random.Random, index: int) -> queueing.Entry | None:
    state = rng.choice(["waiting", "waiting", "running", "none", "both"])
    if state == "none":
        return None
    created = None if rng.random() < 0.05 else T0 + datetime.timedelta(seconds=rng.randrange(6))
    return queueing.Entry(
        uid=f"uid-{index}",
        name=f"job-{rng.randrange(1000):03d}-{index}",
        priority=rng.choice([0, 0, 0, 5, -1]),
        created=created,
        running=state in ("running", "both"),
        waiting=state in ("waiting", "both"),
        owner=rng.choice(["", "alice", "bob", "carol"]),
    )


def check(standing: queueing.Standing, entries: dict[str, queueing.Entry]) -> None:
    assert standing.waiting == sum(1 for e in entries.values() if e.waiting and not e.running)
    for caps in CAPS:
        decision = queueing.decide(entries.values(), caps)
        assert set(standing.admitted(caps)) == decision.admitted, caps
        for uid, entry in entries.items():
            place = standing.place(uid, caps)
            expected = queueing.Place(
                admitted=uid in decision.admitted,
                position=decision.positions.get(uid),
                depth=decision.depth,
            )
            assert place == expected, (caps, entry)
    unknown = standing.place("uid-unknown", CAPS[0])
    assert (unknown.admitted, unknown.position) == (False, None)


@pytest.mark.parametrize("seed", range(12))
def test_every_place_is_the_one_decide_gives_after_every_change(seed: int) -> None:
    rng = random.Random(seed)
    standing = queueing.Standing()
    entries: dict[str, queueing.Entry] = {}
    size = rng.choice([3, 8, 20])
    for _ in range(60):
        index = rng.randrange(size)
        entry = random_entry(rng, index)
        standing.put(f"uid-{index}", entry)
        if entry is None:
            entries.pop(f"uid-{index}", None)
        else:
            entries[f"uid-{index}"] = entry
        check(standing, entries)
    assert sorted(standing.entries(), key=lambda e: e.uid) == sorted(
        entries.values(), key=lambda e: e.uid
    )


def test_admission_order_and_the_admitted_jobs_own_place() -> None:
    standing = queueing.Standing()
    for second, (name, owner) in enumerate([("a0", "alice"), ("a1", "alice"), ("b0", "bob")]):
        standing.put(
            name,
            queueing.Entry(
                name, name, 0, T0 + datetime.timedelta(seconds=second), False, True, owner
            ),
        )
    caps = queueing.Limits(per_namespace=2)
    assert standing.admitted(caps) == ["a0", "b0"]  # bob's turn comes before alice's second
    assert standing.place("b0", caps) == queueing.Place(True, None, 1)
    assert standing.place("a1", caps) == queueing.Place(False, 1, 1)
    assert standing.admitted(queueing.Limits()) == ["a0", "a1", "b0"]  # no caps: all of them
    standing.put("b-run", queueing.Entry("b-run", "b-run", 0, T0, True, True, "bob"))
    assert standing.admitted(queueing.Limits()) == ["a0", "a1", "b0"]  # not one that runs
    assert standing.place("a1", queueing.Limits()) == queueing.Place(True, None, 0)
    standing.put("b-run", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        standing.place("a1", caps).position = 2  # type: ignore[misc]
    standing.put("a0", None)
    standing.put("b0", None)
    assert standing.entries() == [standing.entries()[0]] and standing.admitted(caps) == ["a1"]


def _waiting(name: str, owner: str, second: int, *, running: bool = False) -> queueing.Entry:
    created = T0 + datetime.timedelta(seconds=second)
    return queueing.Entry(name, name, 0, created, running, not running, owner)


def test_a_blocked_owners_job_waits_behind_every_open_job_left_after_the_admissions() -> None:
    # alice is at her own limit; one namespace slot is free and goes to bob's first job, and
    # bob's other two still wait ahead of alice's (bob is not at his limit).
    entries = [
        _waiting("alice-run-0", "alice", 0, running=True),
        _waiting("alice-run-1", "alice", 0, running=True),
        _waiting("alice-w", "alice", 1),
        *(_waiting(f"bob-{i}", "bob", 2 + i) for i in range(3)),
    ]
    standing = queueing.Standing()
    for entry in entries:
        standing.put(entry.uid, entry)
    caps = queueing.Limits(per_namespace=3, per_owner=2)
    decision = queueing.decide(entries, caps)
    assert decision.admitted == {"bob-0"}
    assert decision.positions == {"bob-1": 1, "bob-2": 2, "alice-w": 3}
    assert [standing.place(e.uid, caps).position for e in entries[2:]] == [3, None, 1, 2]


def test_no_more_are_admitted_than_there_are_free_slots_even_hundreds() -> None:
    standing = queueing.Standing()
    for index in range(400):
        entry = _waiting(f"job-{index:03d}", "", index)
        standing.put(entry.uid, entry)
    caps = queueing.Limits(per_namespace=300)
    admitted = standing.admitted(caps)
    assert admitted == [f"job-{index:03d}" for index in range(300)]
    assert standing.place("job-300", caps) == queueing.Place(False, 1, 100)
    # An owner's whole queue admitted: the merge runs to the end of a list of hundreds.
    everyone = queueing.Limits(per_owner=500)
    assert standing.admitted(everyone) == [f"job-{index:03d}" for index in range(400)]
