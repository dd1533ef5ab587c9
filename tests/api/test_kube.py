"""The project's one Kubernetes client (compose_api.kube) against the real API server: every
way to connect (kubeconfig with inline or file credentials, a service-account token, a login
function), the error class of each status, paging, preconditions and watches. (A watch's 410
Gone needs an etcd compaction the test cluster does not make; the emulator's tests map it.)"""

from __future__ import annotations

import asyncio
import base64
import pathlib
import socket
from typing import Any

import pytest
import yaml

from compose_api import kube, models
from tests.support import control_plane as cp

pytestmark = pytest.mark.timeout(120)

CJS = f"{models.GROUP}/{models.VERSION}"


def _cj(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": CJS,
        "kind": models.KIND,
        "metadata": {"name": name},
        "spec": {
            "inputs": {
                "person": {"uri": "s3://inputs-bucket/person.jpg"},
                "clothing": [{"uri": "s3://inputs-bucket/shirt.jpg", "category": "upper"}],
                "place": {"uri": "s3://inputs-bucket/beach.png"},
            },
            **spec,
        },
    }


def _cjs(namespace: str, name: str | None = None) -> str:
    return kube.path(CJS, models.PLURAL, namespace=namespace, name=name)


def _configmaps(namespace: str, name: str | None = None) -> str:
    return kube.path("v1", "configmaps", namespace=namespace, name=name)


MINE = "made-by=compose-api-tests"  # not the kube-root-ca.crt the cluster puts in each namespace


def _configmap(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"made-by": "compose-api-tests"}}}


async def _names(client: kube.Client, namespace: str) -> list[str]:
    items, _ = await client.list(_configmaps(namespace), label_selector=MINE)
    return sorted(item["metadata"]["name"] for item in items)


async def test_a_kubeconfig_with_inline_certificates_connects_as_its_user(
    control_plane: cp.ControlPlane, namespace: str
) -> None:
    connection = kube.Connection.from_kubeconfig(control_plane.kubeconfig)
    assert connection.server == control_plane.url
    assert connection.cert_data is not None and "BEGIN CERTIFICATE" in connection.cert_data
    assert connection.key_data is not None and "PRIVATE KEY" in connection.key_data
    assert connection.cert_file is None  # nothing written to disk
    assert connection.namespace == "default"
    async with kube.Client(connection) as client:
        await client.create(_configmaps(namespace), _configmap("inline"))
        assert await _names(client, namespace) == ["inline"]


async def test_a_kubeconfig_with_relative_file_references(
    control_plane: cp.ControlPlane, namespace: str, tmp_path: pathlib.Path
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    for name, source in (("ca.crt", control_plane.pki.ca_cert),
                         ("admin.crt", control_plane.pki.admin_cert),
                         ("admin.key", control_plane.pki.admin_key)):  # fmt: skip
        (folder / name).write_bytes(source.read_bytes())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": control_plane.url,
                                               "certificate-authority": "ca.crt"}}],
        "users": [{"name": "u", "user": {"client-certificate": "admin.crt",
                                         "client-key": "admin.key"}}],
        "contexts": [{"name": "other", "context": {"cluster": "missing", "user": "u"}},
                     {"name": "mine", "context": {"cluster": "c", "user": "u",
                                                  "namespace": namespace}}],
        "current-context": "other",
    }  # fmt: skip
    file = folder / "config"
    file.write_text(yaml.safe_dump(config))

    with pytest.raises(kube.ConfigError, match="no cluster named 'missing'"):
        kube.Connection.from_kubeconfig(file)
    connection = kube.Connection.from_kubeconfig(file, context="mine")
    assert connection.ca_file == folder / "ca.crt"
    assert connection.cert_file == folder / "admin.crt"
    assert connection.namespace == namespace
    async with kube.Client(connection) as client:
        assert await _names(client, namespace) == []


