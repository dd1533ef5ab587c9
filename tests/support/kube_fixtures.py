"""Pytest fixtures for the Kubernetes API emulator; import them into a test folder's conftest.py.

    from tests.support.kube_fixtures import kube_emulator, kube, kube_url  # noqa: F401

``kube_emulator`` serves from a background thread with its own event loop, so it works in sync
and async tests alike and with code that runs its own loop (kopf's KopfRunner, ASGI test
clients). ``kube_url`` is its URL for ``COMPOSE_KUBE_URL``; ``kube`` is an open
:class:`~tests.support.cluster_client.ClusterClient` on it (namespace ``default``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.support import cluster_client
from tests.support import kube_emulator as emulation


@pytest.fixture
def kube_emulator_thread() -> Iterator[emulation.EmulatorThread]:
    """The running emulator thread (``.emulator`` for direct access, ``.url``)."""
    thread = emulation.EmulatorThread()
    with thread:
        yield thread


@pytest.fixture
def kube_emulator(
    kube_emulator_thread: emulation.EmulatorThread,
) -> emulation.KubeEmulator:
    """A fresh emulator for one test, already serving; ``.url`` is its address."""
    return kube_emulator_thread.emulator


@pytest.fixture
def kube_url(kube_emulator_thread: emulation.EmulatorThread) -> str:
    """The emulator's URL without a trailing slash (for COMPOSE_KUBE_URL)."""
    return kube_emulator_thread.url


@pytest_asyncio.fixture
async def kube(kube_url: str) -> AsyncIterator[cluster_client.ClusterClient]:
    """A test client on the emulator, acting as users, the Job controller and the kubelet."""
    async with cluster_client.ClusterClient.at(kube_url) as client:
        yield client
