"""One model call per alert across classifiers that share Redis."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as redis
from prometheus_client import CollectorRegistry

from alerthistory.alert.v1 import alert_pb2
from libs.config import Settings
from services.classifier.cache import RedisVerdictCache
from services.classifier.classifier import Classifier
from services.classifier.flight import RedisFlight
from services.classifier.reply import ModelFailure, ModelVerdict
from services.classifier.rules import Severity
from services.classifier.service import ClassifierService, create_service
from tests.classifier.conftest import REDIS_URL, TEST_SETTINGS, make_alert
from tests.fakes.llm import FakeLLM

TARGET_DOWN = {"alertname": "TargetDown", "severity": "warning", "job": "api"}
VERDICT = ModelVerdict(Severity.INFO, 0.5, "Fine.", (), "m")

ServiceFactory = Callable[..., ClassifierService]


@pytest.fixture
async def make_service(
    fake_llm: FakeLLM, redis_prefix: str
) -> AsyncIterator[ServiceFactory]:
    """Build classifier services that share Redis under the test's prefix."""
    services: list[ClassifierService] = []

    def build(**overrides: Any) -> ClassifierService:
        values = {
            **TEST_SETTINGS,
            "llm_proxy_url": fake_llm.url,
            "redis_url": REDIS_URL,
            "classification_cache_key_prefix": redis_prefix,
            "classifier_context_timeout_seconds": 0,
            **overrides,
        }
        service = create_service(Settings.model_validate(values), CollectorRegistry())
        services.append(service)
        return service

    yield build
    for service in services:
        await service.close()


async def _classify_many(
    classifiers: list[Classifier], alert: alert_pb2.Alert, count: int
) -> list[alert_pb2.Classification]:
    calls = [
        classifiers[index % len(classifiers)].classify(alert, budget_seconds=5)
        for index in range(count)
    ]
    return list(await asyncio.gather(*calls))


async def test_flight_one_call_for_two_classifiers(
    fake_llm: FakeLLM, make_service: ServiceFactory
) -> None:
    fake_llm.default_delay = 0.3
    classifiers = [make_service().classifier, make_service().classifier]

    results = await _classify_many(classifiers, make_alert(TARGET_DOWN), 50)

    assert len(fake_llm.requests) == 1
    assert {r.source for r in results} == {alert_pb2.VERDICT_SOURCE_MODEL}
    assert {r.severity for r in results} == {alert_pb2.SEVERITY_WARNING}


async def test_flight_shared_cache(
    fake_llm: FakeLLM, make_service: ServiceFactory
) -> None:
    first, second = make_service().classifier, make_service().classifier
    await first.classify(make_alert(TARGET_DOWN))

    result = await second.classify(make_alert(TARGET_DOWN))

    assert result.source == alert_pb2.VERDICT_SOURCE_CACHE
    assert len(fake_llm.requests) == 1


async def test_flight_failure_shared(
    fake_llm: FakeLLM, make_service: ServiceFactory
) -> None:
    fake_llm.enqueue(status=400, body="bad request", delay=0.3)
    classifiers = [make_service().classifier, make_service().classifier]

    results = await _classify_many(classifiers, make_alert(TARGET_DOWN), 10)

    assert len(fake_llm.requests) == 1
    assert {r.source for r in results} == {alert_pb2.VERDICT_SOURCE_RULES}
    assert {r.fallback_reason for r in results} == {"http_error"}


async def test_flight_dead_holder_lock_expires(
    fake_llm: FakeLLM,
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    cache = RedisVerdictCache(redis_client, redis_prefix)
    flight = RedisFlight(redis_client, cache)
    await redis_client.set(f"{redis_prefix}lock:k", "dead-holder", px=300)
    calls = 0

    async def call() -> ModelVerdict:
        nonlocal calls
        calls += 1
        await cache.set("k", VERDICT, 60)
        return VERDICT

    loop = asyncio.get_running_loop()
    started = loop.time()
    verdict = await flight.run("k", call, loop.time() + 5)

    assert verdict == VERDICT
    assert calls == 1
    assert loop.time() - started >= 0.25


async def test_flight_follower_times_out(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    cache = RedisVerdictCache(redis_client, redis_prefix)
    flight = RedisFlight(redis_client, cache)
    await redis_client.set(f"{redis_prefix}lock:k", "busy-holder", px=5000)

    async def call() -> ModelVerdict:
        raise AssertionError("the lock holder makes the call")

    loop = asyncio.get_running_loop()
    with pytest.raises(ModelFailure) as caught:
        await flight.run("k", call, loop.time() + 0.3)

    assert caught.value.reason == "timeout"


async def test_flight_releases_lock(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    cache = RedisVerdictCache(redis_client, redis_prefix)
    flight = RedisFlight(redis_client, cache)

    async def call() -> ModelVerdict:
        return VERDICT

    loop = asyncio.get_running_loop()
    await flight.run("k", call, loop.time() + 5)

    assert await redis_client.exists(f"{redis_prefix}lock:k") == 0


async def test_flight_lock_expiry_bounded(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    cache = RedisVerdictCache(redis_client, redis_prefix)
    flight = RedisFlight(redis_client, cache)
    ttls: list[int] = []

    async def call() -> ModelVerdict:
        ttls.append(await redis_client.pttl(f"{redis_prefix}lock:k"))
        return VERDICT

    loop = asyncio.get_running_loop()
    await flight.run("k", call, loop.time() + 2)

    assert 2000 < ttls[0] <= 3000


async def test_flight_redis_down_calls_directly() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = redis.from_url(f"redis://127.0.0.1:{port}/0")
    flight = RedisFlight(client, RedisVerdictCache(client, "unused:"))

    async def call() -> ModelVerdict:
        return VERDICT

    loop = asyncio.get_running_loop()
    try:
        verdict = await flight.run("k", call, loop.time() + 2)
    finally:
        await client.aclose()

    assert verdict == VERDICT


async def test_service_redis_down_still_classifies(
    fake_llm: FakeLLM, make_service: ServiceFactory
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = make_service(redis_url=f"redis://127.0.0.1:{port}/0")

    result = await service.classifier.classify(make_alert(TARGET_DOWN))

    assert result.source == alert_pb2.VERDICT_SOURCE_MODEL
