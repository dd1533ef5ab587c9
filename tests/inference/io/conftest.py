"""Fixtures for the inference I/O tests: a local HTTP server with scripted routes, sample
images, and fetcher settings that allow-list the local server only."""

from __future__ import annotations

import dataclasses
import http.server
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compose_api import contract, models, netguard, profiles
from compose_inference import fetching, retrying
from tests.support import s3


@dataclasses.dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    # Chunked transfer encoding (no Content-Length): the body in pieces of this size, each
    # flushed on its own after ``chunk_delay`` seconds.
    chunk_size: int | None = None
    chunk_delay: float = 0.0


Route = Callable[[], Reply]


class HttpServer:
    """An HTTP server on 127.0.0.1 answering each path from a table of routes."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        self.sent: dict[str, int] = {}  # body bytes written per path (chunked replies)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.hits[path] = server.hits.get(path, 0) + 1
                route = server.routes.get(path)
                reply = route() if route else Reply(status=404, body=b"not found")
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.chunk_size is None:
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for start in range(0, len(reply.body), reply.chunk_size):
                        piece = reply.body[start : start + reply.chunk_size]
                        if reply.chunk_delay:
                            time.sleep(reply.chunk_delay)
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                        self.wfile.flush()
                        server.sent[path] = server.sent.get(path, 0) + len(piece)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client stopped reading, as it should past a limit

            def log_message(self, format: str, *args: object) -> None:
                return

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        # serve_forever checks for shutdown() every poll_interval: its default of 0.5 s is
        # half a second more on each test that uses the server.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, *, status: int = 200) -> str:
        self.routes[path] = lambda: Reply(status=status, body=body)
        return self.url(path)

    def redirect(self, path: str, location: str, *, status: int = 302) -> str:
        self.routes[path] = lambda: Reply(status=status, headers={"Location": location})
        return self.url(path)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def close_unstarted(self) -> None:
        """Release the port of a server that was never started."""
        self._httpd.server_close()


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    server = HttpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclasses.dataclass
class SleepLog:
    """Records backoff delays instead of sleeping."""

    delays: list[float] = dataclasses.field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> SleepLog:
    return SleepLog()


@pytest.fixture
def local_policy() -> netguard.Policy:
    """Only 127.0.0.1 is opened (plain http allowed); 127.0.0.2 and the rest stay forbidden."""
    return netguard.Policy(allow=netguard.parse_networks("127.0.0.1/32"), allow_http=True)


@pytest.fixture
def fetch_settings(local_policy: netguard.Policy) -> fetching.FetchSettings:
    return fetching.FetchSettings(
        max_bytes=2 * 1024 * 1024,
        connect_timeout=2.0,
        read_timeout=5.0,
        policy=local_policy,
        backoff=retrying.Backoff(attempts=3, base=0.25, cap=1.0),
    )


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def astronaut_png(astronaut: Image.Image) -> bytes:
    return encode(astronaut, "PNG")


@pytest.fixture(scope="session")
def small_png() -> bytes:
    rng = np.random.default_rng(7)
    return encode(Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)), "PNG")


# -- job documents ------------------------------------------------------------------------------


def job_document(
    *,
    person: str,
    clothing: list[str],
    place: str,
    bucket: str,
    profile: dict[str, object],
    seed: int = 7,
    fmt: str = "png",
    name: str = "look-1",
) -> contract.JobDocument:
    """A job document as the operator would write it for the pod."""
    spec = models.CompositionJobSpec.model_validate(
        {
            "inputs": {
                "person": {"uri": person},
                "clothing": [{"uri": uri} for uri in clothing],
                "place": {"uri": place},
            },
            "output": {"bucket": bucket, "prefix": "results/", "format": fmt},
            "profile": profile["name"],
        }
    )
    return contract.JobDocument(
        job=contract.JobIdentity(name=name, namespace="team-a", uid="uid-1234", attempt=0),
        spec=spec,
        profile=profiles.ModelProfile.model_validate(profile),
        seed=seed,
        output_key_prefix=f"results/team-a/{name}/uid-1234/",
    )


def bucket_keys(server: s3.S3Server, bucket: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


@pytest.fixture(scope="session")
def tiny_root(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["base"].parent


@pytest.fixture(scope="session")
def local_profile(tiny_root: Path) -> dict[str, object]:
    """The tiny models as local paths, pinned to 64x64 and 2 steps (B's smoke profile)."""
    from compose_inference import tiny

    return tiny.smoke_profile(tiny_root).model_dump(mode="json", by_alias=True)
