"""Per-target request rate limits: a token bucket for each target."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Tokens refill at `rate` per second up to `burst`; a request takes one.

    The burst is max(1, rate), so a target limited to 0.5 per second gets one
    request every two seconds and a target limited to 10 per second may
    start 10 at once after a quiet spell.
    """

    def __init__(
        self, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()

    def available(self) -> int:
        """Return the whole tokens available now."""
        self._refill()
        return int(self._tokens)

    def take(self, count: int) -> None:
        """Spend `count` tokens; callers take at most what `available` returned."""
        self._refill()
        self._tokens -= count

    def seconds_until_available(self) -> float:
        """Return the seconds until one whole token is available."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
