"""A reused result (``compose_inference.reuse``) reaches the status unchanged in both modes: from
a Job pod's termination message and from a pool worker's report, ``result.reusedFrom`` names the
earlier job and the timings show the reuse stage and no load or generation."""

from __future__ import annotations

import pathlib

from compose_api import contract, models
from compose_operator import plan, status
from tests.operator.unit import test_pool_plan as pool
from tests.operator.unit.test_status import NODES, at, job, pod, scheduled, terminated

EARLIER = models.JobReference(namespace="studio", name="portrait-earlier", uid="uid-earlier")
TIMINGS = models.Timings(fetch=0.05, reuse=0.03, total=0.1)


def reused() -> models.Result:
    return models.Result(
        s3_uri="s3://results-bucket/compose/studio/portrait/u/result.png",
        sha256="cd" * 32,
        width=1024,
        height=1024,
        format=models.ImageFormat.PNG,
        seed=42,
        steps=30,
        reused_from=EARLIER,
    )


def check(found: models.CompositionJobStatus) -> None:
    assert found.phase == models.Phase.SUCCEEDED
    assert found.result is not None and found.result.reused_from == EARLIER
    assert found.result.sha256 == "cd" * 32 and found.result.url is not None
    assert found.timings is not None and found.timings.reuse == 0.03
    assert (found.timings.model_load, found.timings.inference) == (None, None)
    # As the API carries it.
    assert found.to_api()["result"]["reusedFrom"] == {
        "namespace": "studio",
        "name": "portrait-earlier",
        "uid": "uid-earlier",
    }


def test_job_mode_maps_a_reused_result_from_the_termination_message(tmp_path: pathlib.Path) -> None:
    message = contract.TerminationMessage(
        exit_code=0,
        reason="Completed",
        message="reused the 1024x1024 png result of studio/portrait-earlier (uid uid-earlier)",
        result=reused(),
        timings=TIMINGS,
    ).to_json()
    assert '"reusedFrom":' in message
    ended = pod(
        "p1",
        6,
        phase="Succeeded",
        node="gpu-1",
        conditions=[scheduled(8)],
        state=terminated(0, 20, 21, message),
    )
    child = job()
    outcome = status.compute(
        pool.make_cj(),
        child,
        [ended],
        now=at(22),
        settings=pool.make_settings(tmp_path),
        seed=42,
        nodes=NODES,
    )
    check(outcome.status)


def test_pool_mode_maps_a_reused_result_from_the_worker_report(tmp_path: pathlib.Path) -> None:
    config = pool.make_settings(tmp_path)
    cj = pool.assigned_job(config)
    running = pool.after(
        cj,
        plan.plan(pool.seen(cj, lease=pool.lease(3), worker_report=pool.report(4)), at(5), config),
    )
    done = pool.report(4, finished=5, code=0, result=reused(), timings=TIMINGS)
    decided = plan.plan(pool.seen(running, lease=pool.lease(4), worker_report=done), at(5), config)
    check(pool.only_write(decided).outcome.status)
