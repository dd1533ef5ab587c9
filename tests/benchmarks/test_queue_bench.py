"""The queue benchmark runs end to end on small queues, so it never rots: both implementations
drain the same queue, agree on every answer, and report a cost per job for each size."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_benchmark_drains_each_queue_with_both_implementations(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "queue.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.queue_bench", "--jobs", "40,120", "--owners", "3",
         "--cap", "2", "--full-up-to", "120", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert (figures["cap"], figures["owners"]) == (2, 3)
    assert [row["jobs"] for row in figures["rows"]] == [40, 120]
    for row in figures["rows"]:
        assert row["standing_us"] > 0 and row["decide_us"] > 0
    assert "CPU microseconds per job (ratio to N=40)" in completed.stdout


def test_the_benchmark_refuses_answers_that_disagree() -> None:
    from benchmarks import queue_bench
    from compose_operator import queueing

    class Wrong(queueing.Standing):
        def place(self, uid: str, caps: queueing.Limits) -> queueing.Place:
            found = super().place(uid, caps)
            return queueing.Place(found.admitted, found.position, found.depth + 1)

    jobs = 10
    expected = queue_bench.drain(queue_bench._Full(), jobs, 2, 1)
    assert queue_bench.drain(queueing.Standing(), jobs, 2, 1) == expected
    assert queue_bench.drain(Wrong(), jobs, 2, 1) != expected
