"""The gateway benchmark runs end to end with a handful of jobs, so it never rots (its figures are
not checked here: speed is reported by the benchmark, never asserted by a test)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys


def test_the_benchmark_runs(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "figures.json"
    root = pathlib.Path(__file__).parents[2]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gateway_bench",
            "--requests",
            "3",
            "--uploads",
            "2",
            "--upload-mib",
            "7",
            "--json",
            str(out),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "gateway CPU per HTTP request" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["requests"] == 3
    # A create per POST and a get per GET, and one count of the key's jobs (the retained quota).
    assert figures["api_requests_per_http_request"] == (2 * 3 + 1) / (2 * 3)
    assert set(figures["ratios"]) == {f"{key}_ratio" for key in figures["direct"]}
    # The upload phase ran: one upload alone, then two at once, all accepted.
    assert figures["upload"]["statuses"] == {"202": 3}
    assert "concurrent uploads" in done.stdout
