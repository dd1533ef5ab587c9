"""The pool benchmark runs end to end with a few jobs, so it never rots: a warm pool of real
``compose worker`` processes, then a Job per job with the real inference process, then pairs of
the same request on a warm pool (result reuse), directly and through a real gateway, on the test
control plane; the figures come out in its JSON."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_benchmark_runs_every_mode_and_reports_their_figures(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.pool_bench", "--jobs", "3", "--workers", "1",
         "--modes", "pool,job,reuse,gateway-reuse", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert set(figures) == {"pool", "job", "reuse: first", "reuse: again", "gateway reuse: first",
                            "gateway reuse: again", "reused"}  # fmt: skip
    # Every repeated request was answered with the first one's result: nothing generated.
    assert figures.pop("reused") == {"reuse": 3, "gateway reuse": 3}
    assert figures["reuse: first"]["generate_p50_s"] > 0
    assert figures["reuse: again"]["generate_p50_s"] == 0
    assert "reuse: the same request again, create→Succeeded p50" in completed.stdout
    assert "gateway reuse: the same request again, request→answer p50" in completed.stdout
    for name, mode in figures.items():
        if "reuse" in name:
            assert mode["jobs"] == 3 and mode["failed"] == 0, mode
            continue
        assert mode["jobs"] == 3 and mode["failed"] == 0, mode
        assert 0 < mode["outside_run_p50_s"] <= mode["overhead_p50_s"] < mode["total_p50_s"]
        assert mode["requests_per_job"]["operator"] > 0
    pool, job = figures["pool"], figures["job"]
    # Warm workers: their own writes (accept, report), and no Job, pod, scheduler or kubelet.
    assert pool["requests_per_job"]["workers"] >= 2
    assert "scheduler" not in pool["requests_per_job"]
    assert job["requests_per_job"]["scheduler"] > 0 and "workers" not in job["requests_per_job"]
    # A cold process per job (interpreter, imports, model load) against a warm worker.
    assert job["outside_run_p50_s"] > pool["outside_run_p50_s"]
    assert "| pool |" in completed.stdout and "pool/job: overhead p50" in completed.stdout
