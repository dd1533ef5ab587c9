"""Shared inputs of the operator tests: a model profiles file and CompositionJob bodies."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest

PROFILES_YAML = """\
- name: instantid-sdxl
  description: InstantID on SDXL, one A10G
  resources: {gpu: 1, cpu: "3", memory: 14Gi, ephemeralStorage: 30Gi}
  placement:
    instanceTypes: [g5.xlarge, g5.2xlarge]
  models:
    base: {uri: "hf://stabilityai/stable-diffusion-xl-base-1.0"}
    identitynet: {uri: "hf://InstantX/InstantID", subfolder: ControlNetModel}
  licence: {name: openrail++, commercialUse: true}
- name: smoke
  image: registry.example.com/compose-inference:smoke
  resources: {gpu: 0, cpu: "1", memory: 2Gi, ephemeralStorage: null}
  placement: {instanceTypes: [], tolerations: [], capacityType: on-demand}
  licence: {name: test}
"""


def cj_body(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    """A valid CompositionJob body; keyword arguments replace top-level spec fields."""
    body: dict[str, Any] = {
        "apiVersion": "compose.nextunicorn.dev/v1alpha1",
        "kind": "CompositionJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "inputs": {
                "person": {"uri": "s3://inputs-bucket/person.jpg"},
                "clothing": [{"uri": "https://example.com/shirt.jpg", "category": "upper"}],
                "place": {"uri": "s3://inputs-bucket/beach.png"},
            },
            "params": {"seed": 42},
            "execution": {"startDeadlineSeconds": 60, "activeDeadlineSeconds": 600},
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


@pytest.fixture
def profiles_path(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(PROFILES_YAML)
    return path


# Each phase's report on the item (rep_setup, rep_call, ...): the operator fixtures print the
# operator's log when the test itself failed.
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
