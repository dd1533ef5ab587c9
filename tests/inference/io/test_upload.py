"""Result upload: key layout, content type, metadata, and UPLOAD_FAILED without retries for
permanent errors."""

from __future__ import annotations

import hashlib

import pytest

from compose_api import contract
from compose_inference import errors, retrying, upload
from tests.inference.io.conftest import SleepLog
from tests.support import s3


@pytest.mark.parametrize(
    ("prefix", "fmt", "key"),
    [
        ("results/ns/job/uid/", "png", "results/ns/job/uid/result.png"),
        ("ns/job/uid/", "jpeg", "ns/job/uid/result.jpg"),
        ("ns/job/uid", "webp", "ns/job/uid/result.webp"),
    ],
)
def test_result_key(prefix: str, fmt: str, key: str) -> None:
    assert upload.result_key(prefix, fmt) == key


def test_upload_stores_bytes_type_and_metadata(s3_env: s3.S3Server) -> None:
    bucket = s3_env.new_bucket("results")
    data = b"\x89PNG result"
    stored = upload.Uploader().upload(
        data,
        bucket=bucket,
        key="ns/job/uid/result.png",
        fmt="png",
        metadata={"job": "ns/job", "seed": "42", "profile": "smoke"},
    )
    digest = hashlib.sha256(data).hexdigest()
    assert stored.uri == f"s3://{bucket}/ns/job/uid/result.png"
    assert (stored.sha256, stored.bytes) == (digest, len(data))
    head = s3_env.client().head_object(Bucket=bucket, Key="ns/job/uid/result.png")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"job": "ns/job", "seed": "42", "profile": "smoke", "sha256": digest}


def test_missing_bucket_is_upload_failed_without_retry(s3_env: s3.S3Server) -> None:
    sleeps = SleepLog()
    uploader = upload.Uploader(backoff=retrying.Backoff(attempts=3), sleep=sleeps)
    with pytest.raises(errors.UploadFailed) as info:
        uploader.upload(b"x", bucket="no-such-results", key="k.png", fmt="png", metadata={})
    assert info.value.exit_code == contract.ExitCode.UPLOAD_FAILED
    assert str(info.value).startswith("s3://no-such-results/k.png: upload failed: NoSuchBucket")
    assert sleeps.delays == []


def test_unreachable_endpoint_is_retried_then_upload_failed() -> None:
    from compose_inference import storage

    sleeps = SleepLog()
    client = storage.make_client(endpoint="http://127.0.0.1:9", connect_timeout=1.0)
    uploader = upload.Uploader(
        s3_client=client, backoff=retrying.Backoff(attempts=2, base=0.1), sleep=sleeps
    )
    with pytest.raises(errors.UploadFailed, match="upload failed after 2 attempts"):
        uploader.upload(b"x", bucket="results", key="k.png", fmt="png", metadata={})
    assert sleeps.delays == [0.1]


def test_retry_helper_only_retries_transient_errors() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("slow")
        return "done"

    sleeps = SleepLog()
    result = retrying.call(
        flaky,
        transient=lambda error: isinstance(error, TimeoutError),
        backoff=retrying.Backoff(attempts=4, base=1.0, cap=1.5),
        sleep=sleeps,
    )
    assert (result, len(calls), sleeps.delays) == ("done", 3, [1.0, 1.5])

    def missing() -> str:
        raise KeyError("permanent")

    with pytest.raises(KeyError):
        retrying.call(missing, transient=lambda error: False, sleep=sleeps)
    assert sleeps.delays == [1.0, 1.5]  # no new delay: the permanent error was not retried
