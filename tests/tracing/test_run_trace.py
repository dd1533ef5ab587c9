"""The inference process's spans on their own: the ``compose`` command in local mode, with a
profile that refines the face, exports a ``run`` span whose children are the stages, with
``refine`` inside ``generate``; with tracing settings it cannot follow, it still runs, untraced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import otel_collector

pytestmark = pytest.mark.slow


def _command(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from compose_inference import tiny

    tiny.build_tiny_models(tmp_path / "tiny")
    profile = tiny.smoke_profile(tmp_path / "tiny").model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    profile["name"] = "refining"
    profile["options"].update(refine_face=True, refine_size=64, refine_strength=0.5)
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump([profile]))
    command = [sys.executable, "-m", "compose_inference"]
    samples = tmp_path / "samples"
    subprocess.run([*command, "samples", "--dir", str(samples)], env=env, check=True, timeout=60)
    return subprocess.run(
        [
            *command,
            "--person", str(samples / "person.png"),
            "--clothing", f"{samples / 'shirt.png'}#upper",
            "--place", str(samples / "place.png"),
            "--out", str(tmp_path / "result.png"),
            "--profile-file", str(profiles),
            "--seed", "3",
        ],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "COMPOSE_MODEL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **extra}


def test_a_run_and_its_stages_with_the_refinement_inside_generate(
    tmp_path: Path, collector: otel_collector.Collector
) -> None:
    before = {s.trace_id for s in collector.spans()}
    done = _command(tmp_path, _env(tmp_path, **collector.env()))
    assert done.returncode == 0, done.stderr[-4000:]
    # The process has exited: its spans were flushed on the way out.
    spans = [s for s in collector.spans() if s.trace_id not in before]
    (run,) = [s for s in spans if s.name == "run"]
    assert run.service == "compose-inference" and run.kind == otel_collector.SERVER_KIND
    assert run.parent_id == "" and run.attributes["compose.profile"] == "refining"
    assert {s.trace_id for s in spans} == {run.trace_id}
    stages = {s.name: s for s in spans if s.parent_id == run.span_id}
    assert {"check", "fetch", "validate", "face", "load", "generate", "safety", "encode",
            "upload"} <= set(stages)  # fmt: skip
    (refine,) = [s for s in spans if s.name == "refine"]
    assert refine.parent_id == stages["generate"].span_id
    assert not any(s.error for s in spans)


def test_a_setting_the_exporter_cannot_follow_leaves_the_run_untraced(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
    )
    done = _command(tmp_path, env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "tracing off: OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc'" in done.stderr
