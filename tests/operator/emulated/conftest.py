"""The real operator against the repository's API emulator, for what a real cluster cannot show.

The operator runs as a subprocess with ``COMPOSE_KUBE_URL`` pointing at the emulator
(tests/support/kube_emulator.py), which serves the CompositionJob without the CRD's schema: so a
test can store a spec the API server would refuse and see what the operator makes of it. Every
other operator test runs on the real control plane (tests/operator/cluster/).
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator

import pytest

from tests.operator.operator_process import OperatorProcess, operator_env
from tests.support.kube_fixtures import kube, kube_emulator, kube_emulator_thread, kube_url

__all__ = ["kube", "kube_emulator", "kube_emulator_thread", "kube_url"]


@pytest.fixture
def operator(
    kube_url: str,
    profiles_path: pathlib.Path,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        operator_env(profiles_path, COMPOSE_KUBE_URL=kube_url), tmp_path / "operator.log"
    )
    process.start()
    yield process
    process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        sys.stderr.write(f"--- operator log ---\n{process.log()[-20000:]}\n")