async def test_a_service_account_token_with_no_rights_is_forbidden(
    control_plane: cp.ControlPlane, namespace: str
) -> None:
    control_plane.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
    )
    token = control_plane.service_account_token(namespace, "nobody")
    connection = kube.Connection(server=control_plane.url, ca_file=control_plane.pki.ca_cert,
                                 token=token)  # fmt: skip
    async with kube.Client(connection) as client:
        with pytest.raises(kube.Forbidden) as forbidden:
            await client.list(_configmaps(namespace))
    assert forbidden.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in forbidden.value.message


async def test_each_status_has_its_error_class(
    control_plane: cp.ControlPlane, namespace: str
) -> None:
    async with kube.Client(control_plane.admin_connection()) as client:
        with pytest.raises(kube.NotFound):
            await client.get(_cjs(namespace, "ghost"))
        assert await client.get_or_none(_cjs(namespace, "ghost")) is None

        created = await client.create(_cjs(namespace), _cj("one"))
        with pytest.raises(kube.Conflict) as exists:
            await client.create(_cjs(namespace), _cj("one"))
        assert exists.value.reason == "AlreadyExists"

        # A merge patch that names a resourceVersion is conditional.
        stale = created["metadata"]["resourceVersion"]
        await client.patch(_cjs(namespace, "one"), {"metadata": {"labels": {"a": "b"}}})
        with pytest.raises(kube.Conflict) as changed:
            await client.patch(
                _cjs(namespace, "one"), {"metadata": {"resourceVersion": stale, "labels": {}}}
            )
        assert changed.value.reason == "Conflict"

        # A delete with another uid as its precondition leaves the object alone.
        with pytest.raises(kube.Conflict):
            await client.delete(_cjs(namespace, "one"), uid="not-its-uid")
        assert await client.get_or_none(_cjs(namespace, "one")) is not None
        await client.delete(_cjs(namespace, "one"), uid=created["metadata"]["uid"])
        assert await client.delete(_cjs(namespace, "one")) is None  # gone: fine by default
        with pytest.raises(kube.NotFound):
            await client.delete(_cjs(namespace, "one"), missing_ok=False)

        with pytest.raises(kube.Invalid) as invalid:
            await client.create(_cjs(namespace), _cj("bad", params={"steps": 0}))
        causes = invalid.value.details.get("causes") or []
        assert any(cause.get("field") == "spec.params.steps" for cause in causes), causes

    bad_token = kube.Connection(server=control_plane.url, ca_file=control_plane.pki.ca_cert,
                                token="not-a-token")  # fmt: skip
    async with kube.Client(bad_token) as client:
        with pytest.raises(kube.Unauthorized):
            await client.get(_cjs(namespace, "one"))


async def test_no_answer_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with kube.Client(kube.Connection(server=f"http://127.0.0.1:{port}")) as client:
        with pytest.raises(kube.Unreachable) as raised:
            await client.get("/api/v1/namespaces")
    assert raised.value.status == 0


