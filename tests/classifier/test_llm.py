"""Model client: endpoints, request shape, retries, circuit, spend limit."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.classifier.breaker import CircuitBreaker, CircuitState
from services.classifier.llm import (
    VERDICT_SCHEMA,
    ChatModelClient,
    Endpoint,
    LLMMetrics,
    azure_url,
    completions_url,
    parse_retry_after,
)
from services.classifier.prompt import alert_payload, build_messages
from services.classifier.reply import ModelFailure
from services.classifier.rules import Severity
from services.classifier.spend import MemorySpendLimiter
from tests.classifier.conftest import case_completion, sample_value
from tests.fakes.llm import FakeLLM, completion

VERDICT = {"severity": "info", "confidence": 0.7, "reasoning": "Fine."}
MESSAGES = build_messages(
    alert_payload({"alertname": "TargetDown", "severity": "critical"}, {})
)

ClientFactory = Callable[..., ChatModelClient]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_client(
    registry: CollectorRegistry,
) -> AsyncIterator[ClientFactory]:
    """Build model clients with metrics in `registry`, closed after the test.

    Keyword arguments other than `breaker` and `spend` are Endpoint fields.
    """
    clients: list[ChatModelClient] = []
    metrics = LLMMetrics(registry)

    def build(
        base_url: str,
        *,
        breaker: CircuitBreaker | None = None,
        spend: MemorySpendLimiter | None = None,
        **fields: Any,
    ) -> ChatModelClient:
        values: dict[str, Any] = {
            "api_key": SecretStr("test-key"),
            "timeout_seconds": 5.0,
            "retry_initial_seconds": 0.01,
            "retry_max_seconds": 0.5,
            **fields,
        }
        endpoint = Endpoint(base_url=base_url, **values)
        client = ChatModelClient(
            endpoint, "test-model", metrics, breaker=breaker, spend=spend
        )
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()


def _requests(registry: CollectorRegistry, status: str) -> float:
    return sample_value(
        registry,
        "alert_history_llm_requests_total",
        operation="classify",
        model="test-model",
        status=status,
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _failure(client: ChatModelClient, deadline: float | None = None) -> Any:
    with pytest.raises(ModelFailure) as caught:
        await client.classify(MESSAGES, deadline)
    return caught.value


@pytest.mark.parametrize(
    "base",
    ["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"],
)
def test_completions_url_accepts_v1(base: str) -> None:
    assert completions_url(base) == "http://h:1/v1/chat/completions"


def test_completions_url_keeps_path_prefix() -> None:
    url = completions_url("https://proxy.example/openai/v1")

    assert url == "https://proxy.example/openai/v1/chat/completions"


@pytest.mark.parametrize(
    "base",
    [
        "https://res.openai.azure.com",
        "https://res.openai.azure.com/",
        "https://res.openai.azure.com/openai",
    ],
)
def test_azure_url_deployment_path(base: str) -> None:
    url = azure_url(base, "gpt-4o-prod", "2024-10-21")

    assert url == (
        "https://res.openai.azure.com/openai/deployments/gpt-4o-prod"
        "/chat/completions?api-version=2024-10-21"
    )


def test_azure_url_quotes_deployment() -> None:
    url = azure_url("https://r", "a/b?c", "v")

    assert "/deployments/a%2Fb%3Fc/" in url


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), ("0.5", 0.5), ("-2", 0.0), (None, None), ("soon", None)],
)
def test_parse_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_http_date() -> None:
    seconds = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")

    assert seconds == 0.0


async def test_client_request_shape(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    client = make_client(fake_llm.url)

    await client.classify(MESSAGES)

    request = fake_llm.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer test-key"
    assert "X-Auth-Token" not in request.headers
    assert request.body["model"] == "test-model"
    assert request.body["response_format"] == {"type": "json_object"}
    assert request.messages == MESSAGES


async def test_client_json_schema_shape(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    client = make_client(fake_llm.url, structured_output="json_schema")

    await client.classify(MESSAGES)

    response_format = fake_llm.requests[0].body["response_format"]
    schema = response_format["json_schema"]["schema"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True
    assert response_format["json_schema"]["name"] == "alert_classification"
    assert schema == VERDICT_SCHEMA
    assert set(schema["required"]) == set(schema["properties"])
    assert schema["additionalProperties"] is False
    assert schema["properties"]["severity"]["enum"] == [
        "critical",
        "warning",
        "info",
        "noise",
    ]


async def test_client_structured_output_none(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    client = make_client(fake_llm.url, structured_output="none")

    await client.classify(MESSAGES)

    assert "response_format" not in fake_llm.requests[0].body


async def test_client_auth_token_header(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    client = make_client(fake_llm.url, auth_token=SecretStr("proxy-token"))

    await client.classify(MESSAGES)

    headers = fake_llm.requests[0].headers
    assert headers["X-Auth-Token"] == "proxy-token"
    assert headers["Authorization"] == "Bearer test-key"


async def test_client_without_api_key(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    client = make_client(fake_llm.url, api_key=None)

    await client.classify(MESSAGES)

    assert "Authorization" not in fake_llm.requests[0].headers


async def test_client_azure_path_and_headers(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    client = make_client(
        fake_llm.url,
        provider="azure",
        azure_api_version="2024-10-21",
        auth_token=SecretStr("proxy-token"),
    )

    verdict = await client.classify(MESSAGES)

    request = fake_llm.requests[0]
    assert verdict.severity is Severity.WARNING
    assert request.path == "/openai/deployments/test-model/chat/completions"
    assert request.query == {"api-version": "2024-10-21"}
    assert request.headers["api-key"] == "test-key"
    assert "Authorization" not in request.headers
    assert request.headers["X-Auth-Token"] == "proxy-token"
    assert "model" not in request.body


async def test_client_base_url_with_v1(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    client = make_client(f"{fake_llm.url}/v1/")

    await client.classify(MESSAGES)

    assert fake_llm.requests[0].path == "/v1/chat/completions"


async def test_client_valid_verdict(
    fake_llm: FakeLLM, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    fake_llm.enqueue(case_completion("r03"))
    client = make_client(fake_llm.url)

    verdict = await client.classify(MESSAGES)

    assert verdict.severity is Severity.NOISE
    assert verdict.tokens == 912
    assert _requests(registry, "ok") == 1
    assert (
        sample_value(
            registry,
            "alert_history_llm_tokens_total",
            operation="classify",
            model="test-model",
        )
        == 912
    )


async def test_client_length_retries_once(
    fake_llm: FakeLLM, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    fake_llm.enqueue(case_completion("r17"))
    fake_llm.enqueue(case_completion("r17"))
    client = make_client(fake_llm.url)

    failure = await _failure(client)

    first, second = fake_llm.requests
    assert failure.reason == "length"
    assert failure.tokens == 2 * 912
    assert len(fake_llm.requests) == 2
    assert first.text != second.text
    assert second.messages[:2] == first.messages
    assert second.messages[2]["role"] == "user"
    assert _requests(registry, "length") == 2


async def test_client_invalid_json_then_valid(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(completion("not json at all", total_tokens=50))
    fake_llm.enqueue(completion(VERDICT, total_tokens=70))
    client = make_client(fake_llm.url)

    verdict = await client.classify(MESSAGES)

    assert verdict.severity is Severity.INFO
    assert verdict.tokens == 120
    assert len(fake_llm.requests) == 2
    assert "not a JSON object" in fake_llm.requests[1].messages[2]["content"]


async def test_client_invalid_schema_retries_once(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(completion({**VERDICT, "severity": "urgent"}))
    fake_llm.enqueue(completion({**VERDICT, "severity": "urgent"}))
    client = make_client(fake_llm.url)

    failure = await _failure(client)

    assert failure.reason == "invalid_schema"
    assert len(fake_llm.requests) == 2


async def test_client_refusal_no_retry(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(case_completion("r18"))
    client = make_client(fake_llm.url)

    failure = await _failure(client)

    assert failure.reason == "refusal"
    assert len(fake_llm.requests) == 1


async def test_client_content_filter_no_retry(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(completion(VERDICT, finish_reason="content_filter"))
    client = make_client(fake_llm.url)

    failure = await _failure(client)

    assert failure.reason == "content_filter"
    assert len(fake_llm.requests) == 1


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
async def test_client_retryable_status_then_success(
    fake_llm: FakeLLM, make_client: ClientFactory, status: int
) -> None:
    fake_llm.enqueue(status=status, body="try again")
    fake_llm.enqueue(status=status, body="try again")
    client = make_client(fake_llm.url)

    verdict = await client.classify(MESSAGES)

    assert verdict.severity is Severity.WARNING
    assert len(fake_llm.requests) == 3


async def test_client_retries_bounded(
    fake_llm: FakeLLM, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    for _ in range(5):
        fake_llm.enqueue(status=500, body="upstream failed")
    client = make_client(fake_llm.url, max_attempts=3)

    failure = await _failure(client)

    assert failure.reason == "http_error"
    assert len(fake_llm.requests) == 3
    assert _requests(registry, "http_error") == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_client_error_not_retried(
    fake_llm: FakeLLM, make_client: ClientFactory, status: int
) -> None:
    fake_llm.enqueue(status=status, body={"error": {"message": "bad request"}})
    client = make_client(fake_llm.url)

    failure = await _failure(client)

    assert failure.reason == "http_error"
    assert len(fake_llm.requests) == 1


async def test_client_retry_after_honoured(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(status=429, body="slow down", headers={"Retry-After": "0.3"})
    client = make_client(fake_llm.url, retry_initial_seconds=0.001)
    started = time.perf_counter()

    await client.classify(MESSAGES)

    assert time.perf_counter() - started >= 0.29
    assert len(fake_llm.requests) == 2


async def test_client_retry_after_too_long(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(status=429, body="slow down", headers={"Retry-After": "30"})
    client = make_client(fake_llm.url, retry_max_seconds=0.5)
    started = time.perf_counter()

    failure = await _failure(client)

    assert failure.reason == "http_error"
    assert len(fake_llm.requests) == 1
    assert time.perf_counter() - started < 1


async def test_client_retry_stops_at_deadline(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(status=503, body="busy", headers={"Retry-After": "0.4"})
    client = make_client(fake_llm.url)
    deadline = asyncio.get_running_loop().time() + 0.2
    started = time.perf_counter()

    failure = await _failure(client, deadline)

    assert failure.reason == "http_error"
    assert len(fake_llm.requests) == 1
    assert time.perf_counter() - started < 0.2


async def test_client_no_request_after_deadline(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    client = make_client(fake_llm.url)
    deadline = asyncio.get_running_loop().time() - 1

    failure = await _failure(client, deadline)

    assert failure.reason == "timeout"
    assert fake_llm.requests == []


async def test_client_deadline_cuts_attempt(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(delay=3)
    client = make_client(fake_llm.url, timeout_seconds=5)
    deadline = asyncio.get_running_loop().time() + 0.3
    started = time.perf_counter()

    failure = await _failure(client, deadline)

    assert failure.reason == "timeout"
    assert time.perf_counter() - started < 1.5


async def test_client_body_not_json(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(status=200, body="<html>gateway</html>")
    client = make_client(fake_llm.url)

    failure = await _failure(client)

    assert failure.reason == "invalid_response"
    assert len(fake_llm.requests) == 1


async def test_client_connection_refused(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(f"http://127.0.0.1:{_closed_port()}")

    failure = await _failure(client)

    assert failure.reason == "connection_error"
    assert _requests(registry, "connection_error") == 3


async def test_client_timeout(fake_llm: FakeLLM, make_client: ClientFactory) -> None:
    fake_llm.enqueue(delay=2)
    client = make_client(fake_llm.url, timeout_seconds=0.2, max_attempts=1)

    failure = await _failure(client)

    assert failure.reason == "timeout"


async def test_client_timeout_retried(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(delay=2)
    client = make_client(fake_llm.url, timeout_seconds=0.2, max_attempts=2)

    verdict = await client.classify(MESSAGES)

    assert verdict.severity is Severity.WARNING
    assert len(fake_llm.requests) == 2


async def test_circuit_opens_after_failures(
    fake_llm: FakeLLM, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    fake_llm.default_status = 500
    breaker = LLMMetrics(CollectorRegistry()).breaker("test-model", 3, 60)
    client = make_client(fake_llm.url, breaker=breaker, max_attempts=1)
    for _ in range(3):
        await _failure(client)

    failure = await _failure(client)

    assert failure.reason == "circuit_open"
    assert len(fake_llm.requests) == 3
    assert breaker.state is CircuitState.OPEN
    assert _requests(registry, "circuit_open") == 1


async def test_circuit_stops_retries(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.default_status = 503
    breaker = CircuitBreaker(2, 60)
    client = make_client(fake_llm.url, breaker=breaker, max_attempts=5)

    failure = await _failure(client)

    assert failure.reason == "circuit_open"
    assert len(fake_llm.requests) == 2


async def test_circuit_gauge(fake_llm: FakeLLM, make_client: ClientFactory) -> None:
    fake_llm.default_status = 500
    registry = CollectorRegistry()
    breaker = LLMMetrics(registry).breaker("test-model", 1, 60)
    client = make_client(fake_llm.url, breaker=breaker, max_attempts=1)
    closed = sample_value(
        registry, "alert_history_llm_circuit_state", model="test-model"
    )

    await _failure(client)

    state = sample_value(
        registry, "alert_history_llm_circuit_state", model="test-model"
    )
    assert closed == 0
    assert state == 2


async def test_circuit_half_open_probe_closes(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.default_status = 500
    clock = Clock()
    breaker = CircuitBreaker(2, 30, clock=clock)
    client = make_client(fake_llm.url, breaker=breaker, max_attempts=1)
    await _failure(client)
    await _failure(client)
    assert (await _failure(client)).reason == "circuit_open"
    fake_llm.default_status = None
    clock.now += 30

    verdict = await client.classify(MESSAGES)

    assert verdict.severity is Severity.WARNING
    assert breaker.state is CircuitState.CLOSED
    assert len(fake_llm.requests) == 3


async def test_circuit_half_open_probe_fails(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.default_status = 500
    clock = Clock()
    breaker = CircuitBreaker(2, 30, clock=clock)
    client = make_client(fake_llm.url, breaker=breaker, max_attempts=3)
    await _failure(client)
    clock.now += 30

    probe = await _failure(client)
    after = await _failure(client)

    assert probe.reason == "circuit_open"
    assert after.reason == "circuit_open"
    assert len(fake_llm.requests) == 3
    assert breaker.state is CircuitState.OPEN


async def test_circuit_one_probe_at_a_time(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 30, clock=clock)
    breaker.record(False)
    clock.now += 30
    fake_llm.enqueue(delay=0.3)
    client = make_client(fake_llm.url, breaker=breaker)

    probe = asyncio.create_task(client.classify(MESSAGES))
    await asyncio.sleep(0.1)
    concurrent = await _failure(client)
    verdict = await probe

    assert concurrent.reason == "circuit_open"
    assert verdict.severity is Severity.WARNING
    assert len(fake_llm.requests) == 1
    assert breaker.state is CircuitState.CLOSED


async def test_circuit_ignores_client_errors(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.default_status = 400
    breaker = CircuitBreaker(2, 60)
    client = make_client(fake_llm.url, breaker=breaker)

    for _ in range(3):
        await _failure(client)

    assert breaker.state is CircuitState.CLOSED
    assert len(fake_llm.requests) == 3


async def test_spend_limit_calls(
    fake_llm: FakeLLM, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(fake_llm.url, spend=MemorySpendLimiter(2, None))
    await client.classify(MESSAGES)
    await client.classify(MESSAGES)

    failure = await _failure(client)

    assert failure.reason == "spend_limit"
    assert len(fake_llm.requests) == 2
    assert _requests(registry, "spend_limit") == 1


async def test_spend_limit_tokens(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(completion(VERDICT, total_tokens=600))
    fake_llm.enqueue(completion(VERDICT, total_tokens=600))
    client = make_client(fake_llm.url, spend=MemorySpendLimiter(None, 1000))
    await client.classify(MESSAGES)
    await client.classify(MESSAGES)

    failure = await _failure(client)

    assert failure.reason == "spend_limit"
    assert len(fake_llm.requests) == 2


async def test_spend_limit_counts_retries(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    fake_llm.enqueue(status=500, body="upstream failed")
    client = make_client(fake_llm.url, spend=MemorySpendLimiter(1, None))

    failure = await _failure(client)

    assert failure.reason == "spend_limit"
    assert len(fake_llm.requests) == 1


async def test_spend_limit_releases_probe(
    fake_llm: FakeLLM, make_client: ClientFactory
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 30, clock=clock)
    breaker.record(False)
    clock.now += 30
    client = make_client(
        fake_llm.url, breaker=breaker, spend=MemorySpendLimiter(0, None)
    )

    failure = await _failure(client)

    assert failure.reason == "spend_limit"
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.acquire()
    assert fake_llm.requests == []
