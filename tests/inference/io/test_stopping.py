"""A run stopped from outside (a pool worker's job taken back or past its deadline): the ``stop``
callable is called between stages and between denoising steps; a stopped run uploads nothing.
A job that finds its pipeline loaded has no load stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from compose_api import contract
from compose_inference import errors, fetching, modelstore, runner, upload
from tests.inference.io.conftest import bucket_keys, job_document
from tests.support import s3

pytestmark = pytest.mark.slow


class StopAt:
    """Counts its calls; raises ``error`` at call number ``at`` (never when None)."""

    def __init__(self, at: int | None, error: errors.ComposeError) -> None:
        self.at = at
        self.error = error
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise self.error


def test_a_stopped_run_uploads_nothing_and_warm_runs_have_no_load_stage(
    s3_env: s3.S3Server, local_profile: dict[str, object], astronaut_png: bytes, tmp_path: Path
) -> None:
    inputs = s3_env.new_bucket("inputs")
    results = s3_env.new_bucket("results")
    for key in ("person.png", "shirt.png", "place.png"):
        s3_env.client().put_object(Bucket=inputs, Key=key, Body=astronaut_png)
    worker = runner.Worker(
        fetcher=fetching.Fetcher(fetching.FetchSettings()),
        store=modelstore.ModelStore(modelstore.StoreSettings(cache_dir=tmp_path)),
        uploader=upload.Uploader(),
    )

    def job(name: str) -> runner.Job:
        document = job_document(
            person=f"s3://{inputs}/person.png",
            clothing=[f"s3://{inputs}/shirt.png"],
            place=f"s3://{inputs}/place.png",
            bucket=results,
            profile=local_profile,
            name=name,
        )
        return runner.Job.from_document(document, default_bucket=None)

    first = job("first")
    worker.load(first.profile)
    assert worker.loaded(first.profile) and worker.loads == 1
    counting = StopAt(None, errors.Stopped("never"))
    watch = runner.Stopwatch()
    outcome = worker.run(first, watch=watch, stop=counting)
    assert "load" not in outcome.timings and watch.timings().model_load is None
    assert worker.loads == 1
    # Before fetch, validate, face, load, generate, the seed's pass, 2 denoising steps (the
    # profile pins 2 steps), encode and upload.
    assert counting.calls == 10
    assert bucket_keys(s3_env, results) == ["results/team-a/first/uid-1234/result.png"]

    for at in (1, 7, 8, 10):  # before the fetch, in each denoising step, before the upload
        stopping = StopAt(at, errors.Stopped(f"taken back at {at}"))
        with pytest.raises(errors.Stopped, match=f"taken back at {at}"):
            worker.run(job(f"stopped-{at}"), stop=stopping)
        assert stopping.calls == at
    late = StopAt(10, errors.DeadlineExceeded("spec.execution.activeDeadlineSeconds: past"))
    with pytest.raises(errors.DeadlineExceeded) as info:
        worker.run(job("late"), stop=late)
    assert info.value.exit_code == contract.ExitCode.DEADLINE_EXCEEDED
    assert info.value.exit_code.reason == "DeadlineExceeded"
    assert info.value.exit_code.retryable
    assert bucket_keys(s3_env, results) == ["results/team-a/first/uid-1234/result.png"]
