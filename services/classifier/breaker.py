"""A circuit breaker in front of the model endpoint.

While the endpoint is down, every alert would otherwise wait for its own
connection error or timeout. After `failure_threshold` consecutive failed
attempts the circuit opens and requests fail at once with reason
`circuit_open`. After `open_seconds` one request is let through as a probe
(half-open): its success closes the circuit, its failure opens it again for
another `open_seconds`. Concurrent requests fail fast while the probe runs.

The state lives in one process; each classifier replica keeps its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import IntEnum

logger = logging.getLogger(__name__)


class CircuitState(IntEnum):
    """Circuit states, valued as the `alert_history_llm_circuit_state` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Counts consecutive failures and decides whether a request may be sent.

    A caller that got `True` from `acquire` must report the attempt with
    `record`: True for a healthy endpoint, False for a failure that counts,
    None for an attempt that proved neither, such as a cancelled one.
    """

    def __init__(
        self,
        failure_threshold: int,
        open_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        if on_change is not None:
            on_change(self._state)

    @property
    def state(self) -> CircuitState:
        return self._state

    def acquire(self) -> bool:
        """Return whether a request may be sent now."""
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.OPEN:
            if self._clock() < self._opened_at + self.open_seconds:
                return False
            self._set_state(CircuitState.HALF_OPEN)
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def record(self, healthy: bool | None) -> None:
        """Report the outcome of an attempt that `acquire` allowed."""
        if healthy is None:
            if self._state is CircuitState.HALF_OPEN:
                self._probe_in_flight = False
            return
        if healthy:
            self._failures = 0
            if self._state is CircuitState.HALF_OPEN:
                self._probe_in_flight = False
                self._set_state(CircuitState.CLOSED)
            return
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or (
            self._state is CircuitState.CLOSED
            and self._failures >= self.failure_threshold
        ):
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probe_in_flight = False
        self._set_state(CircuitState.OPEN)

    def _set_state(self, state: CircuitState) -> None:
        if state is self._state:
            return
        self._state = state
        log = logger.warning if state is CircuitState.OPEN else logger.info
        log(
            "model circuit changed state",
            extra={"state": state.name.lower(), "failures": self._failures},
        )
        if self._on_change is not None:
            self._on_change(state)
