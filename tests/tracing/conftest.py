"""The real test control plane, S3 and OpenTelemetry Collector for the tracing tests."""

from collections.abc import Iterator

import pytest

from tests.support import otel_collector
from tests.support.cluster_fixtures import control_plane, namespace

__all__ = ["control_plane", "namespace"]


@pytest.fixture(scope="module")
def collector() -> Iterator[otel_collector.Collector]:
    with otel_collector.start() as running:
        yield running
