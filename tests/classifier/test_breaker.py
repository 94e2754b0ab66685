"""Circuit breaker states: closed, open, half-open with one probe."""

from __future__ import annotations

from services.classifier.breaker import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _opened(clock: Clock, threshold: int = 2) -> CircuitBreaker:
    breaker = CircuitBreaker(threshold, 10, clock=clock)
    for _ in range(threshold):
        assert breaker.acquire()
        breaker.record(False)
    return breaker


def test_breaker_starts_closed() -> None:
    breaker = CircuitBreaker(3, 10)

    assert breaker.state is CircuitState.CLOSED
    assert breaker.acquire()


def test_breaker_opens_at_threshold() -> None:
    breaker = CircuitBreaker(3, 10)
    breaker.record(False)
    breaker.record(False)
    before = breaker.state

    breaker.record(False)

    assert before is CircuitState.CLOSED
    assert breaker.state is CircuitState.OPEN
    assert not breaker.acquire()


def test_breaker_success_resets_count() -> None:
    breaker = CircuitBreaker(2, 10)
    breaker.record(False)
    breaker.record(True)

    breaker.record(False)

    assert breaker.state is CircuitState.CLOSED


def test_breaker_neutral_keeps_count() -> None:
    breaker = CircuitBreaker(2, 10)
    breaker.record(False)
    breaker.record(None)

    breaker.record(False)

    assert breaker.state is CircuitState.OPEN


def test_breaker_half_open_after_wait() -> None:
    clock = Clock()
    breaker = _opened(clock)
    clock.now += 9.9
    assert not breaker.acquire()
    clock.now += 0.1

    assert breaker.acquire()
    assert breaker.state is CircuitState.HALF_OPEN


def test_breaker_single_probe() -> None:
    clock = Clock()
    breaker = _opened(clock)
    clock.now += 10
    assert breaker.acquire()

    assert not breaker.acquire()


def test_breaker_probe_success_closes() -> None:
    clock = Clock()
    breaker = _opened(clock)
    clock.now += 10
    breaker.acquire()

    breaker.record(True)

    assert breaker.state is CircuitState.CLOSED
    assert breaker.acquire()


def test_breaker_probe_failure_reopens() -> None:
    clock = Clock()
    breaker = _opened(clock)
    clock.now += 10
    breaker.acquire()

    breaker.record(False)

    assert breaker.state is CircuitState.OPEN
    assert not breaker.acquire()
    clock.now += 10
    assert breaker.acquire()


def test_breaker_cancelled_probe_frees_slot() -> None:
    clock = Clock()
    breaker = _opened(clock)
    clock.now += 10
    breaker.acquire()

    breaker.record(None)

    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.acquire()


def test_breaker_reports_changes() -> None:
    clock = Clock()
    states: list[CircuitState] = []
    breaker = CircuitBreaker(1, 10, clock=clock, on_change=states.append)
    breaker.record(False)
    clock.now += 10
    breaker.acquire()

    breaker.record(True)

    assert states == [
        CircuitState.CLOSED,
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.CLOSED,
    ]
