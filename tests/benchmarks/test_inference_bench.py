"""The inference benchmark runs (tiny, CPU) so that it cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_inference_bench_runs_tiny_on_the_cpu() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "inference_bench.py"),
            "--tiny",
            "--runs",
            "1",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("inference benchmark: tiny random weights, 64x64, 2 steps")
    refusal = lines[-1]
    assert refusal.startswith("cheap refusal (30000x30000 PNG, fresh process): ")
    ratio = float(refusal.rsplit("ratio ", 1)[1].removesuffix("x"))
    assert 0 < ratio < 1  # refusing costs less than importing torch and diffusers first
    table = [line for line in lines[2:-1] if not line.startswith("stages of ")]
    stages = {
        line.removeprefix("stages of ").rsplit(": ", 1)[0]: line
        for line in lines
        if line.startswith("stages of ")
    }
    refined = stages["ours: + face refinement (default profile)"]
    assert "refine " in refined and "denoise " in refined
    assert "refine " not in stages["ours: + SDPA"]
    rows = {line[:42].strip(): line[42:].split() for line in table}
    assert list(rows) == [
        "diffusers SDXL+ControlNet (reference)",
        "ours: math attention, fp32 VAE",
        "ours: + SDPA",
        "ours: + channels-last",
        "ours: + fp16 VAE decode",
        "ours: + face refinement (default profile)",
        "ours: few-step (4 steps, no CFG)",
    ]
    assert rows["diffusers SDXL+ControlNet (reference)"][1] == "1.00x"
    for values in rows.values():
        assert float(values[0]) > 0 and values[1].endswith("x")


def test_inference_bench_pool_runs_tiny_on_the_cpu() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "inference_bench.py"), "--pool", "--tiny",
         "--jobs", "3", "--threads", "1"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert lines[0] == "pool benchmark: tiny random weights, 64x64, 2 steps, float32, CPU"
    figures = dict(line.split(": ", 1) for line in lines[1:])
    load, warm_up, job = (
        float(part.split()[-2]) for part in figures["first job"].split(" = ")[0].split(" + ")
    )
    first = float(figures["first job"].rsplit(" = ", 1)[1].removesuffix(" s"))
    assert first == pytest.approx(load + warm_up + job, abs=0.002)
    warm = float(figures["warm job p50 of 3"].removesuffix(" s"))
    assert 0 < warm < first
    # A warm job has no load stage; the face refinement of the default profile runs.
    listed = figures["stages of the last warm job"].removesuffix(" s")
    stages = dict(part.split() for part in listed.split(", "))
    assert "load" not in stages and {"refine", "generate", "upload"} <= set(stages)
    ratios = figures["ratio warm/first"]
    assert float(ratios.split("x;")[0]) == pytest.approx(warm / first, abs=0.002)
