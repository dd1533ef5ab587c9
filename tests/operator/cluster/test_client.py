"""The operator's typed client (compose_operator.kubeapi) on the real API server, logged in the
way kopf logs in: a ``kopf.ConnectionInfo`` with base64 certificate data, as kopf reads it from a
kubeconfig, converted to the project's client connection; credentials that stop working are
replaced by logging in again."""

from __future__ import annotations

import datetime
from typing import Any

import kopf
import pytest

from compose_api.kube import Conflict
from compose_operator import kubeapi
from tests.operator.cluster.conftest import kopf_admin_login
from tests.operator.conftest import cj_body
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, EVENTS, JOBS

pytestmark = pytest.mark.timeout(60)


def _job(name: str, namespace: str, owner: dict[str, Any]) -> dict[str, Any]:
    """A Job owned by ``owner``, suspended (no pod is made)."""
    meta = owner["metadata"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "ownerReferences": [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": cp.MISSING_IMAGE}]}}},
    }  # fmt: skip


async def test_the_typed_calls_with_kopf_credentials(
    control_plane: cp.ControlPlane, namespace: str, kube: ClusterClient
) -> None:
    logins = 0

    async def login() -> kopf.ConnectionInfo:
        nonlocal logins
        logins += 1
        return kopf_admin_login(control_plane)

    client = kubeapi.KubeClient(login)
    try:
        cj = await kube.create(COMPOSITION_JOBS, cj_body("typed", namespace))
        other = await kube.create(COMPOSITION_JOBS, cj_body("other", namespace))
        job = _job("typed-job", namespace, cj)

        created = await client.create_job(job)
        again = await client.create_job(job)  # 409 from the same owner: adopted
        assert again["metadata"]["uid"] == created["metadata"]["uid"]
        with pytest.raises(kubeapi.ForeignObjectError) as foreign:
            await client.create_job(_job("typed-job", namespace, other))
        assert isinstance(foreign.value, Conflict)
        assert await client.get_job(namespace, "missing") is None
        selector = "batch.kubernetes.io/job-name=typed-job"
        assert [j["metadata"]["name"] for j in await client.list_jobs(namespace, "")] == [
            "typed-job"
        ]
        assert await client.list_pods(namespace, selector) == []

        await client.patch_status(namespace, "typed", {"phase": "Pending"})
        read = await client.get_composition_job(namespace, "typed")
        assert read is not None and read["status"]["phase"] == "Pending"
        await client.post_event(
            read, type="Normal", reason="Checked", message="x" * 2000,
            now=datetime.datetime.now(datetime.UTC),
        )  # fmt: skip
        (event,) = await kube.list(EVENTS, field_selector="reason=Checked")
        assert event["involvedObject"]["uid"] == cj["metadata"]["uid"]
        assert len(event["message"]) == kubeapi.EVENT_MESSAGE_LIMIT
        labels = await client.node_labels("gpu-spot-0")
        assert labels[cp.INSTANCE_TYPE_LABEL] == "g5.xlarge"
        assert await client.node_labels("no-such-node") == {}

        # Retention's delete: only the job with that uid; a replaced or missing one is done.
        await client.delete_composition_job(namespace, "other", uid="another-uid")
        assert await kube.get_or_none(COMPOSITION_JOBS, "other") is not None
        await client.delete_composition_job(namespace, "other", other["metadata"]["uid"])
        await client.delete_composition_job(namespace, "other", other["metadata"]["uid"])
        await kube.wait_for(COMPOSITION_JOBS, "other", lambda obj: obj is None)

        await client.delete_job(namespace, "typed-job")
        await client.delete_job(namespace, "typed-job")  # missing: fine
        assert await kube.wait_for(JOBS, "typed-job", lambda obj: obj is None) is None
    finally:
        await client.close()
    assert logins == 1


async def test_a_401_logs_in_again_with_kopfs_new_credentials(
    control_plane: cp.ControlPlane, namespace: str
) -> None:
    good = kopf_admin_login(control_plane)
    handed: list[kopf.ConnectionInfo] = [
        kopf.ConnectionInfo(server=good.server, ca_data=good.ca_data, token="expired"),
        good,
    ]

    async def login() -> kopf.ConnectionInfo:
        return handed.pop(0)

    client = kubeapi.KubeClient(login)
    try:
        assert await client.get_composition_job(namespace, "none") is None
    finally:
        await client.close()
    assert handed == []


def test_kopf_connection_info_becomes_a_connection(control_plane: cp.ControlPlane) -> None:
    info = kopf_admin_login(control_plane)
    connection = kubeapi.connection_from(info)
    assert connection.server == control_plane.url
    assert connection.ca_data == control_plane.pki.ca_cert.read_text()  # base64 decoded
    assert connection.cert_data == control_plane.pki.admin_cert.read_text()
    assert connection.key_data == control_plane.pki.admin_key.read_text()
    assert connection.namespace == "default"
    pem = kopf.ConnectionInfo(
        server="https://api:6443", ca_data=connection.ca_data, ca_path=None, insecure=True,
        certificate_path=str(control_plane.pki.admin_cert),
        private_key_path=str(control_plane.pki.admin_key), token="t",
    )  # fmt: skip
    converted = kubeapi.connection_from(pem)
    assert converted.ca_data == connection.ca_data  # PEM kept as it is
    assert converted.cert_file == control_plane.pki.admin_cert
    assert (converted.insecure, converted.token) == (True, "t")
