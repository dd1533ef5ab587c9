"""Schema-driven fuzzing: schemathesis generates requests (valid and invalid) from the served
OpenAPI document; no answer may be a 5xx.

The gateway runs under uvicorn on 127.0.0.1 (a real server, as in production) against the
real test control plane and the local S3 server. The example count is kept modest (about a minute).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
import uvicorn
from schemathesis.generation import GenerationMode

from compose_gateway import app as app_module
from compose_gateway import settings as settings_module
from tests.gateway.conftest import ALICE_KEY, CALLBACK_SECRET, NAMESPACE, GatewayCluster
from tests.support import s3

# More for a deeper run: COMPOSE_FUZZ_EXAMPLES=200 pytest tests/gateway/test_schema.py
EXAMPLES = int(os.environ.get("COMPOSE_FUZZ_EXAMPLES", "20"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def served_gateway(
    gateway_cluster: GatewayCluster, s3_env: s3.S3Server, buckets: dict[str, str], key_file: Any
) -> Iterator[str]:
    settings = settings_module.Settings(
        namespace=NAMESPACE,
        kube_url=gateway_cluster.plane.url,
        kube_token_file=gateway_cluster.token_file,
        kube_ca_file=gateway_cluster.plane.pki.ca_cert,
        inputs_bucket=buckets["inputs"],
        s3_endpoint_url=s3_env.endpoint_url,
        aws_region=s3.REGION,
        api_keys_file=key_file,
        rate_limit_per_minute=0,
        max_wait_seconds=0.2,
        job_poll_seconds=0.05,
        callback_poll_seconds=600,
        max_request_bytes=256 * 1024,
    )
    app = app_module.create_app(settings, callback_secret=CALLBACK_SECRET)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_no_request_gets_a_server_error(served_gateway: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served_gateway}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /generate",
        "GET /jobs",
        "GET /jobs/{job_id}",
        "DELETE /jobs/{job_id}",
    }
    tried = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            def call(case: Any) -> None:
                nonlocal tried
                tried += 1
                # Authenticated as a real key, so generated requests reach the handlers.
                headers = {
                    name: value
                    for name, value in (case.headers or {}).items()
                    if name.lower() not in {"authorization", "x-api-key"}
                }
                case.headers = {**headers, "X-API-Key": ALICE_KEY}
                response = case.call(base_url=served_gateway, timeout=30)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:500]}"
                )

            try:
                call()
            except hypothesis.errors.Unsatisfiable:
                # Nothing in this operation can be made invalid (no parameters, no body).
                assert mode == GenerationMode.NEGATIVE, operation.path
    assert tried >= len(operations) * EXAMPLES // 2
