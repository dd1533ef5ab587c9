"""A spec the operator's own validation refuses fails with the field named and creates no Job.

On the emulator, not the real control plane: the CRD's schema refuses this spec, so a real API
server never stores it (the models and the CRD agree, tests/crd/test_agreement.py); a cluster
shows it only when its CRD is older than the operator. Only the emulator, which serves the
resource without the schema, lets the operator's side of it run."""

from __future__ import annotations

import pytest

from tests.operator.conftest import cj_body
from tests.operator.operator_process import OperatorProcess
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, JOBS

pytestmark = pytest.mark.timeout(60)


def _failed(obj: dict[str, object] | None) -> bool:
    return bool(obj) and (obj.get("status") or {}).get("phase") == "Failed"  # type: ignore[union-attr]


async def test_a_rejected_spec_fails_with_the_field_named_and_creates_no_job(
    operator: OperatorProcess, kube: ClusterClient
) -> None:
    await kube.create(COMPOSITION_JOBS, cj_body("bad", params={"steps": 0}))
    cj = await kube.wait_for(COMPOSITION_JOBS, "bad", _failed, timeout=20)
    assert cj is not None
    conditions = {c["type"]: c for c in cj["status"]["conditions"]}
    accepted = conditions["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
    assert "spec.params.steps" in accepted["message"]
    assert conditions["Failed"]["reason"] == "InvalidSpec"
    assert await kube.list(JOBS) == []
