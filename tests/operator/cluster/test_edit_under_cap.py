"""A spec edit before any pod has run starts a new attempt (a new Job, the old one deleted).
Under the per-namespace cap the new Job keeps the hold of the one it replaces: a job that waits
for a slot or that the user suspended gets a Job suspended by the operator, and a job that holds
the slot gets one that starts only once the old Job is gone. So the cap holds exactly through
every edit, as a watch on the Jobs sees it from the first event to the last."""

from __future__ import annotations

import pytest

from compose_api import contract
from tests.operator.cluster.conftest import (
    bound_pod,
    child_jobs,
    cj_with,
    condition,
    create,
    end,
    most_counted,
    wait_until,
)
from tests.operator.operator_process import OperatorProcess
from tests.support import control_plane as cp
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, PODS

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def operator_settings() -> dict[str, str]:
    return {"COMPOSE_MAX_RUNNING_PER_NAMESPACE": "1"}


async def _jobs_of(kube: ClusterClient, cj: str) -> dict[str, bool]:
    """The CompositionJob's Jobs by attempt suffix: whether each is suspended."""
    return {
        job["metadata"]["name"].rsplit("-", 1)[1]: bool(job["spec"].get("suspend"))
        for job in await child_jobs(kube, cj=cj)
    }


async def _until_jobs(kube: ClusterClient, cj: str, wanted: dict[str, bool]) -> None:
    async def check(client: ClusterClient) -> bool:
        return await _jobs_of(client, cj) == wanted

    await wait_until(kube, check, what=f"the Jobs of {cj} to be {wanted}")


async def _edit(kube: ClusterClient, name: str, steps: int) -> None:
    await kube.patch(COMPOSITION_JOBS, name, {"spec": {"params": {"seed": 42, "steps": steps}}})


async def test_edits_before_the_start_keep_each_jobs_hold_and_the_cap(
    operator: OperatorProcess, kube: ClusterClient, namespace: str
) -> None:
    async with most_counted(kube) as most:
        # "held" takes the slot; its pod stays Pending on its node, as while its image is pulled.
        await create(kube, namespace, "held", profile="held-image")
        await bound_pod(kube, "held")
        # The user suspends it, which frees the slot for "other", and edits it while suspended:
        # the new attempt is suspended by the operator, as the old one was.
        await kube.patch(COMPOSITION_JOBS, "held", {"spec": {"suspend": True}})
        await _until_jobs(kube, "held", {"0": True})
        await create(kube, namespace, "other", profile="held-image")
        await bound_pod(kube, "other")
        await _edit(kube, "held", 20)
        await _until_jobs(kube, "held", {"1": True})
        # Resumed, it waits for the slot; edited while it waits, it still waits.
        await kube.patch(COMPOSITION_JOBS, "held", {"spec": {"suspend": False}})
        await cj_with(kube, "held", phase="Queued", reason=("Queued", "WaitingForCapacity"))
        await _edit(kube, "held", 21)
        await _until_jobs(kube, "held", {"2": True})

        async def seen_edit(client: ClusterClient) -> bool:
            # The edit is acknowledged (what GitOps tools wait for) and the new Job named.
            cj = await client.get(COMPOSITION_JOBS, "held")
            started = condition(cj, "Started") or {}
            acknowledged = cj["status"].get("observedGeneration") == cj["metadata"]["generation"]
            return acknowledged and started.get("message", "").endswith("-2 suspended")

        await wait_until(kube, seen_edit, timeout=15, what="the edit of held in its status")
        assert (await kube.get(COMPOSITION_JOBS, "held"))["status"]["phase"] == "Queued"
        # "other" holds the slot and is edited: its new Job starts once the old one is gone.
        await _edit(kube, "other", 20)
        await _until_jobs(kube, "other", {"1": False})
        (job,) = await child_jobs(kube, cj="other")
        pod = await bound_pod(kube, "other", job=job["metadata"]["name"])
        assert await _jobs_of(kube, "held") == {"2": True}
        # It ends, and the slot goes to "held", whose third attempt runs.
        await cp.start_pod(kube, pod)
        await end(kube, await kube.get(PODS, pod["metadata"]["name"]), contract.ExitCode.OK)
        await cj_with(kube, "other", phase="Succeeded")
        await _until_jobs(kube, "held", {"2": False})
        await bound_pod(kube, "held")
    assert most == [1]
