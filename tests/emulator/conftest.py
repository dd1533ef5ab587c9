"""Fixtures for the emulator's own tests: the shared Kubernetes emulator fixtures."""

from tests.support.kube_fixtures import kube, kube_emulator, kube_emulator_thread, kube_url

__all__ = ["kube", "kube_emulator", "kube_emulator_thread", "kube_url"]
