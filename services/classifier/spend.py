"""Limits on model requests and tokens per minute.

A window is one clock minute (UTC, aligned to the minute). A request may be
sent while the window has counted fewer than `max_calls` requests and fewer
than `max_tokens` tokens. Tokens are known only after a reply arrives, so the
request that crosses the token limit is still sent and the ones after it are
not. A refused request raises no error here: the caller falls back with
reason `spend_limit`.

`RedisSpendLimiter` counts across every replica sharing Redis and falls back
to its own in-process counts while Redis cannot be reached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as redis

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# Redis keys outlive their window so that a late token report still lands.
KEY_TTL_SECONDS = 2 * WINDOW_SECONDS
LOG_INTERVAL_SECONDS = 60.0

# KEYS: calls key, tokens key. ARGV: max calls ("" for none), max tokens
# ("" for none), key TTL. Returns 1 and counts the call when it is allowed.
_ACQUIRE_SCRIPT = """
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[2] ~= '' and tokens >= tonumber(ARGV[2]) then
  return 0
end
local calls = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[1] ~= '' and calls >= tonumber(ARGV[1]) then
  return 0
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class SpendLimiter(Protocol):
    """Decides whether one more model request fits this minute's limits."""

    async def try_acquire(self) -> bool: ...

    async def add_tokens(self, tokens: int) -> None: ...


class MemorySpendLimiter:
    """Per-process counts of requests and tokens in the current minute."""

    def __init__(
        self,
        max_calls: int | None,
        max_tokens: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self._clock = clock
        self._window = -1
        self._calls = 0
        self._tokens = 0

    async def try_acquire(self) -> bool:
        self._roll()
        if self.max_tokens is not None and self._tokens >= self.max_tokens:
            return False
        if self.max_calls is not None and self._calls >= self.max_calls:
            return False
        self._calls += 1
        return True

    async def add_tokens(self, tokens: int) -> None:
        self._roll()
        self._tokens += tokens

    def _roll(self) -> None:
        window = int(self._clock() // WINDOW_SECONDS)
        if window != self._window:
            self._window = window
            self._calls = 0
            self._tokens = 0


class RedisSpendLimiter:
    """Counts shared by every replica, under `{prefix}spend:{window}:*` keys."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        max_calls: int | None,
        max_tokens: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self._clock = clock
        self._fallback = MemorySpendLimiter(max_calls, max_tokens, clock)
        self._script = client.register_script(_ACQUIRE_SCRIPT)
        self._last_log = 0.0

    async def try_acquire(self) -> bool:
        calls_key, tokens_key = self._keys()
        try:
            allowed = await self._script(
                keys=[calls_key, tokens_key],
                args=[
                    _limit_arg(self.max_calls),
                    _limit_arg(self.max_tokens),
                    KEY_TTL_SECONDS,
                ],
            )
        except redis.RedisError as exc:
            self._log_error(exc)
            return await self._fallback.try_acquire()
        return bool(allowed)

    async def add_tokens(self, tokens: int) -> None:
        _, tokens_key = self._keys()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.incrby(tokens_key, tokens)
                pipe.expire(tokens_key, KEY_TTL_SECONDS)
                await pipe.execute()
        except redis.RedisError as exc:
            self._log_error(exc)
            await self._fallback.add_tokens(tokens)

    def _keys(self) -> tuple[str, str]:
        window = int(self._clock() // WINDOW_SECONDS)
        base = f"{self._prefix}spend:{window}"
        return f"{base}:calls", f"{base}:tokens"

    def _log_error(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL_SECONDS:
            return
        self._last_log = now
        logger.warning(
            "cannot count model spend in redis, counting in this process",
            extra={"error": repr(exc)},
        )


def _limit_arg(limit: int | None) -> str:
    return "" if limit is None else str(limit)
