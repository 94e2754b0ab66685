"""Client for OpenAI-compatible and Azure OpenAI chat completions APIs.

`ChatModelClient.classify` sends the messages of one alert and returns a
`ModelVerdict`, or raises `ModelFailure` with a short reason code.

Every HTTP attempt first passes the circuit breaker (`circuit_open`) and the
spend limit (`spend_limit`). Transport failures are retried with tenacity:
connection errors, timeouts and the statuses 408, 409, 429 and 5xx, up to
`max_attempts` attempts with exponential backoff and full jitter, or the
server's `Retry-After` when it sends one. A Retry-After longer than
`retry_max_seconds` ends the retries. No other status is retried. No attempt
starts, and no wait ends, after the call's deadline.

A reply cut off by the token limit (`length`) or one that is not the
expected JSON (`invalid_json`, `invalid_schema`) gets one more request with
a corrective message appended. A refusal or a content filter ends the call.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from libs import telemetry
from libs.config import Settings
from services.classifier.breaker import CircuitBreaker, CircuitState
from services.classifier.prompt import CORRECTIONS, Messages
from services.classifier.reply import ModelFailure, ModelVerdict, parse_completion
from services.classifier.rules import Severity
from services.classifier.spend import SpendLimiter

logger = logging.getLogger(__name__)

OPERATION_CLASSIFY = "classify"
MAX_RESPONSE_BYTES = 1024 * 1024
# An attempt with less time than this left before the deadline is not started.
MIN_ATTEMPT_SECONDS = 0.05
RETRYABLE_STATUSES = frozenset({408, 409, 429})
RETRYABLE_REASONS = frozenset(CORRECTIONS)

StructuredOutput = Literal["json_schema", "json_object", "none"]

# Strict structured-output schema: OpenAI's strict mode requires every
# property to be listed in `required` and no additional properties.
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "severity": {"type": "string", "enum": [s.value for s in Severity]},
        "confidence": {"type": "number"},
        "reasoning": {"type": "string"},
        "recommendations": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["severity", "confidence", "reasoning", "recommendations"],
    "additionalProperties": False,
}


class TransportFailure(ModelFailure):
    """A failed HTTP attempt. `retryable` and `retry_after` steer the retries."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason, message)
        self.retryable = retryable
        self.retry_after = retry_after


