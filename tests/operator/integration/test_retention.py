"""The retention executor against the API emulator and the S3 server: a due job and its result
go (the result first), a job not yet due stays, a recreated job of the same name is safe.

The Kubernetes delete here is the one the operator's client makes for retention: DELETE with a
uid precondition, 404 and 409 taken as done.
"""

from __future__ import annotations

import datetime
from typing import Any

from compose_api import models
from compose_api.kube import KubeError
from compose_operator import retention
from tests.operator.conftest import cj_body
from tests.support import cluster_client, s3
from tests.support.resources import COMPOSITION_JOBS

NS = "default"
DONE = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


def _deleter(kube: cluster_client.ClusterClient, calls: list[str]) -> retention.DeleteJob:
    async def delete(namespace: str, name: str, uid: str) -> None:
        calls.append(name)
        path = cluster_client.object_path(COMPOSITION_JOBS, namespace, name)
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        try:
            await kube.request("DELETE", path, json=options)
        except KubeError as error:
            if error.status not in (404, 409):
                raise

    return delete


async def _finished(
    kube: cluster_client.ClusterClient, name: str, result_uri: str | None, **spec: Any
) -> models.CompositionJob:
    created = await kube.create(COMPOSITION_JOBS, cj_body(name, NS, **spec), namespace=NS)
    uid = created["metadata"]["uid"]
    status: dict[str, Any] = {"phase": "Succeeded", "completionTime": DONE.isoformat()}
    if result_uri is not None:
        status["result"] = {
            "s3Uri": result_uri.format(uid=uid), "sha256": "0" * 64, "width": 8, "height": 8,
            "seed": 1,
        }  # fmt: skip
    body = await kube.patch_status(COMPOSITION_JOBS, name, status, namespace=NS)
    return models.CompositionJob.model_validate(body)


async def test_a_due_job_goes_with_its_result_and_one_not_due_stays(
    kube: cluster_client.ClusterClient, s3_env: s3.S3Server
) -> None:
    bucket = s3_env.new_bucket("results")
    client = s3_env.client()
    due = await _finished(kube, "due", f"s3://{bucket}/out/{NS}/due/{{uid}}/result.png",
                          ttlSecondsAfterFinished=60)  # fmt: skip
    later = await _finished(kube, "later", f"s3://{bucket}/out/{NS}/later/{{uid}}/result.png",
                            ttlSecondsAfterFinished=3600)  # fmt: skip
    for job in (due, later):
        assert job.status.result is not None
        client.put_object(Bucket=bucket, Key=job.status.result.s3_uri.split("/", 3)[3], Body=b"x")
    calls: list[str] = []
    executor = retention.Retention(
        retention.RetentionSettings(delete_results=True),
        delete_job=_deleter(kube, calls),
        delete_object=retention.s3_object_deleter(
            region=s3.REGION, endpoint_url=s3_env.endpoint_url
        ),
    )
    now = DONE + datetime.timedelta(seconds=60)

    assert await executor.enforce(due, now=now) is None
    assert await executor.enforce(later, now=now) == 3540.0

    assert await kube.get_or_none(COMPOSITION_JOBS, "due", namespace=NS) is None
    assert await kube.get_or_none(COMPOSITION_JOBS, "later", namespace=NS) is not None
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [f"out/{NS}/later/{later.metadata.uid}/result.png"]
    assert calls == ["due"]


async def test_results_are_kept_by_default_and_a_recreated_job_is_not_deleted(
    kube: cluster_client.ClusterClient, s3_env: s3.S3Server
) -> None:
    bucket = s3_env.new_bucket("results")
    client = s3_env.client()
    old = await _finished(kube, "again", f"s3://{bucket}/out/{NS}/again/{{uid}}/r.png",
                          ttlSecondsAfterFinished=0)  # fmt: skip
    assert old.status.result is not None
    key = old.status.result.s3_uri.split("/", 3)[3]
    client.put_object(Bucket=bucket, Key=key, Body=b"x")
    # The job is deleted and a new one of the same name created before retention acts on the
    # old view of it: the uid precondition keeps the new one.
    await kube.delete(COMPOSITION_JOBS, "again", namespace=NS)
    await kube.create(COMPOSITION_JOBS, cj_body("again", NS), namespace=NS)
    calls: list[str] = []
    executor = retention.Retention(retention.RetentionSettings(), delete_job=_deleter(kube, calls))

    assert await executor.enforce(old, now=DONE) is None

    assert calls == ["again"]
    survivor = await kube.get(COMPOSITION_JOBS, "again", namespace=NS)
    assert survivor["metadata"]["uid"] != old.metadata.uid
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"x"
