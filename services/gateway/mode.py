"""The enrichment mode, shared by every gateway replica through Redis.

With REDIS_URL set the key `enrichment:mode` stores the mode for all
replicas. Without Redis each gateway keeps it in memory. Until someone sets
it, the mode is ENRICHMENT_MODE.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import redis.asyncio as redis

from libs.errors import InvalidInputError, UnavailableError

logger = logging.getLogger(__name__)

REDIS_KEY = "enrichment:mode"
MODES = ("transparent", "enriched")
Mode = Literal["transparent", "enriched"]
Source = Literal["redis", "memory", "default"]

# How long a replica trusts its last read of the Redis key, in seconds. It
# bounds both the Redis load per webhook and how long a change takes to reach
# every replica.
CACHE_SECONDS = 1.0


class ModeStore:
    """Reads and sets the enrichment mode."""

    def __init__(self, default: Mode, client: redis.Redis | None = None) -> None:
        self.default: Mode = default
        self._client = client
        self._memory: Mode | None = None
        self._cached: tuple[float, Mode, Source] | None = None

    async def get(self) -> tuple[Mode, Source]:
        """Return the mode and where it came from."""
        if self._client is None:
            if self._memory is not None:
                return self._memory, "memory"
            return self.default, "default"

        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_SECONDS:
            return self._cached[1], self._cached[2]
        try:
            raw = await self._client.get(REDIS_KEY)
        except redis.RedisError as exc:
            logger.warning(
                "cannot read enrichment mode from redis", extra={"error": str(exc)}
            )
            return self.default, "default"
        value = raw.decode() if isinstance(raw, bytes) else raw
        result: tuple[Mode, Source] = (self.default, "default")
        if value == "transparent":
            result = ("transparent", "redis")
        elif value == "enriched":
            result = ("enriched", "redis")
        self._cached = (now, result[0], result[1])
        return result

    async def set(self, mode: str) -> tuple[Mode, Source]:
        """Set the mode for every replica; raise InvalidInputError for others."""
        if mode not in MODES:
            raise InvalidInputError(
                f"mode must be one of {', '.join(MODES)}, not {mode[:40]!r}"
            )
        checked: Mode = "transparent" if mode == "transparent" else "enriched"
        if self._client is None:
            self._memory = checked
            return checked, "memory"
        try:
            await self._client.set(REDIS_KEY, checked)
        except redis.RedisError as exc:
            raise UnavailableError(f"cannot store the mode in redis: {exc}") from exc
        self._cached = (time.monotonic(), checked, "redis")
        return checked, "redis"
