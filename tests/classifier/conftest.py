"""Fixtures for the classifier tests: case alerts, a fake model, classifiers."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from prometheus_client import CollectorRegistry

from alerthistory.alert.v1 import alert_pb2
from libs.alerts import parse_notification
from libs.config import Settings
from services.classifier.cache import MemoryVerdictCache, VerdictCache
from services.classifier.classifier import (
    DEFAULT_MAX_PENDING,
    Classifier,
    ClassifierMetrics,
)
from services.classifier.context import AlertContext, ContextSource
from services.classifier.flight import Flight
from services.classifier.llm import LLMMetrics
from services.classifier.prompt import PromptTemplate
from services.classifier.service import create_model_client
from tests.fakes.llm import FakeLLM

CASES = Path(__file__).parent.parent / "fixtures" / "cases"

ClassifierFactory = Callable[..., Awaitable[Classifier]]


def case_alert(case: str, name: str = "inbound.json") -> alert_pb2.Alert:
    """Return the first alert of a case's webhook body."""
    body = json.loads((CASES / case / name).read_text())
    return parse_notification(body).alerts[0]


def case_completion(case: str) -> dict[str, Any]:
    """Return a case's chat completion response."""
    data: dict[str, Any] = json.loads((CASES / case / "llm.json").read_text())
    return data


def make_alert(
    labels: dict[str, str], annotations: dict[str, str] | None = None
) -> alert_pb2.Alert:
    alert = alert_pb2.Alert(status=alert_pb2.ALERT_STATUS_FIRING)
    alert.labels.update(labels)
    alert.annotations.update(annotations or {})
    alert.fingerprint = "00000000000000ff"
    return alert


def sample_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM() as llm:
        yield llm


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


# Settings every test classifier starts from: fast retries and a short
# circuit, so that failure tests run in milliseconds.
TEST_SETTINGS: dict[str, Any] = {
    "llm_model": "test-model",
    "llm_timeout_seconds": 5,
    "llm_retry_initial_seconds": 0.01,
    "llm_retry_max_seconds": 0.5,
}


@pytest.fixture
async def make_classifier(fake_llm: FakeLLM) -> AsyncIterator[ClassifierFactory]:
    """Build classifiers that ask `fake_llm`, closed after the test.

    Each gets a fresh metrics registry unless the test passes `registry=`.
    `max_pending`, `cache`, `context`, `flight` and `template` go to the
    Classifier; other keyword arguments are Settings fields.
    """
    built: list[Classifier] = []

    async def build(
        *,
        model: bool = True,
        registry: CollectorRegistry | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        cache: VerdictCache | None = None,
        context: ContextSource | None = None,
        flight: Flight | None = None,
        template: PromptTemplate | None = None,
        **overrides: Any,
    ) -> Classifier:
        values: dict[str, Any] = dict(TEST_SETTINGS)
        if model:
            values["llm_proxy_url"] = fake_llm.url
            values["llm_api_key"] = "test-key"
        values.update(overrides)
        settings = Settings.model_validate(values)
        metrics_registry = registry if registry is not None else CollectorRegistry()
        client = create_model_client(settings, LLMMetrics(metrics_registry))
        classifier = Classifier(
            settings,
            ClassifierMetrics(metrics_registry),
            cache or MemoryVerdictCache(settings.classification_cache_max_entries),
            client,
            max_pending=max_pending,
            context=context,
            flight=flight,
            template=template,
        )
        built.append(classifier)
        return classifier

    yield build
    for classifier in built:
        await classifier.close()


class StaticContext:
    """A ContextSource with fixed answers per fingerprint; records each lookup."""

    def __init__(self, contexts: dict[str, AlertContext] | None = None) -> None:
        self.contexts = dict(contexts or {})
        self.lookups: list[str] = []
        self.closed = False

    async def get(self, fingerprint: str, wait_seconds: float) -> AlertContext | None:
        self.lookups.append(fingerprint)
        return self.contexts.get(fingerprint)

    async def close(self) -> None:
        self.closed = True


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix unique to the test; its keys are deleted afterwards."""
    prefix = f"ah-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_client() -> AsyncIterator[redis.Redis]:
    client = redis.from_url(REDIS_URL)
    yield client
    await client.aclose()
