"""A long-lived worker: models load once per profile and then serve several jobs; a failed
upload leaves nothing behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from compose_api import contract
from compose_inference import errors, fetching, modelstore, runner, upload
from tests.inference.io.conftest import bucket_keys, job_document
from tests.support import s3

pytestmark = pytest.mark.slow


def test_worker_loads_once_and_runs_many(
    s3_env: s3.S3Server,
    local_profile: dict[str, object],
    astronaut_png: bytes,
    tmp_path: Path,
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

    def job(name: str, bucket: str, seed: int) -> runner.Job:
        document = job_document(
            person=f"s3://{inputs}/person.png",
            clothing=[f"s3://{inputs}/shirt.png"],
            place=f"s3://{inputs}/place.png",
            bucket=bucket,
            profile=local_profile,
            seed=seed,
            fmt="jpeg",
            name=name,
        )
        return runner.Job.from_document(document, default_bucket=None)

    first = worker.run(job("one", results, seed=3))
    assert (first.width, first.height, first.format, first.seed) == (64, 64, "jpeg", 3)
    key = "results/team-a/one/uid-1234/result.jpg"
    stored = s3_env.client().get_object(Bucket=results, Key=key)
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == first.sha256

    # The second job reuses the loaded models; its upload fails and leaves nothing behind.
    with pytest.raises(errors.UploadFailed) as info:
        worker.run(job("two", "no-such-results-bucket", seed=4))
    assert info.value.exit_code == contract.ExitCode.UPLOAD_FAILED
    assert worker.loads == 1
    assert bucket_keys(s3_env, results) == [key]
