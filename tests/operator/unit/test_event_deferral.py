"""Events wait for the reconciles that are pending, so that in a burst of new jobs the API
server's time goes to the Job creates and status writes first; an Event never waits longer than
``EVENT_DEFER_SECONDS``, and keeps the time of its transition."""

from __future__ import annotations

import asyncio
import datetime
import pathlib
from typing import Any, cast

import pytest

from compose_operator import kubeapi, reconciler, status
from tests.operator.unit.test_builders import make_settings

BODY = {"metadata": {"namespace": "studio", "name": "portrait", "uid": "u-1"}}
AT = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
STARTED = status.Event("Normal", "Started", "pod running")


class Recording:
    def __init__(self) -> None:
        self.posted: list[tuple[str, datetime.datetime]] = []

    async def post_event(
        self, body: Any, *, type: str, reason: str, message: str, now: Any
    ) -> None:
        self.posted.append((reason, now))


def blocked(tmp_path: pathlib.Path) -> tuple[reconciler.Reconciler, Recording, asyncio.Event]:
    """A reconciler whose reconciles run until the returned event is set."""
    client = Recording()
    jobs = reconciler.Reconciler(make_settings(tmp_path), cast(kubeapi.KubeClient, client))
    release = asyncio.Event()

    async def reconcile_locked(uid: str) -> None:
        await release.wait()

    jobs._reconcile_locked = reconcile_locked  # type: ignore[method-assign]
    return jobs, client, release


async def test_an_event_waits_until_no_reconcile_is_pending(tmp_path: pathlib.Path) -> None:
    jobs, client, release = blocked(tmp_path)
    jobs.poke("u-2")  # another job's reconcile, not started yet
    posting = asyncio.create_task(jobs._post_event(BODY, STARTED, AT))
    await asyncio.sleep(0.3)
    assert client.posted == []  # the reconcile runs (blocked): the Event waits
    jobs.poke("u-3")  # more work meanwhile keeps it waiting
    release.set()
    await asyncio.wait_for(posting, 2)
    assert client.posted == [("Started", AT)]  # with the transition's time, not the posting's


async def test_an_event_is_posted_at_once_when_nothing_is_pending(tmp_path: pathlib.Path) -> None:
    jobs, client, _ = blocked(tmp_path)
    await asyncio.wait_for(jobs._post_event(BODY, STARTED, AT), 0.5)
    assert client.posted == [("Started", AT)]


async def test_an_event_waits_no_longer_than_the_deferral_limit(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconciler, "EVENT_DEFER_SECONDS", 0.3)
    jobs, client, release = blocked(tmp_path)
    jobs.poke("u-2")  # never finishes while the Event waits
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(jobs._post_event(BODY, STARTED, AT), 2)
    waited = asyncio.get_running_loop().time() - started
    assert client.posted == [("Started", AT)]
    assert 0.25 <= waited < 1.5
    release.set()


async def test_quiet_again_once_every_reconcile_has_ended(tmp_path: pathlib.Path) -> None:
    jobs, _, release = blocked(tmp_path)
    jobs.poke("u-2")
    jobs.poke("u-3")
    await asyncio.sleep(0.1)
    assert not jobs._quiet.is_set()
    release.set()
    await asyncio.sleep(0.1)
    assert jobs._quiet.is_set() and jobs._active == 0 and not jobs._poked


async def test_a_reconcile_poked_as_another_ends_keeps_the_event_waiting(
    tmp_path: pathlib.Path,
) -> None:
    jobs, client, release = blocked(tmp_path)
    second = asyncio.Event()

    async def reconcile_locked(uid: str) -> None:
        if uid == "u-2":
            await release.wait()
            jobs.poke("u-3")  # its task starts only after this reconcile has ended
        else:
            await second.wait()

    jobs._reconcile_locked = reconcile_locked  # type: ignore[method-assign]
    jobs.poke("u-2")
    posting = asyncio.create_task(jobs._post_event(BODY, STARTED, AT))
    await asyncio.sleep(0.1)
    release.set()
    await asyncio.sleep(0.3)
    assert client.posted == []
    second.set()
    await asyncio.wait_for(posting, 2)
    assert client.posted == [("Started", AT)]


async def test_on_shutdown_the_waiting_events_are_posted_at_once(tmp_path: pathlib.Path) -> None:
    jobs, client, release = blocked(tmp_path)
    jobs.poke("u-2")  # still running when the operator stops
    await asyncio.sleep(0.05)
    posting = asyncio.create_task(jobs._post_event(BODY, STARTED, AT))
    jobs._events.add(posting)  # as a status write hands it on
    await asyncio.sleep(0.2)
    assert client.posted == []
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(jobs.flush_events(5), 2)
    assert client.posted == [("Started", AT)]
    assert asyncio.get_running_loop().time() - started < 1
    release.set()
