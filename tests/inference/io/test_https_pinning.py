"""HTTPS inputs connect to the address netguard checked, while TLS still verifies the name:
a local HTTPS server with its own CA, reached through an injected resolver."""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from compose_api import netguard
from compose_inference import errors, fetching, retrying
from tests.inference.io.conftest import SleepLog

HOST = "images.example.test"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def write_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for HOST signed by it: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(HOST))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class TlsServer:
    def __init__(self, cert: Path, key: Path) -> None:
        self.hosts: list[str] = []
        seen = self.hosts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Host", ""))
                body = b"tls-body"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        # A short poll interval: shutdown() returns within it (0.5 s by default).
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[TlsServer, Path]]:
    ca, cert, key = write_certificates(tmp_path)
    server = TlsServer(cert, key)
    try:
        yield server, ca
    finally:
        server.stop()


def fetcher(ca: Path, answers: dict[str, list[str]], calls: list[str]) -> fetching.Fetcher:
    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[host]

    settings = fetching.FetchSettings(
        policy=netguard.Policy(allow=netguard.parse_networks("127.0.0.1/32")),
        ca_bundle=str(ca),
        backoff=retrying.Backoff(attempts=1),
    )
    return fetching.Fetcher(settings, resolver=resolver, sleep=SleepLog())


def test_https_connects_to_the_checked_address_and_verifies_the_name(
    tls: tuple[TlsServer, Path],
) -> None:
    server, ca = tls
    calls: list[str] = []
    body = fetcher(ca, {HOST: ["127.0.0.1"]}, calls).fetch(
        f"https://{HOST}:{server.port}/p.png", field="f"
    )
    assert body == b"tls-body"
    assert calls == [HOST]  # resolved once, by netguard; the connection used that answer
    assert server.hosts == [f"{HOST}:{server.port}"]


def test_certificate_for_another_name_is_refused(tls: tuple[TlsServer, Path]) -> None:
    server, ca = tls
    with pytest.raises(errors.InputUnavailable, match="TLS failed"):
        fetcher(ca, {"other.example.test": ["127.0.0.1"]}, []).fetch(
            f"https://other.example.test:{server.port}/p.png", field="f"
        )
    assert server.hosts == []


def test_name_resolving_to_a_forbidden_address_is_never_contacted(
    tls: tuple[TlsServer, Path],
) -> None:
    server, ca = tls
    with pytest.raises(errors.InputRejected, match=f"{HOST} -> 10.0.0.8: private address"):
        fetcher(ca, {HOST: ["127.0.0.1", "10.0.0.8"]}, []).fetch(
            f"https://{HOST}:{server.port}/p.png", field="f"
        )
    assert server.hosts == []
