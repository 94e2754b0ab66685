"""Spend limits per minute, in process and shared through Redis."""

from __future__ import annotations

import socket

import redis.asyncio as redis

from services.classifier.spend import MemorySpendLimiter, RedisSpendLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 6000.0

    def __call__(self) -> float:
        return self.now


async def test_spend_memory_unlimited() -> None:
    limiter = MemorySpendLimiter(None, None)

    allowed = [await limiter.try_acquire() for _ in range(1000)]

    assert all(allowed)


async def test_spend_memory_calls() -> None:
    limiter = MemorySpendLimiter(3, None, clock=Clock())

    allowed = [await limiter.try_acquire() for _ in range(5)]

    assert allowed == [True, True, True, False, False]


async def test_spend_memory_tokens() -> None:
    limiter = MemorySpendLimiter(None, 100, clock=Clock())
    assert await limiter.try_acquire()
    await limiter.add_tokens(99)
    assert await limiter.try_acquire()
    await limiter.add_tokens(1)

    assert not await limiter.try_acquire()


async def test_spend_memory_next_minute() -> None:
    clock = Clock()
    limiter = MemorySpendLimiter(1, None, clock=clock)
    await limiter.try_acquire()
    clock.now += 60

    assert await limiter.try_acquire()


async def test_spend_redis_shared(redis_client: redis.Redis, redis_prefix: str) -> None:
    clock = Clock()
    first = RedisSpendLimiter(redis_client, redis_prefix, 3, None, clock=clock)
    second = RedisSpendLimiter(redis_client, redis_prefix, 3, None, clock=clock)

    allowed = [
        await first.try_acquire(),
        await second.try_acquire(),
        await first.try_acquire(),
        await second.try_acquire(),
    ]

    assert allowed == [True, True, True, False]


async def test_spend_redis_tokens(redis_client: redis.Redis, redis_prefix: str) -> None:
    clock = Clock()
    first = RedisSpendLimiter(redis_client, redis_prefix, None, 500, clock=clock)
    second = RedisSpendLimiter(redis_client, redis_prefix, None, 500, clock=clock)
    await first.try_acquire()
    await first.add_tokens(500)

    assert not await second.try_acquire()


async def test_spend_redis_next_minute(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    clock = Clock()
    limiter = RedisSpendLimiter(redis_client, redis_prefix, 1, None, clock=clock)
    await limiter.try_acquire()
    clock.now += 60

    assert await limiter.try_acquire()


async def test_spend_redis_keys_expire(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    limiter = RedisSpendLimiter(redis_client, redis_prefix, 5, 5, clock=Clock())
    await limiter.try_acquire()
    await limiter.add_tokens(3)

    keys = [key async for key in redis_client.scan_iter(match=f"{redis_prefix}*")]
    ttls = [await redis_client.ttl(key) for key in keys]

    assert len(keys) == 2
    assert all(0 < ttl <= 120 for ttl in ttls)


async def test_spend_redis_down_counts_locally() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = redis.from_url(f"redis://127.0.0.1:{port}/0")
    limiter = RedisSpendLimiter(client, "unused:", 1, None, clock=Clock())
    try:
        allowed = [await limiter.try_acquire(), await limiter.try_acquire()]
    finally:
        await client.aclose()

    assert allowed == [True, False]
