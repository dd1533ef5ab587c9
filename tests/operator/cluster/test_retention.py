"""The retention executor with the operator's own client on the real API server and the S3
server: a due job and its result go (the result first), a job not yet due stays, a recreated job
of the same name is safe (the delete carries the uid as its precondition; 404 and 409 count as
done)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest_asyncio

from compose_api import models
from compose_operator import kubeapi, retention
from tests.operator.cluster.conftest import kopf_admin_login
from tests.operator.conftest import cj_body
from tests.support import control_plane as cp
from tests.support import s3
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS

DONE = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


@pytest_asyncio.fixture
async def operator_client(control_plane: cp.ControlPlane) -> AsyncIterator[kubeapi.KubeClient]:
    async def login() -> kopf.ConnectionInfo:
        return kopf_admin_login(control_plane)

    client = kubeapi.KubeClient(login)
    yield client
    await client.close()


def _deleter(client: kubeapi.KubeClient, calls: list[str]) -> retention.DeleteJob:
    async def delete(namespace: str, name: str, uid: str) -> None:
        calls.append(name)
        await client.delete_composition_job(namespace, name, uid)

    return delete


async def _finished(
    kube: ClusterClient, namespace: str, name: str, result_uri: str | None, **spec: Any
) -> models.CompositionJob:
    created = await kube.create(COMPOSITION_JOBS, cj_body(name, namespace, **spec))
    uid = created["metadata"]["uid"]
    status: dict[str, Any] = {"phase": "Succeeded", "completionTime": DONE.isoformat()}
    if result_uri is not None:
        status["result"] = {
            "s3Uri": result_uri.format(uid=uid), "sha256": "0" * 64, "width": 8, "height": 8,
            "seed": 1,
        }  # fmt: skip
    body = await kube.patch_status(COMPOSITION_JOBS, name, status)
    return models.CompositionJob.model_validate(body)


async def test_a_due_job_goes_with_its_result_and_one_not_due_stays(
    kube: ClusterClient,
    namespace: str,
    operator_client: kubeapi.KubeClient,
    s3_env: s3.S3Server,
) -> None:
    bucket = s3_env.new_bucket("results")
    client = s3_env.client()
    due = await _finished(kube, namespace, "due", f"s3://{bucket}/out/{namespace}/due/{{uid}}/result.png",
                          ttlSecondsAfterFinished=60)  # fmt: skip
    later = await _finished(kube, namespace, "later",
                            f"s3://{bucket}/out/{namespace}/later/{{uid}}/result.png",
                            ttlSecondsAfterFinished=3600)  # fmt: skip
    for job in (due, later):
        assert job.status.result is not None
        client.put_object(Bucket=bucket, Key=job.status.result.s3_uri.split("/", 3)[3], Body=b"x")
    calls: list[str] = []
    executor = retention.Retention(
        retention.RetentionSettings(delete_results=True),
        delete_job=_deleter(operator_client, calls),
        delete_object=retention.s3_object_deleter(
            region=s3.REGION, endpoint_url=s3_env.endpoint_url
        ),
    )
    now = DONE + datetime.timedelta(seconds=60)

    assert await executor.enforce(due, now=now) is None
    assert await executor.enforce(later, now=now) == 3540.0

    assert await kube.wait_for(COMPOSITION_JOBS, "due", lambda obj: obj is None) is None
    assert await kube.get_or_none(COMPOSITION_JOBS, "later") is not None
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [f"out/{namespace}/later/{later.metadata.uid}/result.png"]
    assert calls == ["due"]


async def test_results_are_kept_by_default_and_a_recreated_job_is_not_deleted(
    kube: ClusterClient,
    namespace: str,
    operator_client: kubeapi.KubeClient,
    s3_env: s3.S3Server,
) -> None:
    bucket = s3_env.new_bucket("results")
    client = s3_env.client()
    old = await _finished(kube, namespace, "again", f"s3://{bucket}/out/{namespace}/again/{{uid}}/r.png",
                          ttlSecondsAfterFinished=0)  # fmt: skip
    assert old.status.result is not None
    key = old.status.result.s3_uri.split("/", 3)[3]
    client.put_object(Bucket=bucket, Key=key, Body=b"x")
    # The job is deleted and a new one of the same name created before retention acts on the
    # old view of it: the uid precondition keeps the new one.
    await kube.delete(COMPOSITION_JOBS, "again")
    await kube.wait_for(COMPOSITION_JOBS, "again", lambda obj: obj is None)
    await kube.create(COMPOSITION_JOBS, cj_body("again", namespace))
    calls: list[str] = []
    executor = retention.Retention(
        retention.RetentionSettings(), delete_job=_deleter(operator_client, calls)
    )

    assert await executor.enforce(old, now=DONE) is None

    assert calls == ["again"]
    survivor = await kube.get(COMPOSITION_JOBS, "again")
    assert survivor["metadata"]["uid"] != old.metadata.uid
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"x"
    # And one already gone is done too.
    await kube.delete(COMPOSITION_JOBS, "again")
    await executor.enforce(old, now=DONE)
    assert calls == ["again", "again"]
