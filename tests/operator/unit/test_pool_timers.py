"""The pool reconciler's one timer per pool: always the earliest reconcile asked for.

A pool that holds its size for ``scaleToZeroAfterSeconds`` sets a recheck at the end of that
hold; a worker that comes up meanwhile, or a status write waiting out its coalescing window,
must still reconcile the pool at once, not at the recheck."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any, cast

from compose_operator import kubeapi, reconciler
from tests.operator.unit.test_builders import make_settings

KEY = ("studio", "interactive")


def recording(tmp_path: pathlib.Path) -> tuple[Any, list[tuple[str, str]]]:
    jobs = reconciler.Reconciler(make_settings(tmp_path), cast(kubeapi.KubeClient, None))
    runs: list[tuple[str, str]] = []

    async def reconcile_pool(namespace: str, name: str) -> None:
        runs.append((namespace, name))

    jobs.pools.reconcile_pool = reconcile_pool  # type: ignore[method-assign]
    return jobs.pools, runs


async def test_an_event_reconciles_the_pool_during_a_held_scale_down(
    tmp_path: pathlib.Path,
) -> None:
    pools, runs = recording(tmp_path)
    pools._reconcile_in(KEY, 60)  # the recheck at the end of the hold
    pools.changed(*KEY, dispatch=False)  # a new worker's Lease
    await asyncio.sleep(0.5)
    assert runs == [KEY]
    assert KEY not in pools._pending  # the recheck is the next reconcile's to set again


async def test_a_later_recheck_never_postpones_a_sooner_reconcile(tmp_path: pathlib.Path) -> None:
    pools, runs = recording(tmp_path)
    pools._reconcile_in(KEY, 0.1)  # a coalesced status write
    pools._reconcile_in(KEY, 60)
    await asyncio.sleep(0.5)
    assert runs == [KEY]


async def test_a_burst_of_events_reconciles_the_pool_once(tmp_path: pathlib.Path) -> None:
    pools, runs = recording(tmp_path)
    for _ in range(20):
        pools.changed(*KEY, dispatch=False)
    await asyncio.sleep(0.5)
    assert runs == [KEY]
