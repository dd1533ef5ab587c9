"""A per-key token bucket, in memory, for the rate limit of the HTTP API.

The app's auth dependency calls :meth:`RateLimiter.take` once per authenticated request; a
refusal becomes a 429 with ``Retry-After``. A second limiter, keyed by client address, counts
requests with invalid keys: :meth:`RateLimiter.wait` tells, without spending, whether an address
may still try a key that needs hashing. Each gateway replica limits on its own, so the limit
of a key across N replicas is up to N times the setting (documented in the README). The clock is
injected so tests can step time instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable


@dataclasses.dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """``per_minute`` sustained requests per key, with bursts of up to ``burst``."""

    def __init__(
        self,
        *,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._max_keys = max_keys

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled (they hold no state worth keeping), so that
        many distinct keys (client addresses) cannot grow the table without bound."""
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * self._rate >= self._burst:
                del self._buckets[key]

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may spend a token (0.0: now), spending nothing."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(self._burst, bucket.tokens + (self._clock() - bucket.stamp) * self._rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def take(self, key: str) -> float:
        """Spend one token: 0.0 when the request may go ahead, else seconds until it may."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(tokens=self._burst, stamp=now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate
