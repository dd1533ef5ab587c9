"""The API server refuses a Job (here a ValidatingAdmissionPolicy that denies every Job create in
the test's namespace, as a policy engine or an admission webhook would). The job says so in
status, as a warning with the server's answer, and the operator tries again, writing nothing
more, until the create goes through."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from compose_api import contract, models
from compose_api import kube as kubeclient
from tests.operator.cluster.conftest import (
    child_jobs,
    cj_with,
    condition,
    create,
    end,
    operator_requests,
    running_pod,
    status_patches,
    wait_until,
)
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import EVENTS, JOBS, ResourceSpec

pytestmark = pytest.mark.timeout(120)

POLICIES = ResourceSpec(
    "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies",
    "ValidatingAdmissionPolicy", namespaced=False, status_subresource=True,
)  # fmt: skip
BINDINGS = ResourceSpec(
    "admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings",
    "ValidatingAdmissionPolicyBinding", namespaced=False,
)  # fmt: skip
DENIAL = "jobs are paused in this namespace by policy"


@contextlib.asynccontextmanager
async def jobs_denied(kube: ClusterClient, namespace: str) -> AsyncIterator[None]:
    """Every Job create in ``namespace`` denied (403) until the block ends; in force when it
    begins (a suspended probe Job is refused)."""
    name = f"no-jobs-{namespace}"
    rule = {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"],
            "resources": ["jobs"]}  # fmt: skip
    policy = {
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [rule]},
            "validations": [{"expression": "false", "message": DENIAL, "reason": "Forbidden"}],
        },
    }
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    binding = {
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": selector},
        },
    }
    await kube.create(POLICIES, policy)
    await kube.create(BINDINGS, binding)
    try:
        pod = {"restartPolicy": "Never", "containers": [{"name": "c", "image": "probe"}]}
        probe = {"spec": {"suspend": True, "template": {"spec": pod}}}
        count = [0]

        async def denied(client: ClusterClient) -> bool:
            count[0] += 1
            try:
                await client.create(JOBS, {"metadata": {"name": f"probe-{count[0]}"}, **probe})
            except kubeclient.Forbidden:
                return True
            return False

        await wait_until(kube, denied, timeout=20, what="the policy to deny Jobs")
        yield
    finally:
        await kube.delete(BINDINGS, name)
        await kube.delete(POLICIES, name)


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {"COMPOSE_MAX_RUNNING_PER_NAMESPACE": "1", "COMPOSE_RECONCILE_INTERVAL_SECONDS": "1"}


def _creates(control_plane: cp.ControlPlane, operator: OperatorProcess) -> int:
    """The operator's Job creates so far, refused or not."""
    return sum(
        1
        for r in operator_requests(control_plane, operator)
        if r.resource == "jobs" and r.verb == "create"
    )


async def test_a_refused_create_is_shown_then_tried_again_until_it_goes_through(
    operator: OperatorProcess, kube: ClusterClient, namespace: str, control_plane: cp.ControlPlane
) -> None:
    await create(kube, namespace, "first")
    first = await running_pod(kube, "first")
    await create(kube, namespace, "second")
    await cj_with(kube, "second", phase="Queued")
    async with jobs_denied(kube, namespace):
        await end(kube, first, contract.ExitCode.OK)
        await cj_with(kube, "first", phase="Succeeded")
        # Admitted with its create alone (it waited), and refused: shown at once, a warning.
        refused = await cj_with(kube, "second", reason=("Started", "JobCreateFailed"))
        assert refused["status"]["phase"] == "Starting"
        assert condition(refused, "Queued")["reason"] == "Admitted"  # type: ignore[index]
        message = refused["status"]["message"]
        assert message.startswith("creating job second-") and "was refused" in message
        assert "403 Forbidden" in message and DENIAL in message
        assert await child_jobs(kube, cj="second") == []

        async def warned(client: ClusterClient) -> bool:
            events = await client.list(EVENTS)
            return any(
                e["involvedObject"]["name"] == "second"
                and (e["reason"], e["type"]) == ("JobCreateFailed", "Warning")
                for e in events
            )

        await wait_until(kube, warned, what="the Warning Event of the refused create")
        written = await status_patches(control_plane, operator, "second")
        assert written == 2  # Queued, then the refusal
        # Tried again, every sweep, with no write: the same refusal is the same status. (Only
        # this job's Job is being created now: first's exists.)
        tries = _creates(control_plane, operator)

        async def tried_twice_more(_: ClusterClient) -> bool:
            return _creates(control_plane, operator) >= tries + 2

        await wait_until(kube, tried_twice_more, timeout=20, what="two more tries of the create")
        assert await status_patches(control_plane, operator, "second") == written
        # Logged once, as a warning without a traceback: status holds the rest.
        log = operator.log()
        lines = [line for line in log.splitlines() if "creating the Job of" in line]
        assert len(lines) == 1 and " WARNING " in lines[0] and DENIAL in lines[0]
        assert "Traceback" not in log

    pod = await running_pod(kube, "second")
    running = await cj_with(kube, "second", phase="Running")
    started = condition(running, "Started")
    assert started is not None and started["reason"] == models.Reason.RUNNING
    await end(kube, pod, contract.ExitCode.OK)
    done = await cj_with(kube, "second", phase="Succeeded")
    assert done["status"]["result"]["s3Uri"].startswith("s3://")
    assert len(await child_jobs(kube, cj="second")) == 1
