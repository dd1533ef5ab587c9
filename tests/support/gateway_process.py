"""A real ``compose-gateway`` process on the test control plane, logged in as the chart's gateway
ServiceAccount: for the tests and benchmarks that follow a request from the HTTP API to the end
of its job (tracing, result reuse through the gateway).

:func:`chart_gateway_token` applies the chart's gateway ServiceAccount, Role and RoleBinding
(``helm template`` with the gateway on) and returns a bound token once the API server's
authorizer lets that account create CompositionJobs. :func:`running_gateway` starts the process
with that token, one API key and the settings given, waits for ``/readyz``, and stops it on the
way out; its log is kept beside the keys file.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

import httpx
import yaml

from compose_api import models
from compose_gateway import auth
from tests.operator.cluster.conftest import CHART, _helm, kubectl_apply
from tests.support import control_plane as cp
from tests.support.worker_kubelet import free_port

READY_SECONDS = 60


def chart_gateway_token(plane: cp.ControlPlane, namespace: str, *, release: str = "gw") -> str:
    """The chart's gateway ServiceAccount, Role and RoleBinding in ``namespace``; its token."""
    done = subprocess.run(
        [_helm(), "template", release, str(CHART), "--namespace", namespace,
         "--set", "gateway.enabled=true", "--set", "gateway.apiKeysSecret.name=keys",
         "--set", "networkPolicy.apiServerCidrs[0]=127.0.0.1/32"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    objects = [
        d
        for d in yaml.safe_load_all(done.stdout)
        if d
        and d["kind"] in {"ServiceAccount", "Role", "RoleBinding"}
        and d["metadata"]["name"].endswith("-gateway")
    ]
    kubectl_apply(plane, objects)
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    user = f"system:serviceaccount:{namespace}:{account}"
    creating = {"namespace": namespace, "group": models.GROUP, "resource": models.PLURAL}
    plane.wait_allowed(user, namespace, {**creating, "verb": "create"})
    return plane.service_account_token(namespace, account)


@contextlib.contextmanager
def running_gateway(
    plane: cp.ControlPlane,
    namespace: str,
    workdir: pathlib.Path,
    *,
    owner: str,
    settings: Mapping[str, str],
) -> Iterator[tuple[str, str]]:
    """A ``compose-gateway`` process serving ``namespace``: (base URL, ``owner``'s API key).

    ``settings`` adds to (and may override) the process's ``COMPOSE_GATEWAY_*``, S3 and
    ``OTEL_*`` environment; the caller's own ``COMPOSE_*`` and ``OTEL_*`` variables are left
    out."""
    workdir.mkdir(parents=True, exist_ok=True)
    token = workdir / "gateway.token"
    token.write_text(chart_gateway_token(plane, namespace))
    key = auth.new_key(owner)
    keys = workdir / "api-keys.yaml"
    keys.write_text(f"{owner}: {auth.hash_key(key)}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "OTEL_"))}
    env.update(
        {
            "COMPOSE_KUBE_URL": plane.url,
            "COMPOSE_KUBE_TOKEN_FILE": str(token),
            "COMPOSE_KUBE_CA_FILE": str(plane.pki.ca_cert),
            "COMPOSE_GATEWAY_NAMESPACE": namespace,
            "COMPOSE_GATEWAY_HOST": "127.0.0.1",
            "COMPOSE_GATEWAY_PORT": str(port),
            "COMPOSE_GATEWAY_METRICS_ENABLED": "false",
            "COMPOSE_GATEWAY_API_KEYS_FILE": str(keys),
            "COMPOSE_GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
            "COMPOSE_GATEWAY_LOG_LEVEL": "warning",
            **settings,
        }
    )
    log = workdir / "gateway.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "compose_gateway"], env=env, stdout=handle, stderr=handle
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited: {log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway was not ready: {log.read_text()[-4000:]}")
            time.sleep(0.1)
        yield url, key
    finally:
        process.terminate()
        process.wait(timeout=30)
