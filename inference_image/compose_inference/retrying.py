"""Retries with exponential backoff, for transient errors only.

Used by ``fetching`` (inputs), ``modelstore`` (weights) and ``upload`` (the result). The caller
says which errors are transient; anything else propagates at once, so a missing object or a 404
never costs a retry. The sleep function is injected so tests never wait.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Backoff:
    """``attempts`` tries in all; waits ``base * 2**n`` seconds between them, at most ``cap``."""

    attempts: int = 4
    base: float = 0.5
    cap: float = 8.0

    def delays(self) -> list[float]:
        return [min(self.cap, self.base * 2**n) for n in range(max(0, self.attempts - 1))]


class RetriesExhausted(Exception):
    """Every attempt failed with a transient error; ``last`` is the final one. ``deadline``
    is true when the retries stopped because the next one would end past the deadline."""

    def __init__(self, attempts: int, last: BaseException, *, deadline: bool = False) -> None:
        why = "the deadline left no time for another attempt" if deadline else "no attempts left"
        super().__init__(f"failed after {attempts} attempts ({why}): {last}")
        self.attempts = attempts
        self.last = last
        self.deadline = deadline


def call(
    operation: Callable[[], T],
    *,
    transient: Callable[[BaseException], bool],
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``operation``; retry it after transient errors; raise RetriesExhausted at the end,
    or as soon as waiting for the next attempt would pass ``deadline`` (a ``clock()`` time)."""
    delays = backoff.delays()
    attempt = 0
    while True:
        try:
            return operation()
        except Exception as error:
            if not transient(error):
                raise
            if attempt >= len(delays):
                raise RetriesExhausted(attempt + 1, error) from error
            if deadline is not None and clock() + delays[attempt] >= deadline:
                raise RetriesExhausted(attempt + 1, error, deadline=True) from error
            sleep(delays[attempt])
            attempt += 1
