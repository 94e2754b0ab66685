"""Fixtures for the classifier tests: case alerts, a fake model, classifiers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from alerthistory.alert.v1 import alert_pb2
from libs.alerts import parse_notification
from libs.config import Settings
from services.classifier.cache import MemoryVerdictCache
from services.classifier.classifier import (
    DEFAULT_MAX_PENDING,
    Classifier,
    ClassifierMetrics,
)
from services.classifier.llm import ChatModelClient, LLMMetrics
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


@pytest.fixture
async def make_classifier(fake_llm: FakeLLM) -> AsyncIterator[ClassifierFactory]:
    """Build classifiers that ask `fake_llm`, closed after the test.

    Each gets a fresh metrics registry unless the test passes `registry=`.
    Keyword arguments other than `model`, `registry` and `max_pending` are
    Settings fields.
    """
    built: list[Classifier] = []

    async def build(
        *,
        model: bool = True,
        registry: CollectorRegistry | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        **overrides: Any,
    ) -> Classifier:
        values: dict[str, Any] = {"llm_model": "test-model", "llm_timeout_seconds": 5}
        if model:
            values["llm_proxy_url"] = fake_llm.url
            values["llm_api_key"] = "test-key"
        values.update(overrides)
        settings = Settings.model_validate(values)
        metrics_registry = registry if registry is not None else CollectorRegistry()
        client = None
        if settings.llm_proxy_url:
            client = ChatModelClient(
                base_url=settings.llm_proxy_url,
                model=settings.llm_model,
                api_key=settings.llm_api_key,
                timeout_seconds=settings.llm_timeout_seconds,
                metrics=LLMMetrics(metrics_registry),
            )
        cache = MemoryVerdictCache(
            settings.classification_cache_ttl_seconds,
            settings.classification_cache_max_entries,
        )
        metrics = ClassifierMetrics(metrics_registry)
        classifier = Classifier(
            settings, metrics, cache, client, max_pending=max_pending
        )
        built.append(classifier)
        return classifier

    yield build
    for classifier in built:
        await classifier.close()
