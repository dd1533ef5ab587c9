"""The operator benchmark runs end to end with a handful of jobs, so it never rots: both operators
on a real test control plane each (about 20 s apiece to start one), their requests from the audit
log."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_benchmark_runs_both_operators_and_reports_their_figures(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.operator_bench", "--jobs", "4", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    naive, compose = json.loads(out.read_text())
    assert naive["operator"] == "naive kopf"
    assert compose["operator"] == "compose-operator"
    for result in (naive, compose):
        assert result["done"] == result["succeeded"] == 4, result
        assert len(result["create_to_job_ms"]) == 4
        assert result["summary"]["cpu_ms_per_job"] > 0
        assert (
            0 <= result["summary"]["system_cpu_ms_per_job"] <= result["summary"]["cpu_ms_per_job"]
        )
        assert result["summary"]["peak_rss_mib"] > 10
    # The baseline follows the same lifecycle: create the Job, kopf's own patches, and the final
    # status with the result after reading the pods -- and the benchmark's own requests (the
    # containers' ends, as the admin) are not counted against it.
    assert naive["requests_by_verb"]["create jobs"] == 4
    assert naive["requests_by_verb"]["list pods"] == 4
    assert naive["requests_by_verb"]["patch compositionjobs/status"] == 8  # kopf's, then ours
    assert compose["requests_by_verb"].get("create jobs") == 4
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
    assert "ratio to naive kopf" in completed.stdout


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
