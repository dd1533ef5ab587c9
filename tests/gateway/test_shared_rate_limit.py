"""The shared rate limit: two replicas against one real Redis limit a key together; without
Redis reachable a replica limits on its own instead of failing."""

from __future__ import annotations

from collections.abc import Iterator

import pydantic
import pytest

from compose_gateway import settings
from tests.gateway.conftest import BOB_KEY, MakeGateway
from tests.support import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server.running() as url:
        yield url


async def test_two_replicas_share_one_bucket_per_key(
    make_gateway: MakeGateway, redis_url: str
) -> None:
    limits = {"rate_limit_per_minute": 6, "rate_limit_burst": 3, "rate_limit_redis_url": redis_url}
    first = await make_gateway(**limits)
    second = await make_gateway(**limits)

    codes = [(await replica.get("/jobs")).status_code for replica in (first, second, first, second)]
    limited = await second.get("/jobs")

    # In-process buckets would let each replica take 3 (6 in all); shared, the key gets 3.
    assert codes == [200, 200, 200, 429]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 10
    assert (await first.get("/jobs", key=BOB_KEY)).status_code == 200  # another key's bucket


async def test_without_redis_a_replica_limits_on_its_own(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(
        rate_limit_per_minute=6, rate_limit_burst=2, rate_limit_redis_url="redis://127.0.0.1:9/0"
    )

    codes = [(await gateway.get("/jobs")).status_code for _ in range(3)]

    assert codes == [200, 200, 429]
    metrics = gateway.services.metrics.render().decode()
    assert "compose_gateway_rate_limit_fallbacks_total 3.0" in metrics


def test_the_setting_takes_only_redis_urls() -> None:
    with pytest.raises(pydantic.ValidationError, match="rate_limit_redis_url"):
        settings.Settings(rate_limit_redis_url="http://redis:6379")
