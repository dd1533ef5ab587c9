"""The operator benchmark runs end to end with a handful of jobs, so it never rots: both operators
on a real test control plane each (about 20 s apiece to start one), their requests from the audit
log."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_benchmark_runs_both_operators_and_reports_their_figures(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.operator_bench", "--jobs", "4"),
            *("--operators", "naive,compose,floor", "--json", str(out)),
            *("--keep-logs", str(tmp_path / "logs")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    naive, compose, floor = json.loads(out.read_text())
    assert naive["operator"] == "naive kopf"
    assert compose["operator"] == "compose-operator"
    assert floor["operator"] == "floor (Job + 1 patch)"
    for result in (naive, compose, floor):
        assert result["done"] == result["succeeded"] == 4, result
        assert len(result["create_to_job_ms"]) == 4
        assert (
            0 <= result["summary"]["system_cpu_ms_per_job"] <= result["summary"]["cpu_ms_per_job"]
        )
        assert result["summary"]["peak_rss_mib"] > 10
    # The kopf operators take several clock ticks (10 ms each) for four jobs; the floor's four
    # jobs may take less than one, which reads as 0.
    assert naive["summary"]["cpu_ms_per_job"] > 0
    assert compose["summary"]["cpu_ms_per_job"] > 0
    # The baseline follows the same lifecycle: create the Job, kopf's own patches, and the final
    # status with the result after reading the pods -- and the benchmark's own requests (the
    # containers' ends, as the admin) are not counted against it.
    assert naive["requests_by_verb"]["create jobs"] == 4
    assert naive["requests_by_verb"]["list pods"] == 4
    assert naive["requests_by_verb"]["patch compositionjobs/status"] == 8  # kopf's, then ours
    assert compose["requests_by_verb"].get("create jobs") == 4
    # The floor: the Job, and the phase once it has finished; nothing else.
    assert floor["requests_by_verb"] == {
        "create jobs": 4,
        "patch compositionjobs/status": 4,
        **{k: v for k, v in floor["requests_by_verb"].items() if k.startswith("watch ")},
    }
    # The targets per successful job: at most 4 object writes and 3 Events. A job that waits
    # longer than the coalescing window between two writes (a loaded machine: the scheduler or
    # the API server slow to place or start its pod) may have its progress written once per
    # window: those writes come at least the window after the job's previous one, and only they
    # may exceed the bound.
    late = compose["late_status_writes"]
    assert compose["writes"] <= 4 * 4 + late, compose["requests_by_verb"]
    assert compose["events"] <= 3 * 4, compose["requests_by_verb"]
    assert compose["position_writes"] == naive["position_writes"] == 0  # no cap, no queue
    assert "API requests per job" in completed.stdout
    assert "  of which system" in completed.stdout
    assert "compose-operator / naive kopf" in completed.stdout
    assert "floor (Job + 1 patch) / naive kopf" in completed.stdout
    # Each operator's log, kept after its run (compose-operator's holds kopf's start-up).
    kept = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert kept == ["1-naive.log", "2-compose.log", "3-floor.log"]
    assert "kopf" in (tmp_path / "logs" / "2-compose.log").read_text()


def test_only_a_waiting_job_rewritten_waiting_counts_as_a_moved_position() -> None:
    from benchmarks import operator_bench
    from tests.support.resources import RequestRecord

    def patch(name: str, at: float, phase: str | None) -> RequestRecord:
        body = {"status": {"phase": phase, "queuePosition": 2}} if phase else None
        return RequestRecord(
            method="PATCH",
            verb="patch",
            group="compose.nextunicorn.dev",
            version="v1alpha1",
            resource="compositionjobs",
            subresource="status",
            namespace="bench",
            name=name,
            path="",
            user_agent="",
            status=200,
            at=at,
            body=body,
        )

    records = [
        patch("waits", 1.0, "Queued"),
        patch("waits", 3.0, "Queued"),  # its position moved
        patch("starts", 1.5, "Starting"),
        patch("waits", 2.0, "Queued"),  # before the one above: the order is by arrival
        patch("waits", 4.0, "Running"),
        patch("starts", 2.5, "Running"),
        patch("waits", 5.0, "Queued"),  # suspended and resumed, say: after Running, not a move
        patch("unaudited", 1.0, None),
        patch("unaudited", 2.0, None),
    ]
    assert operator_bench._position_writes(records) == 2


def test_the_creates_wait_until_the_api_server_no_longer_holds_them() -> None:
    """kube-apiserver holds creates of a resource for 2 s after its CRD became Established; the
    benchmark starts its burst only after that (the condition's time is to the second)."""
    import datetime

    from benchmarks import operator_bench

    def crd(status: str, at: str) -> dict[str, object]:
        condition = {"type": "Established", "status": status, "lastTransitionTime": at}
        names = {"type": "NamesAccepted", "status": "True", "lastTransitionTime": at}
        return {"status": {"conditions": [names, condition]}}

    now = datetime.datetime(2026, 1, 1, 0, 0, 10, 500000, tzinfo=datetime.UTC)
    assert operator_bench._create_hold_left(crd("True", "2026-01-01T00:00:10Z"), now) == 2.5
    assert operator_bench._create_hold_left(crd("True", "2026-01-01T00:00:08Z"), now) == 0.5
    assert operator_bench._create_hold_left(crd("True", "2026-01-01T00:00:07Z"), now) == 0.0
    assert operator_bench._create_hold_left(crd("False", "2026-01-01T00:00:10Z"), now) is None
    assert operator_bench._create_hold_left({"status": {}}, now) is None


def test_cpu_between_two_equal_tick_counts_is_zero_not_a_rounding_error() -> None:
    from benchmarks import operator_bench

    # The same count of ticks, summed in another order, differs by a rounding error below 0.
    assert 0.3 - (0.1 + 0.2) < 0
    assert operator_bench._cpu_ms(0.1 + 0.2, 0.3) == 0.0
    assert operator_bench._cpu_ms(1.25, 1.27) == 20.0


def _result(operator: str, cpu_ms: float) -> Any:
    from benchmarks import operator_bench

    return operator_bench.Result(
        operator=operator, jobs=10, done=10, succeeded=10, requests=50, writes=40, events=30,
        requests_by_verb={"create jobs": 10}, max_status_writes=3, max_events=3,
        late_status_writes=0, position_writes=0, cpu_ms=cpu_ms, system_cpu_ms=1.0,
        peak_rss_mib=90.0, create_to_job_ms=[100.0], create_to_done_ms=[900.0], wall_s=20.0,
        api_server_cpu_s=10.0,
    )  # fmt: skip


def test_interleaved_runs_are_compared_pair_by_pair() -> None:
    from benchmarks import operator_bench

    runs = [
        _result("naive kopf", 200.0),
        _result("compose-operator", 100.0),
        _result("naive kopf", 400.0),
        _result("compose-operator", 300.0),
        _result("floor", 40.0),
    ]
    assert operator_bench._baselines(runs) == [0, 0, 2, 2]
    text = operator_bench.report(runs, 10)
    header = next(line for line in text.splitlines() if line.startswith("metric"))
    assert "compose-operator #2 / naive kopf #2" in header
    assert "floor / naive kopf #2" in header
    cpu = next(line for line in text.splitlines() if line.startswith("CPU ms per job"))
    # Each to the baseline run before it; the second baseline to the first (the spread).
    assert cpu.split()[-4:] == ["0.50x", "2.00x", "0.75x", "0.10x"]
    assert "compose-operator #1 requests by verb and resource (per job):" in text
