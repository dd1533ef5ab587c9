"""What the pool tests and the pool benchmark share: inputs and the tiny profile placed on GPUs.

- :func:`photos`: sample photos shipped with scikit-image (a person with a face, a garment, a
  place) and a faceless grey square, as PNG bytes; no network.
- :func:`https_inputs`: an HTTPS server on 127.0.0.1 with the test cluster's serving certificate
  (its SANs hold 127.0.0.1); workers trust its CA through ``COMPOSE_FETCH_CA_BUNDLE``.
- :class:`Gate`: an HTTPS input held until the test opens it (a run held in its fetch stage).
- :func:`gpu_profile`: the built-in smoke profile's tiny models (CPU, 64x64, 2 steps) placed as a
  GPU profile, so that worker and Job pods ask for one nvidia.com/gpu on a fake g5 node.
"""

from __future__ import annotations

import contextlib
import pathlib
import ssl
import threading
from collections.abc import Iterator
from typing import Any

from tests.inference.io.conftest import HttpServer, Reply, encode
from tests.support import control_plane as cp


def photos() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image
    from skimage import data

    return {
        "person": encode(Image.fromarray(data.astronaut()), "PNG"),
        "shirt": encode(Image.fromarray(data.coffee()), "PNG"),
        "place": encode(Image.fromarray(data.rocket()), "PNG"),
        "faceless": encode(Image.fromarray(np.full((256, 256, 3), 128, np.uint8)), "PNG"),
    }


@contextlib.contextmanager
def https_inputs(plane: cp.ControlPlane) -> Iterator[HttpServer]:
    server = HttpServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(plane.pki.server_cert, plane.pki.server_key)
    server._httpd.socket = context.wrap_socket(server._httpd.socket, server_side=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Gate:
    """An HTTPS input that is served only once the test opens the gate (a run held mid-fetch)."""

    def __init__(self, server: HttpServer, path: str, body: bytes, *, hold: float = 60) -> None:
        self.opened = threading.Event()
        self.requested = threading.Event()
        self.url = f"https://127.0.0.1:{server.port}{path}"

        def route() -> Reply:
            self.requested.set()
            self.opened.wait(timeout=hold)
            return Reply(body=body)

        server.routes[path] = route


def gpu_profile(root: pathlib.Path, name: str) -> dict[str, Any]:
    """The tiny models, built under ``root``, as profile ``name`` with one GPU per pod on g5."""
    from compose_inference import tiny

    tiny.build_tiny_models(root)
    found = tiny.smoke_profile(root).model_dump(mode="json", by_alias=True, exclude_none=True)
    found["name"] = name
    found["resources"] = {"gpu": 1, "cpu": "1", "memory": "2Gi", "ephemeralStorage": None}
    found["placement"] = {"instanceTypes": ["g5.xlarge", "g5.2xlarge"]}
    return found
