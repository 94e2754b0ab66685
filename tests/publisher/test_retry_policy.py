from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from libs.config import Settings
from services.publisher.delivery import (
    backoff_seconds,
    decide_outcome,
    describe_error,
    idempotency_key,
    minimum_retry_span,
    parse_retry_after,
)

NOW = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
DEFAULTS = Settings.model_validate({})


def waits(settings: Settings, jitter: float) -> list[float]:
    return [
        backoff_seconds(
            failures,
            settings.delivery_initial_backoff_seconds,
            settings.delivery_max_backoff_seconds,
            jitter,
        )
        for failures in range(1, settings.delivery_max_attempts)
    ]


def test_defaults_match_documented_values() -> None:
    assert DEFAULTS.delivery_max_attempts == 12
    assert DEFAULTS.delivery_initial_backoff_seconds == 5.0
    assert DEFAULTS.delivery_max_backoff_seconds == 300.0


def test_schedule_defaults_span_ten_minutes() -> None:
    assert sum(waits(DEFAULTS, 0.0)) >= 600


def test_minimum_retry_span_defaults() -> None:
    assert minimum_retry_span(12, 5.0, 300.0) == pytest.approx(907.5)


def test_schedule_lowest_waits() -> None:
    assert waits(DEFAULTS, 0.0) == [2.5, 5, 10, 20, 40, 80, 150, 150, 150, 150, 150]


def test_schedule_highest_waits_capped() -> None:
    assert max(waits(DEFAULTS, 0.999999)) <= 300.0


def test_schedule_grows_exponentially() -> None:
    assert waits(DEFAULTS, 0.5)[:4] == [3.75, 7.5, 15.0, 30.0]


def test_backoff_huge_failure_count() -> None:
    assert backoff_seconds(10_000, 5.0, 300.0, 0.0) == 150.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        (" 120 ", 120.0),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def decide(
    status: int | None,
    attempt: int = 1,
    retry_after: float | None = None,
    jitter: float = 0.0,
    settings: Settings = DEFAULTS,
) -> tuple[str, float, str | None]:
    outcome = decide_outcome(
        settings,
        attempt=attempt,
        status_code=status,
        error=None if status is not None else "ClientConnectorError: refused",
        retry_after=retry_after,
        now=NOW,
        jitter=jitter,
    )
    return outcome.state, (outcome.next_attempt_at - NOW).total_seconds(), outcome.error


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_decide_success(status: int) -> None:
    assert decide(status)[0] == "succeeded"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, None])
def test_decide_retryable(status: int | None) -> None:
    assert decide(status)[0] == "pending"


@pytest.mark.parametrize("status", [301, 302, 400, 401, 403, 404, 409, 410, 413, 422])
def test_decide_rejected(status: int) -> None:
    assert decide(status)[0] == "dead"


def test_decide_redirect_message() -> None:
    assert "redirect not followed" in (decide(302)[2] or "")


def test_decide_first_wait() -> None:
    assert decide(500, jitter=0.0)[1] == 2.5


def test_decide_retry_after_longer_than_backoff() -> None:
    assert decide(429, retry_after=60.0)[1] == 60.0


def test_decide_retry_after_shorter_than_backoff() -> None:
    assert decide(429, attempt=5, retry_after=1.0)[1] == 40.0


def test_decide_retry_after_bounded() -> None:
    assert decide(429, retry_after=86_400.0)[1] == 300.0


def test_decide_last_attempt_dead() -> None:
    state, _, error = decide(503, attempt=12)

    assert state == "dead"
    assert error == "gave up after 12 attempts: HTTP 503"


def test_decide_connection_error_text() -> None:
    assert decide(None)[2] == "ClientConnectorError: refused"


def test_idempotency_key_stable() -> None:
    assert idempotency_key("b1", "hook", 0) == idempotency_key("b1", "hook", 0)


def test_idempotency_key_per_target() -> None:
    assert idempotency_key("b1", "hook", 0) != idempotency_key("b1", "other", 0)


def test_describe_error_redacts_url() -> None:
    url = "https://user:pw@hooks.example.com/services/T0/B0?token=abc"
    error = ValueError(f"bad response from {url} (path /services/T0/B0, token=abc)")

    text = describe_error(error, url)

    assert "/services/T0/B0" not in text
    assert "token=abc" not in text
    assert "pw" not in text
