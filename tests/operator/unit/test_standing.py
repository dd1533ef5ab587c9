"""The incremental queue (:class:`queueing.Standing`) against the pure :func:`queueing.decide`:
after every change of random sequences, each job's place and the admissions are the same."""

from __future__ import annotations

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
    standing.put("a0", None)
    standing.put("b0", None)
    assert standing.entries() == [standing.entries()[0]] and standing.admitted(caps) == ["a1"]
