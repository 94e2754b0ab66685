"""One model call per cache key across replicas that share Redis.

Within one process the classifier already shares a model call between
concurrent requests for the same key. `RedisFlight` extends that to every
replica using the same Redis and key prefix:

1. The replica that sets `{prefix}lock:{key}` with `SET NX PX` makes the
   call. Its call stores the verdict in the cache before the lock is
   deleted. On failure it writes `{prefix}failed:{key}`, naming its lock
   token and the reason, for a few seconds.
2. The others poll, 20 ms at first and then up to every 200 ms, for the
   cached verdict, a failure of the lock holder they waited on, or the
   lock's disappearance. A lock that disappears with neither result (its
   holder died, and the lock expired) lets the next poller take the lock and
   make the call.

The lock expires one second after the call's deadline, so a dead holder
blocks the key for at most that long. Without Redis, or while Redis fails,
each replica makes its own call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as redis

from services.classifier.cache import RedisVerdictCache, decode_verdict
from services.classifier.reply import ModelFailure, ModelVerdict

logger = logging.getLogger(__name__)

LOCK_MARGIN_SECONDS = 1.0
FAILURE_MARK_MILLISECONDS = 5000
POLL_INITIAL_SECONDS = 0.02
POLL_MAX_SECONDS = 0.2
LOG_INTERVAL_SECONDS = 60.0

# Delete the lock only while it still holds this caller's token.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

ModelCall = Callable[[], Awaitable[ModelVerdict]]


class Flight(Protocol):
    """Shares the model call for a cache key with peer replicas.

    While the coordination works, one peer makes the call and the others
    receive its outcome; see the module docstring for the exceptions.
    """

    async def run(self, key: str, call: ModelCall, deadline: float) -> ModelVerdict:
        """Return the verdict of `call` or of a peer's call; raise ModelFailure."""


class RedisFlight:
    """A Redis lock per cache key; waiters poll for the holder's result."""

    def __init__(self, client: redis.Redis, cache: RedisVerdictCache) -> None:
        self._client = client
        self._cache = cache
        self._prefix = cache.prefix
        self._release = client.register_script(_RELEASE_SCRIPT)
        self._last_log = 0.0

    async def run(self, key: str, call: ModelCall, deadline: float) -> ModelVerdict:
        loop = asyncio.get_running_loop()
        while True:
            token = uuid.uuid4().hex
            try:
                acquired = await self._acquire(key, token, deadline)
            except redis.RedisError as exc:
                self._log_error(exc)
                return await call()
            if acquired:
                return await self._lead(key, token, call)

            try:
                verdict = await self._follow(key, deadline)
            except redis.RedisError as exc:
                self._log_error(exc)
                return await call()
            if verdict is not None:
                return verdict
            if loop.time() >= deadline:
                raise ModelFailure("timeout", "model call did not finish in time")

    async def _acquire(self, key: str, token: str, deadline: float) -> bool:
        remaining = deadline - asyncio.get_running_loop().time()
        milliseconds = max(1, int((remaining + LOCK_MARGIN_SECONDS) * 1000))
        acquired = await self._client.set(
            self._lock_key(key), token, nx=True, px=milliseconds
        )
        return bool(acquired)

    async def _lead(self, key: str, token: str, call: ModelCall) -> ModelVerdict:
        try:
            return await call()
        except ModelFailure as failure:
            await self._mark_failed(key, token, failure)
            raise
        finally:
            await self._unlock(key, token)

    async def _follow(self, key: str, deadline: float) -> ModelVerdict | None:
        """Wait for the lock holder's result.

        Returns the verdict, raises the holder's ModelFailure, or returns None
        when the lock disappeared without a result.
        """
        loop = asyncio.get_running_loop()
        holder = _text(await self._client.get(self._lock_key(key)))
        interval = POLL_INITIAL_SECONDS
        while True:
            raw_verdict, raw_failure, raw_lock = await self._client.mget(
                self._cache.redis_key(key), self._failed_key(key), self._lock_key(key)
            )
            if raw_verdict is not None:
                verdict = decode_verdict(raw_verdict)
                if verdict is not None:
                    return verdict
            failure = _decode_failure(raw_failure)
            if failure is not None and holder is not None and failure[0] == holder:
                raise failure[1]
            current = _text(raw_lock)
            if current is None:
                return None
            holder = current
            if loop.time() + interval > deadline:
                raise ModelFailure(
                    "timeout", "a peer's model call did not finish in time"
                )
            await asyncio.sleep(interval)
            interval = min(interval * 2, POLL_MAX_SECONDS)

    async def _mark_failed(self, key: str, token: str, failure: ModelFailure) -> None:
        mark = json.dumps(
            {"token": token, "reason": failure.reason, "refusal": failure.refusal}
        )
        try:
            await self._client.set(
                self._failed_key(key), mark, px=FAILURE_MARK_MILLISECONDS
            )
        except redis.RedisError as exc:
            self._log_error(exc)

    async def _unlock(self, key: str, token: str) -> None:
        try:
            await self._release(keys=[self._lock_key(key)], args=[token])
        except redis.RedisError as exc:
            self._log_error(exc)

    def _lock_key(self, key: str) -> str:
        return f"{self._prefix}lock:{key}"

    def _failed_key(self, key: str) -> str:
        return f"{self._prefix}failed:{key}"

    def _log_error(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL_SECONDS:
            return
        self._last_log = now
        logger.warning(
            "cannot coordinate model calls through redis, calling directly",
            extra={"error": repr(exc)},
        )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _decode_failure(raw: Any) -> tuple[str, ModelFailure] | None:
    text = _text(raw)
    if text is None:
        return None
    try:
        data = json.loads(text)
        token, reason = str(data["token"]), str(data["reason"])[:64]
        refusal = str(data.get("refusal", ""))
    except (ValueError, KeyError, TypeError):
        return None
    failure = ModelFailure(reason, "a peer's model call failed", refusal)
    return token, failure
