"""Cache of model verdicts, keyed by what decides a verdict.

`VerdictCache` is the interface the classifier uses. `MemoryVerdictCache` is
an in-process LRU; `RedisVerdictCache` shares verdicts between replicas and
stores `ModelVerdict.to_json()` under `{prefix}verdict:{key}`. Every entry
expires after the TTL given when it was set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import redis.asyncio as redis

from libs.coalesce import Coalescer
from services.classifier.reply import ModelVerdict

logger = logging.getLogger(__name__)

KEY_VERSION = "v1"
LOG_INTERVAL_SECONDS = 60.0
# Lookups that arrive while others are in flight are read with one MGET of
# at most this many keys, with at most LOOKUP_CONCURRENCY MGETs at once.
KEYS_PER_MGET = 256
LOOKUP_CONCURRENCY = 2

# Labels that differ between replicas or restarts of the same alert without
# changing what it means: Prometheus HA replica labels and per-process ids.
VOLATILE_LABELS = frozenset(
    {
        "prometheus_replica",
        "replica",
        "__replica__",
        "instance",
        "pod",
        "pod_ip",
        "pod_uid",
        "uid",
        "container_id",
        "pod_template_hash",
        "controller_revision_hash",
    }
)

# Hex strings of 8 or more characters with at least one digit (ids, hashes),
# then any run of digits.
_HEX_ID = re.compile(r"\b(?=[0-9a-f]*[0-9])[0-9a-f]{8,}\b", re.IGNORECASE)
_DIGITS = re.compile(r"[0-9]+")


class VerdictCache(Protocol):
    """Store of model verdicts shared between requests."""

    async def get(self, key: str) -> ModelVerdict | None: ...

    async def set(self, key: str, verdict: ModelVerdict, ttl_seconds: float) -> None:
        """Store `verdict` for `ttl_seconds`; a TTL of 0 or less stores nothing."""

    async def close(self) -> None: ...


def cache_key(
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    model: str,
    prompt: str = "",
) -> str:
    """Return the cache key of an alert's verdict from `model`.

    The key is "v1:" and the SHA-256 of a JSON document with the model name,
    the prompt's version (`prompt.prompt_version`), the alertname, every label
    except `VOLATILE_LABELS`, and every annotation with hex ids and digit runs
    replaced by "#". Values that change between repeat notifications, such as
    "CPU at 93%", therefore keep the key.
    """
    document = {
        "model": model,
        "prompt": prompt,
        "alertname": labels.get("alertname", ""),
        "labels": sorted(
            (name, value)
            for name, value in labels.items()
            if name not in VOLATILE_LABELS
        ),
        "annotations": sorted(
            (name, normalize_annotation(value)) for name, value in annotations.items()
        ),
    }
    encoded = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()
    return f"{KEY_VERSION}:{digest}"


def normalize_annotation(value: str) -> str:
    """Replace hex ids and digit runs with "#", as the cache key uses them."""
    return _DIGITS.sub("#", _HEX_ID.sub("#", value))


class MemoryVerdictCache:
    """In-process LRU cache of at most `max_entries` verdicts."""

    def __init__(
        self,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ModelVerdict]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> ModelVerdict | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, verdict = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return verdict

    async def set(self, key: str, verdict: ModelVerdict, ttl_seconds: float) -> None:
        if ttl_seconds <= 0:
            return
        self._entries[key] = (self._clock() + ttl_seconds, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()


class RedisVerdictCache:
    """Verdicts shared by every replica that uses the same Redis and prefix.

    While Redis fails, lookups miss and stores are skipped, with a warning at
    most once a minute. An entry that does not decode is a miss too.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._last_log = 0.0
        # A batch of alerts looks up all its keys at once, so one round trip
        # serves them instead of one each. A failed MGET fails every lookup in
        # it, because trying each key alone against a failing Redis only
        # multiplies the timeouts. Lookups whose caller gave up are skipped.
        self._lookups: Coalescer[str, bytes | str | None] = Coalescer(
            self._read,
            max_batch=KEYS_PER_MGET,
            concurrency=LOOKUP_CONCURRENCY,
            retry_alone=False,
            drop_abandoned=True,
        )

    def redis_key(self, key: str) -> str:
        return f"{self.prefix}verdict:{key}"

    async def get(self, key: str) -> ModelVerdict | None:
        try:
            raw = await self._lookups.submit(key)
        except redis.RedisError as exc:
            self._log_error(exc)
            return None
        if raw is None:
            return None
        return decode_verdict(raw)

    async def set(self, key: str, verdict: ModelVerdict, ttl_seconds: float) -> None:
        milliseconds = int(ttl_seconds * 1000)
        if milliseconds <= 0:
            return
        try:
            await self.client.set(
                self.redis_key(key), verdict.to_json(), px=milliseconds
            )
        except redis.RedisError as exc:
            self._log_error(exc)

    async def close(self) -> None:
        """Leave the client open for its owner, whose close ends any lookup
        still waiting for Redis."""

    async def _read(self, keys: Sequence[str]) -> list[bytes | str | None]:
        values = await self.client.mget([self.redis_key(key) for key in keys])
        return list(values)

    def _log_error(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL_SECONDS:
            return
        self._last_log = now
        logger.warning("cannot use the redis verdict cache", extra={"error": repr(exc)})


def decode_verdict(raw: str | bytes) -> ModelVerdict | None:
    """Decode a stored verdict, or return None (and log) when it is malformed."""
    try:
        return ModelVerdict.from_json(raw)
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning(
            "ignoring a malformed cached verdict", extra={"error": repr(exc)}
        )
        return None