def test_a_ca_file_that_does_not_load_is_a_config_error(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing.crt"
    with pytest.raises(kube.ConfigError, match=r"CA file .*missing\.crt") as raised:
        kube.Client(kube.Connection(server="https://127.0.0.1:6443", ca_file=missing))
    assert isinstance(raised.value, ValueError) and raised.value.status == 0
    garbled = tmp_path / "kubeconfig"
    garbled.write_text(yaml.safe_dump({
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443",
                                               "certificate-authority-data": "%%%"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c"}}],
        "current-context": "x",
    }))  # fmt: skip
    with pytest.raises(kube.ConfigError, match="certificate-authority-data is not base64"):
        kube.Connection.from_kubeconfig(garbled)


async def test_a_login_function_logs_in_again_after_a_401(
    control_plane: cp.ControlPlane, namespace: str
) -> None:
    """Credentials that rotate: the first login's token is no longer valid; the 401 makes the
    client log in again and send the request once more."""
    good = control_plane.admin_connection()
    logins: list[str] = []

    async def login() -> kube.Connection:
        logins.append("login")
        if len(logins) == 1:
            return kube.Connection(server=good.server, ca_file=good.ca_file, token="expired")
        return good

    async with kube.Client(login=login) as client:
        assert logins == []  # nothing before the first request
        await asyncio.gather(*(client.list(_configmaps(namespace)) for _ in range(3)))
        assert await _names(client, namespace) == []
    assert len(logins) >= 2

    async def never() -> kube.Connection:
        return kube.Connection(server=good.server, ca_file=good.ca_file, token="always-bad")

    async with kube.Client(login=never) as client:
        with pytest.raises(kube.Unauthorized):
            await client.list(_configmaps(namespace))


async def test_lists_come_in_pages_and_watches_resume(
    control_plane: cp.ControlPlane, namespace: str
) -> None:
    async with kube.Client(control_plane.admin_connection()) as client:
        for index in range(5):
            await client.create(_configmaps(namespace), _configmap(f"m{index}"))
        first, token, _ = await client.list_page(_configmaps(namespace), label_selector=MINE,
                                                 limit=2)  # fmt: skip
        assert len(first) == 2 and token
        items, version = await client.list(_configmaps(namespace), label_selector=MINE, chunk=2)
        assert [i["metadata"]["name"] for i in items] == [f"m{index}" for index in range(5)]

        async def changes() -> list[tuple[str, str]]:
            seen = []
            async for kind, obj in client.watch(
                _configmaps(namespace), resource_version=version, label_selector=MINE,
                timeout_seconds=10,
            ):  # fmt: skip
                seen.append((kind, obj["metadata"]["name"]))
                if len(seen) == 2:
                    return seen
            return seen

        watching = asyncio.create_task(changes())
        await client.patch(_configmaps(namespace, "m1"), {"data": {"k": "v"}})
        await client.delete(_configmaps(namespace, "m2"))
        assert await watching == [("MODIFIED", "m1"), ("DELETED", "m2")]

        initial = []
        async for kind, obj in client.watch(
            _configmaps(namespace), send_initial_events=True, label_selector=MINE,
            timeout_seconds=10,
        ):  # fmt: skip
            initial.append((kind, obj["metadata"].get("name")))
            if kind == "BOOKMARK":
                break
        assert sorted(initial[:-1]) == [("ADDED", f"m{index}") for index in (0, 1, 3, 4)]


def test_from_env_prefers_the_url_then_the_kubeconfig(
    control_plane: cp.ControlPlane, tmp_path: pathlib.Path
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    connection = kube.Connection.from_env(
        {"COMPOSE_KUBE_URL": "https://api.example:6443", "COMPOSE_KUBE_TOKEN_FILE": str(token),
         "KUBECONFIG": str(control_plane.kubeconfig)}
    )  # fmt: skip
    assert (connection.server, connection.token_file) == ("https://api.example:6443", token)
    connection = kube.Connection.from_env({"KUBECONFIG": str(control_plane.kubeconfig)})
    assert connection.server == control_plane.url
    ca = base64.b64encode((connection.ca_data or "").encode()).decode()
    assert (
        ca
        == yaml.safe_load(control_plane.kubeconfig.read_text())["clusters"][0]["cluster"][
            "certificate-authority-data"
        ]
    )
    with pytest.raises(kube.ConfigError, match="KUBERNETES_SERVICE_HOST"):
        kube.Connection.from_env({})


async def test_bodies_go_as_utf8_json_with_every_key_a_string(
    control_plane: cp.ControlPlane, namespace: str
) -> None:
    text = "Zürich, café — 東京 🙂"  # not ASCII: sent as UTF-8, stored as given
    async with kube.Client(control_plane.admin_connection()) as client:
        made = await client.create(_configmaps(namespace), {**_configmap("u"), "data": {"t": text}})
        assert made["data"] == {"t": text}
        # A key that is not a string is sent as one, as json.dumps would send it.
        await client.patch(_configmaps(namespace, "u"), {"data": {1: "one"}})
        stored = await client.get(_configmaps(namespace, "u"))
        assert stored["data"] == {"t": text, "1": "one"}
        # A body given as text goes as it is.
        await client.patch(_configmaps(namespace, "u"), '{"data": {"t": null}}')
        assert (await client.get(_configmaps(namespace, "u")))["data"] == {"1": "one"}
