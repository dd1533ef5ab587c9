"""Admission under a namespace cap: the cost per job of draining a queue of N jobs.

    python -m benchmarks.queue_bench                       # N = 300, 1,000, 3,000, 10,000
    python -m benchmarks.queue_bench --jobs 1000,5000 --cap 4 --owners 3 --json out.json

A pure simulation of what the operator's admission does, with no API server: N jobs arrive in a
namespace whose cap is ``--cap`` (each arrival asks for its place, as the arrival's reconcile
does), then the queue drains (each freed slot asks which jobs are admitted, and the admitted
job asks for its place before it starts). Two implementations over the same sequence:

- ``decide``: a full :func:`compose_operator.queueing.decide` over the namespace's entries for
  every question (what the operator did before :class:`~compose_operator.queueing.Standing`);
- ``standing``: the incremental :class:`~compose_operator.queueing.Standing`.

It checks that both give the same answers, and prints microseconds per job for each N, with the
ratio of each N's cost per job to the smallest N's: linear admission keeps that ratio near 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

from compose_operator import queueing

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _entry(index: int, owners: int, *, running: bool) -> queueing.Entry:
    return queueing.Entry(
        uid=f"uid-{index:06d}",
        name=f"job-{index:06d}",
        priority=0,
        created=T0 + datetime.timedelta(milliseconds=index),
        running=running,
        waiting=not running,
        owner=f"owner-{index % owners}" if owners > 1 else "",
    )


class _Full:
    """Every question answered by a full decide over the entries."""

    def __init__(self) -> None:
        self.entries: dict[str, queueing.Entry] = {}

    def put(self, uid: str, entry: queueing.Entry | None) -> None:
        if entry is None:
            self.entries.pop(uid, None)
        else:
            self.entries[uid] = entry

    def place(self, uid: str, caps: queueing.Limits) -> queueing.Place:
        decision = queueing.decide(self.entries.values(), caps)
        position = decision.positions.get(uid)
        return queueing.Place(uid in decision.admitted, position, decision.depth)

    def admitted(self, caps: queueing.Limits) -> list[str]:
        decision = queueing.decide(self.entries.values(), caps, ordered=False)
        return sorted(decision.admitted)


def drain(queue: _Full | queueing.Standing, jobs: int, cap: int, owners: int) -> list[object]:
    """Arrivals, then the drain; returns every answer (to compare the implementations)."""
    caps = queueing.Limits(per_namespace=cap)
    answers: list[object] = []
    for index in range(jobs):
        entry = _entry(index, owners, running=False)
        queue.put(entry.uid, entry)
        place = queue.place(entry.uid, caps)
        answers.append(place)
        if place.admitted:
            queue.put(entry.uid, _entry(index, owners, running=True))
    running = [e.uid for e in _entries(queue) if e.running]
    while running:
        queue.put(running.pop(0), None)  # a job finished: its slot is free
        for uid in sorted(queue.admitted(caps)):
            answers.append((uid, queue.place(uid, caps)))
            queue.put(uid, _entry(int(uid.split("-")[1]), owners, running=True))
            running.append(uid)
    return answers


def _entries(queue: _Full | queueing.Standing) -> list[queueing.Entry]:
    return list(queue.entries.values()) if isinstance(queue, _Full) else queue.entries()


def _timed(
    queue: _Full | queueing.Standing, jobs: int, cap: int, owners: int
) -> tuple[float, list[object]]:
    start = time.process_time()
    answers = drain(queue, jobs, cap, owners)
    return time.process_time() - start, answers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="300,1000,3000,10000")
    parser.add_argument("--cap", type=int, default=4)
    parser.add_argument("--owners", type=int, default=1)
    parser.add_argument("--full-up-to", type=int, default=3000, help="largest N for decide")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.jobs.split(",")]
    rows = []
    for jobs in sizes:
        row: dict[str, float | int | None] = {"jobs": jobs, "standing_us": None, "decide_us": None}
        spent, answers = _timed(queueing.Standing(), jobs, args.cap, args.owners)
        row["standing_us"] = spent / jobs * 1e6
        if jobs <= args.full_up_to:
            spent_full, expected = _timed(_Full(), jobs, args.cap, args.owners)
            row["decide_us"] = spent_full / jobs * 1e6
            if answers != expected:
                raise SystemExit(f"N={jobs}: the standing queue and decide disagree")
        rows.append(row)
    base = rows[0]
    heading = f"cap {args.cap}, {args.owners} owner(s); CPU microseconds per job"
    print(f"{heading} (ratio to N={sizes[0]})")
    print(f"{'N':>8} {'standing':>18} {'decide':>18}")
    for row in rows:
        cells = []
        for key in ("standing_us", "decide_us"):
            value, first = row[key], base[key]
            if value is None or first is None:
                cells.append(f"{'-':>18}")
            else:
                cells.append(f"{value:>9.1f} ({value / first:5.2f}x)")
        print(f"{row['jobs']:>8} {cells[0]:>18} {cells[1]:>18}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"cap": args.cap, "owners": args.owners, "rows": rows}, out, indent=2)


if __name__ == "__main__":
    main()
