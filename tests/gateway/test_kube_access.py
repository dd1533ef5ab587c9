"""The gateway's Kubernetes client from outside a cluster: https with a CA bundle and a bearer
token that rotates, plain http without auth, and settings that would leak a token refused."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import pathlib
import ssl
from collections.abc import AsyncIterator

import pydantic
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from compose_api import kube
from compose_gateway import kubeapi
from compose_gateway import settings as settings_module


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write_ca(
    directory: pathlib.Path, name: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate(name, key, None, key)
    (directory / f"{name}.crt").write_bytes(_pem(certificate))
    return certificate, key


class ApiServer:
    """An https server on 127.0.0.1 that records the Authorization header of every request."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"kind": "CompositionJobList", "items": [], "metadata": {}})


@pytest_asyncio.fixture
async def api_server(tmp_path: pathlib.Path) -> AsyncIterator[ApiServer]:
    ca, ca_key = _write_ca(tmp_path, "cluster-ca")
    _write_ca(tmp_path, "other-ca")
    server_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "server.crt").write_bytes(
        _pem(_certificate("kube-apiserver", server_key, ca, ca_key)) + _pem(ca)
    )
    (tmp_path / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    found = ApiServer()
    application = web.Application()
    application.router.add_get("/{tail:.*}", found.handle)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    found.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield found
    finally:
        await runner.cleanup()


def _client(monkeypatch: pytest.MonkeyPatch, url: str, **environment: str) -> kubeapi.KubeClient:
    """The client the gateway builds from these environment variables."""
    monkeypatch.setenv("COMPOSE_KUBE_URL", url)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return kubeapi.KubeClient.from_settings(settings_module.Settings(namespace="ns"))


async def test_https_with_a_ca_file_and_a_token_that_rotates(
    tmp_path: pathlib.Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    client = _client(
        monkeypatch,
        api_server.url,
        COMPOSE_KUBE_TOKEN_FILE=str(token),
        COMPOSE_KUBE_CA_FILE=str(tmp_path / "cluster-ca.crt"),
    )
    try:
        await client.ping()
        await client.ping()
        # A projected token rotates as the kubelet does it: a new file swapped in by rename.
        rotated = tmp_path / "token.new"
        await asyncio.to_thread(rotated.write_text, "rotated-token\n")
        await asyncio.to_thread(os.replace, rotated, token)
        await client.ping()
        # Rewritten in place, same length: the mtime or the inode still tells.
        await asyncio.to_thread(token.write_text, "rotated-toke2\n")
        os.utime(token, ns=(token.stat().st_atime_ns, token.stat().st_mtime_ns + 1_000_000))
        await client.ping()
    finally:
        await client.close()

    assert api_server.seen == [
        "Bearer first-token",
        "Bearer first-token",
        "Bearer rotated-token",
        "Bearer rotated-toke2",
    ]


async def test_a_token_file_that_disappears_keeps_the_last_token(
    tmp_path: pathlib.Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("kept-token")
    client = _client(
        monkeypatch,
        api_server.url,
        COMPOSE_KUBE_TOKEN_FILE=str(token),
        COMPOSE_KUBE_CA_FILE=str(tmp_path / "cluster-ca.crt"),
    )
    try:
        await client.ping()
        token.unlink()
        await client.ping()
    finally:
        await client.close()
    assert api_server.seen == ["Bearer kept-token", "Bearer kept-token"]


async def test_a_server_signed_by_another_ca_is_refused(
    tmp_path: pathlib.Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(
        monkeypatch, api_server.url, COMPOSE_KUBE_CA_FILE=str(tmp_path / "other-ca.crt")
    )
    try:
        with pytest.raises(kube.KubeError) as raised:
            await client.ping()
    finally:
        await client.close()
    assert raised.value.status == 0
    assert "certificate" in raised.value.message.lower()
    assert api_server.seen == []


async def test_https_without_a_ca_file_uses_the_system_trust_store(
    tmp_path: pathlib.Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our test CA is in no system store, so the connection is refused: verification is on.
    client = _client(monkeypatch, api_server.url)
    try:
        with pytest.raises(kube.KubeError, match="certificate"):
            await client.ping()
    finally:
        await client.close()
    assert api_server.seen == []


async def test_plain_http_sends_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"kind": "CompositionJobList", "items": []})

    application = web.Application()
    application.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(application)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    client = _client(monkeypatch, f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        await client.ping()
    finally:
        await client.close()
        await runner.cleanup()
    assert seen == [None]


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"COMPOSE_KUBE_TOKEN_FILE": "/t"}, "sent only to an https://"),
        ({"COMPOSE_KUBE_CA_FILE": "/ca"}, "needs an https://"),
    ],
)
def test_credentials_over_plain_http_are_refused(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("COMPOSE_KUBE_URL", "http://127.0.0.1:8001")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError, match=message):
        settings_module.Settings()


def test_a_url_of_another_scheme_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOSE_KUBE_URL", "ftp://127.0.0.1")
    with pytest.raises(pydantic.ValidationError, match="COMPOSE_KUBE_URL"):
        settings_module.Settings()


def test_a_missing_ca_file_is_named(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=r"CA file .*missing\.crt"):
        _client(
            monkeypatch,
            "https://127.0.0.1:6443",
            COMPOSE_KUBE_CA_FILE=str(tmp_path / "missing.crt"),
        )
