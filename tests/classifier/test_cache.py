"""Verdict cache: key rules, LRU eviction, TTL, and the Redis store."""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress

import redis.asyncio as redis

from services.classifier.cache import MemoryVerdictCache, RedisVerdictCache, cache_key
from services.classifier.reply import ModelVerdict
from services.classifier.rules import Severity

VERDICT = ModelVerdict(Severity.INFO, 0.5, "Fine.", ("Look.",), "m")
LABELS = {"alertname": "DiskFull", "severity": "critical", "mountpoint": "/var"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_key_label_order_irrelevant() -> None:
    reordered = dict(reversed(list(LABELS.items())))

    assert cache_key(LABELS, {}, "m") == cache_key(reordered, {}, "m")


def test_cache_key_ignores_volatile_labels() -> None:
    first = {**LABELS, "pod": "api-7f9c-abcde", "prometheus_replica": "a"}
    second = {**LABELS, "pod": "api-5d2b-xyzzy", "prometheus_replica": "b"}

    assert cache_key(first, {}, "m") == cache_key(second, {}, "m")


def test_cache_key_ignores_annotation_numbers() -> None:
    first = {"description": "Disk at 91.5% on node-3, id 3f2a9c1e7b"}
    second = {"description": "Disk at 97.25% on node-12, id 8d0b4e6f21"}

    assert cache_key(LABELS, first, "m") == cache_key(LABELS, second, "m")


def test_cache_key_annotation_text_matters() -> None:
    first = {"summary": "Disk full"}
    second = {"summary": "Disk almost full"}

    assert cache_key(LABELS, first, "m") != cache_key(LABELS, second, "m")


def test_cache_key_label_value_matters() -> None:
    other = {**LABELS, "mountpoint": "/data"}

    assert cache_key(LABELS, {}, "m") != cache_key(other, {}, "m")


def test_cache_key_model_matters() -> None:
    assert cache_key(LABELS, {}, "a") != cache_key(LABELS, {}, "b")


def test_cache_key_prompt_matters() -> None:
    assert cache_key(LABELS, {}, "m", "p1") != cache_key(LABELS, {}, "m", "p2")


def test_cache_key_versioned() -> None:
    assert cache_key(LABELS, {}, "m").startswith("v1:")


def test_cache_key_added_annotation_matters() -> None:
    first = {"summary": "Disk full", "description": "at 91%"}
    second = {"summary": "Disk full", "description": "at 99%", "extra": "x"}

    assert cache_key(LABELS, first, "m") != cache_key(LABELS, second, "m")


async def test_cache_round_trip() -> None:
    cache = MemoryVerdictCache(10)

    await cache.set("k", VERDICT, 60)

    assert await cache.get("k") == VERDICT


async def test_cache_expires() -> None:
    clock = Clock()
    cache = MemoryVerdictCache(10, clock=clock)
    await cache.set("k", VERDICT, 60)
    clock.now += 60

    assert await cache.get("k") is None
    assert len(cache) == 0


async def test_cache_ttl_per_entry() -> None:
    clock = Clock()
    cache = MemoryVerdictCache(10, clock=clock)
    await cache.set("short", VERDICT, 10)
    await cache.set("long", VERDICT, 100)
    clock.now += 50

    assert await cache.get("short") is None
    assert await cache.get("long") == VERDICT


async def test_cache_evicts_least_recent() -> None:
    cache = MemoryVerdictCache(2)
    await cache.set("a", VERDICT, 60)
    await cache.set("b", VERDICT, 60)
    await cache.get("a")

    await cache.set("c", VERDICT, 60)

    assert await cache.get("b") is None
    assert await cache.get("a") == VERDICT


async def test_cache_ttl_zero_disabled() -> None:
    cache = MemoryVerdictCache(10)

    await cache.set("k", VERDICT, 0)

    assert await cache.get("k") is None


async def test_redis_cache_round_trip(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    cache = RedisVerdictCache(redis_client, redis_prefix)

    await cache.set("v1:abc", VERDICT, 60)

    assert await cache.get("v1:abc") == VERDICT
    assert await redis_client.exists(f"{redis_prefix}verdict:v1:abc") == 1


async def test_redis_cache_ttl(redis_client: redis.Redis, redis_prefix: str) -> None:
    cache = RedisVerdictCache(redis_client, redis_prefix)

    await cache.set("k", VERDICT, 30)

    ttl = await redis_client.pttl(f"{redis_prefix}verdict:k")
    assert 0 < ttl <= 30_000


async def test_redis_cache_miss(redis_client: redis.Redis, redis_prefix: str) -> None:
    cache = RedisVerdictCache(redis_client, redis_prefix)

    assert await cache.get("absent") is None


async def test_redis_cache_malformed_is_miss(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    cache = RedisVerdictCache(redis_client, redis_prefix)
    await redis_client.set(f"{redis_prefix}verdict:k", '{"severity": "loud"}')

    assert await cache.get("k") is None


async def test_redis_cache_ttl_zero_disabled(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    cache = RedisVerdictCache(redis_client, redis_prefix)

    await cache.set("k", VERDICT, 0)

    assert await cache.get("k") is None


async def test_redis_cache_down_misses() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = redis.from_url(f"redis://127.0.0.1:{port}/0")
    cache = RedisVerdictCache(client, "unused:")
    try:
        await cache.set("k", VERDICT, 60)
        found = await cache.get("k")
    finally:
        await client.aclose()

    assert found is None


async def test_redis_cache_batches_concurrent_lookups(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    cache = RedisVerdictCache(redis_client, redis_prefix)
    await cache.set("k3", VERDICT, 60)
    sizes: list[int] = []
    mget = redis_client.mget

    async def counted_mget(keys: list[str]) -> list[bytes | str | None]:
        sizes.append(len(keys))
        return await mget(keys)

    redis_client.mget = counted_mget  # type: ignore[method-assign,assignment]
    try:
        found = await asyncio.gather(*(cache.get(f"k{index}") for index in range(10)))
    finally:
        redis_client.mget = mget  # type: ignore[method-assign]

    assert found == [None] * 3 + [VERDICT] + [None] * 6
    # Two lookups go out at once, alone, and the other eight share one MGET.
    assert sizes == [1, 1, 8]


async def test_redis_cache_close_with_hung_redis() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_ignore(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connections.append(writer)
        with suppress(ConnectionError):
            while await reader.read(4096):
                pass

    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = redis.from_url(f"redis://127.0.0.1:{port}/0")
    cache = RedisVerdictCache(client, "hung:")
    # The caller gives up, as a classification does when its gRPC deadline
    # passes and the handler is cancelled.
    with suppress(TimeoutError):
        await asyncio.wait_for(cache.get("k"), 0.1)

    closing = asyncio.create_task(cache.close())
    await asyncio.wait([closing], timeout=1.0)
    closed_in_time = closing.done()

    for writer in connections:
        writer.close()
    server.close()
    await server.wait_closed()
    await client.aclose()
    await asyncio.wait_for(closing, 5.0)

    assert closed_in_time
