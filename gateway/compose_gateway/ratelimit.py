"""Per-key token buckets for the rate limit of the HTTP API: in memory, or shared through Redis.

The app's auth dependency calls ``acquire`` once per authenticated request; a refusal becomes a
429 with ``Retry-After``. :class:`RateLimiter` keeps the buckets in this replica, so with N
replicas a key gets up to N times the limit; :class:`SharedRateLimiter` keeps them in Redis
(``rate_limit_redis_url``), so the limit holds across replicas. A second, in-process limiter,
keyed by client address, counts requests with invalid keys: :meth:`RateLimiter.wait` tells,
without spending, whether an address may still try a key that needs hashing. The in-process
clock is injected so tests can step time instead of sleeping; the shared buckets use the Redis
server's clock.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from redis import asyncio as redis_asyncio
from redis import exceptions as redis_exceptions

logger = logging.getLogger(__name__)


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

    async def acquire(self, key: str) -> float:
        """:meth:`take`, awaitable like :meth:`SharedRateLimiter.acquire`."""
        return self.take(key)


# One token bucket per key in a Redis hash {tokens, stamp}, updated atomically by this script
# with the Redis server's clock (so replicas need no synchronised clocks). Returns the seconds
# until a token is available, as a string (0 when one was spent).
_TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class SharedRateLimiter:
    """The same token bucket, shared by every replica through Redis (``redis://`` setting).

    When Redis does not answer, the replica falls back to its own in-process bucket for that
    request (the limit is then per replica, as without Redis) and logs it, rather than refusing
    or letting everything through.
    """

    def __init__(
        self,
        *,
        url: str,
        per_minute: float,
        burst: int,
        fallback: RateLimiter,
        prefix: str = "compose-gateway:ratelimit:",
        timeout_seconds: float = 0.5,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self._client = redis_asyncio.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        self._script = self._client.register_script(_TAKE_SCRIPT)
        self._rate = per_minute / 60.0
        self._burst = burst
        self._fallback = fallback
        self._prefix = prefix
        self._on_fallback = on_fallback

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    async def acquire(self, key: str) -> float:
        """Spend one token of ``key``: 0.0 when the request may go ahead, else seconds until it
        may."""
        if not self.enabled:
            return 0.0
        try:
            answer = await self._script(keys=[self._prefix + key], args=[self._rate, self._burst])
        except (redis_exceptions.RedisError, OSError) as error:
            logger.warning("shared rate limit unavailable, limiting in this replica: %s", error)
            if self._on_fallback is not None:
                self._on_fallback()
            return self._fallback.take(key)
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        return float(text)

    async def close(self) -> None:
        await self._client.aclose()
