"""Verdict cache: key rules, LRU eviction and TTL."""

from __future__ import annotations

from services.classifier.cache import MemoryVerdictCache, cache_key
from services.classifier.llm import ModelVerdict
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


def test_cache_key_versioned() -> None:
    assert cache_key(LABELS, {}, "m").startswith("v1:")


async def test_cache_round_trip() -> None:
    cache = MemoryVerdictCache(60, 10)

    await cache.set("k", VERDICT)

    assert await cache.get("k") == VERDICT


async def test_cache_expires() -> None:
    clock = Clock()
    cache = MemoryVerdictCache(60, 10, clock=clock)
    await cache.set("k", VERDICT)
    clock.now += 60

    assert await cache.get("k") is None
    assert len(cache) == 0


async def test_cache_evicts_least_recent() -> None:
    cache = MemoryVerdictCache(60, 2)
    await cache.set("a", VERDICT)
    await cache.set("b", VERDICT)
    await cache.get("a")

    await cache.set("c", VERDICT)

    assert await cache.get("b") is None
    assert await cache.get("a") == VERDICT


async def test_cache_ttl_zero_disabled() -> None:
    cache = MemoryVerdictCache(0, 10)

    await cache.set("k", VERDICT)

    assert await cache.get("k") is None


def test_verdict_json_round_trip() -> None:
    assert ModelVerdict.from_json(VERDICT.to_json()) == VERDICT