class LLMMetrics:
    """Model request counts, latency, token use and circuit state."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "alert_history_llm_requests_total",
            "Model requests by outcome; status is ok or the failure reason "
            "code. circuit_open and spend_limit count requests never sent.",
            ["operation", "model", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "alert_history_llm_latency_seconds",
            "Time one HTTP attempt to the model took, failures included.",
            ["operation", "model"],
            registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
        )
        self.tokens = Counter(
            "alert_history_llm_tokens_total",
            "Tokens the model reported in usage.total_tokens.",
            ["operation", "model"],
            registry=registry,
        )
        self.circuit_state = Gauge(
            "alert_history_llm_circuit_state",
            "Circuit breaker state per model: 0 closed, 1 half-open, 2 open.",
            ["model"],
            registry=registry,
        )

    def breaker(
        self, model: str, failure_threshold: int, open_seconds: float
    ) -> CircuitBreaker:
        """Return a circuit breaker whose state this gauge reports."""

        def report(state: CircuitState) -> None:
            self.circuit_state.labels(model).set(int(state))

        return CircuitBreaker(failure_threshold, open_seconds, on_change=report)


@dataclass(frozen=True)
class Endpoint:
    """The address, credentials and request options of a chat completions API.

    With `provider` "azure" the model name is the deployment name, the API
    key goes in the `api-key` header and the URL carries `api-version`.
    """

    base_url: str
    api_key: SecretStr | None = None
    auth_token: SecretStr | None = None
    provider: Literal["openai", "azure"] = "openai"
    azure_api_version: str = "2024-10-21"
    timeout_seconds: float = 20.0
    structured_output: StructuredOutput = "json_object"
    max_attempts: int = 3
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 8.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoint:
        """Build from LLM_* settings; LLM_PROXY_URL must be set."""
        if settings.llm_proxy_url is None:
            raise ValueError("LLM_PROXY_URL is unset")
        return cls(
            base_url=settings.llm_proxy_url,
            api_key=settings.llm_api_key,
            auth_token=settings.llm_auth_token,
            provider=settings.llm_provider,
            azure_api_version=settings.llm_azure_api_version,
            timeout_seconds=settings.llm_timeout_seconds,
            structured_output=settings.llm_structured_output,
            max_attempts=settings.llm_max_attempts,
            retry_initial_seconds=settings.llm_retry_initial_seconds,
            retry_max_seconds=settings.llm_retry_max_seconds,
        )

    def url(self, model: str) -> str:
        if self.provider == "azure":
            return azure_url(self.base_url, model, self.azure_api_version)
        return completions_url(self.base_url)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key is not None:
            secret = self.api_key.get_secret_value()
            if self.provider == "azure":
                headers["api-key"] = secret
            else:
                headers["Authorization"] = f"Bearer {secret}"
        if self.auth_token is not None:
            headers["X-Auth-Token"] = self.auth_token.get_secret_value()
        return headers

    def body(self, model: str, messages: Messages) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": messages}
        if self.provider != "azure":
            body["model"] = model
        if self.structured_output == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "alert_classification",
                    "strict": True,
                    "schema": VERDICT_SCHEMA,
                },
            }
        elif self.structured_output == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body


def completions_url(base_url: str) -> str:
    """Return the chat completions URL for a base URL with or without /v1."""
    base = base_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return f"{base}/v1/chat/completions"


def azure_url(base_url: str, deployment: str, api_version: str) -> str:
    """Return the Azure OpenAI chat completions URL of a deployment."""
    base = base_url.rstrip("/")
    if base.endswith("/openai"):
        base = base[: -len("/openai")]
    return (
        f"{base}/openai/deployments/{quote(deployment, safe='')}/chat/completions"
        f"?api-version={quote(api_version, safe='')}"
    )


class ChatModelClient:
    """One model for one operation, behind a circuit breaker and a spend limit."""

    def __init__(
        self,
        endpoint: Endpoint,
        model: str,
        metrics: LLMMetrics,
        *,
        operation: str = OPERATION_CLASSIFY,
        breaker: CircuitBreaker | None = None,
        spend: SpendLimiter | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.metrics = metrics
        self.operation = operation
        self.breaker = breaker
        self.spend = spend
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.endpoint.url(self.model)

    async def classify(
        self, messages: Messages, deadline: float | None = None
    ) -> ModelVerdict:
        """Return the model's verdict, or raise ModelFailure.

        `deadline` is on the event loop's clock; without it the call may take
        `max_attempts` times the request timeout plus the waits.
        """
        try:
            return await self._complete(messages, deadline)
        except ModelFailure as failure:
            if failure.reason not in RETRYABLE_REASONS:
                raise
            first = failure
        logger.warning(
            "retrying model request with a correction", extra={"error": first.reason}
        )
        corrected = [*messages, {"role": "user", "content": CORRECTIONS[first.reason]}]
        try:
            verdict = await self._complete(corrected, deadline)
        except ModelFailure as second:
            second.tokens += first.tokens
            raise
        return replace(verdict, tokens=verdict.tokens + first.tokens)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _complete(
        self, messages: Messages, deadline: float | None
    ) -> ModelVerdict:
        """Run `_complete_with_retries` in a client span that ends with the
        request's status and tokens."""
        with telemetry.tracer().start_as_current_span(
            f"{self.operation} {self.model}",
            kind=SpanKind.CLIENT,
            attributes={"model": self.model, "operation": self.operation},
        ):
            return await self._complete_with_retries(messages, deadline)

    async def _complete_with_retries(
        self, messages: Messages, deadline: float | None
    ) -> ModelVerdict:
        """Send one request, retrying transport failures, and read the reply."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.endpoint.max_attempts)
            | _StopBeforeDeadline(deadline, self.endpoint.retry_max_seconds),
            wait=_RetryWait(
                self.endpoint.retry_initial_seconds, self.endpoint.retry_max_seconds
            ),
            retry=retry_if_exception(_is_retryable),
            before_sleep=_log_retry,
            reraise=True,
        )
        body: Any = None
        tokens = 0
        async for attempt in retrying:
            with attempt:
                body, tokens = await self._attempt(messages, deadline)
        try:
            verdict = parse_completion(body, self.model)
        except ModelFailure as failure:
            failure.tokens += tokens
            self._count(failure.reason)
            raise
        self._count("ok")
        return replace(verdict, tokens=tokens)

    async def _attempt(
        self, messages: Messages, deadline: float | None
    ) -> tuple[Any, int]:
        """Send one HTTP request; return the decoded body and its token count."""
        timeout = self._attempt_timeout(deadline)
        await self._admit()
        started = time.perf_counter()
        healthy: bool | None = None
        try:
            body = await self._post(messages, timeout)
            healthy = True
        except TransportFailure as failure:
            healthy = False if failure.retryable else None
            self._count(failure.reason)
            raise
        except ModelFailure as failure:
            healthy = True
            self._count(failure.reason)
            raise
        finally:
            if self.breaker is not None:
                self.breaker.record(healthy)
            self.metrics.latency.labels(self.operation, self.model).observe(
                time.perf_counter() - started
            )
        tokens = _total_tokens(body)
        telemetry.annotate_current_span(tokens=tokens)
        if tokens:
            self.metrics.tokens.labels(self.operation, self.model).inc(tokens)
            if self.spend is not None:
                await self.spend.add_tokens(tokens)
        return body, tokens

    def _attempt_timeout(self, deadline: float | None) -> float:
        timeout = self.endpoint.timeout_seconds
        if deadline is not None:
            timeout = min(timeout, deadline - asyncio.get_running_loop().time())
        if timeout < MIN_ATTEMPT_SECONDS:
            self._count("timeout")
            raise ModelFailure("timeout", "no time left for a model request")
        return timeout

    async def _admit(self) -> None:
        """Pass the circuit breaker and the spend limit, or raise ModelFailure."""
        if self.breaker is not None and not self.breaker.acquire():
            self._count("circuit_open")
            raise ModelFailure("circuit_open", "model circuit is open")
        if self.spend is not None and not await self.spend.try_acquire():
            if self.breaker is not None:
                self.breaker.record(None)
            self._count("spend_limit")
            raise ModelFailure("spend_limit", "model spend limit reached")

    async def _post(self, messages: Messages, seconds: float) -> Any:
        try:
            async with self._get_session().post(
                self.url,
                json=self.endpoint.body(self.model, messages),
                headers={**self.endpoint.headers(), **telemetry.inject_context()},
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raw = await _read_limited(response)
        except TimeoutError as exc:
            raise TransportFailure(
                "timeout", "model request timed out", retryable=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransportFailure(
                "connection_error",
                f"model request failed: {type(exc).__name__}",
                retryable=True,
            ) from exc
        if status != 200:
            raise TransportFailure(
                "http_error",
                f"model returned HTTP {status}",
                retryable=status in RETRYABLE_STATUSES or status >= 500,
                retry_after=retry_after,
            )
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ModelFailure(
                "invalid_response", "model response body is not JSON"
            ) from exc

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def _count(self, status: str) -> None:
        self.metrics.requests.labels(self.operation, self.model, status).inc()
        telemetry.annotate_current_span(status=status)


class _StopBeforeDeadline(stop_base):
    """Stop retrying when the wait is too long or ends past the deadline.

    A Retry-After longer than `max_wait` stops the retries: the request fails
    rather than ignoring what the server asked for.
    """

    def __init__(self, deadline: float | None, max_wait: float) -> None:
        self.deadline = deadline
        self.max_wait = max_wait

    def __call__(self, retry_state: RetryCallState) -> bool:
        if retry_state.upcoming_sleep > self.max_wait:
            return True
        if self.deadline is None:
            return False
        starts_at = asyncio.get_running_loop().time() + retry_state.upcoming_sleep
        return starts_at + MIN_ATTEMPT_SECONDS > self.deadline


class _RetryWait:
    """Wait the server's Retry-After when given, else backoff with full jitter.

    Backoff waits never exceed `maximum`; a longer Retry-After is returned
    as it is, and `_StopBeforeDeadline` then ends the retries.
    """

    def __init__(self, initial: float, maximum: float) -> None:
        self.maximum = maximum
        self.backoff = wait_random_exponential(multiplier=initial, max=maximum)

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, TransportFailure) and error.retry_after is not None:
            return error.retry_after
        return float(self.backoff(retry_state))


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, TransportFailure) and error.retryable


def _log_retry(retry_state: RetryCallState) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    logger.warning(
        "model request failed, retrying",
        extra={
            "error": getattr(error, "reason", repr(error)),
            "attempt": retry_state.attempt_number,
            "wait_seconds": round(retry_state.upcoming_sleep, 3),
        },
    )


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a Retry-After header requests (number or HTTP date)."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    if seconds != seconds:
        return None
    return max(0.0, seconds)


def _total_tokens(body: Any) -> int:
    usage = body.get("usage") if isinstance(body, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    if isinstance(total, int) and not isinstance(total, bool) and total > 0:
        return total
    return 0


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise ModelFailure(
                "invalid_response",
                f"model response is larger than {MAX_RESPONSE_BYTES} bytes",
            )
        chunks.append(chunk)
    return b"".join(chunks)
