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
    """Every attempt failed with a transient error; ``last`` is the final one."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"failed after {attempts} attempts: {last}")
        self.attempts = attempts
        self.last = last


def call(
    operation: Callable[[], T],
    *,
    transient: Callable[[BaseException], bool],
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``operation``; retry it after transient errors; raise RetriesExhausted at the end."""
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
            sleep(delays[attempt])
            attempt += 1
