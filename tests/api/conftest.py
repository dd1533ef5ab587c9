"""The real test control plane for the shared Kubernetes client's tests (test_kube.py)."""

from tests.support.cluster_fixtures import control_plane, namespace

__all__ = ["control_plane", "namespace"]
