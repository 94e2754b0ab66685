"""Try-locks that let one replica at a time run a job.

Each lock is taken without waiting: the context manager yields False when
another holder has it, and the caller skips the job. Three kinds exist:

- Redis: `SET key token NX PX ttl`, released only by the token's owner, so
  an expired lock taken over by another replica is never released by the
  first. The TTL bounds how long a dead holder blocks the others.
- PostgreSQL: a session advisory lock on a connection of its own, so that
  the job's transactions may come and go while the lock is held. The server
  releases it when that connection drops.
- In-process: a set of held names, for SQLite, which serves one machine.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError

from libs.errors import UnavailableError

logger = logging.getLogger(__name__)

# Deletes the key only while its value is still this owner's token.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

_HELD_LOCALLY: set[str] = set()


@asynccontextmanager
async def redis_lock(
    client: redis.Redis, key: str, ttl_seconds: float
) -> AsyncIterator[bool]:
    """Hold `key` in Redis for at most `ttl_seconds`; yield whether it was taken.

    Raises UnavailableError when Redis cannot be reached.
    """
    token = uuid.uuid4().hex
    try:
        acquired = bool(
            await client.set(key, token, nx=True, px=int(ttl_seconds * 1000))
        )
    except (RedisError, OSError) as exc:
        raise UnavailableError(f"cannot take the lock {key} in Redis: {exc}") from exc
    try:
        yield acquired
    finally:
        if acquired:
            await _release_redis(client, key, token)


async def _release_redis(client: redis.Redis, key: str, token: str) -> None:
    try:
        await client.eval(_RELEASE_SCRIPT, 1, key, token)  # type: ignore[misc]
    except (RedisError, OSError) as exc:
        # The lock expires by itself after its TTL.
        logger.warning(
            "releasing a Redis lock failed", extra={"target": key, "error": str(exc)}
        )


@asynccontextmanager
async def postgres_lock(database_url: str, name: str) -> AsyncIterator[bool]:
    """Hold a session advisory lock named `name`; yield whether it was taken.

    Raises UnavailableError when PostgreSQL cannot be reached.
    """
    try:
        conn = await asyncpg.connect(database_url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise UnavailableError(
            f"cannot connect to PostgreSQL to take the lock {name}: {exc}"
        ) from exc
    try:
        acquired = bool(
            await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", name)
        )
        try:
            yield acquired
        finally:
            if acquired and not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", name)
    finally:
        await conn.close()


@asynccontextmanager
async def local_lock(name: str) -> AsyncIterator[bool]:
    """Hold `name` in this process; yield whether it was taken."""
    if name in _HELD_LOCALLY:
        yield False
        return
    _HELD_LOCALLY.add(name)
    try:
        yield True
    finally:
        _HELD_LOCALLY.discard(name)


def try_lock(
    name: str,
    *,
    database_url: str,
    redis_client: redis.Redis | None = None,
    ttl_seconds: float = 600.0,
) -> AbstractAsyncContextManager[bool]:
    """Return the try-lock that fits the deployment, as an async context manager.

    Redis when a client is given, else a PostgreSQL advisory lock for a
    PostgreSQL database, else an in-process lock keyed by the database URL.
    """
    if redis_client is not None:
        return redis_lock(redis_client, f"alert-history:lock:{name}", ttl_seconds)
    if database_url.startswith(("postgresql:", "postgres:")):
        return postgres_lock(database_url, name)
    return local_lock(f"{database_url}#{name}")
