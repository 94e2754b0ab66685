"""Cache of model verdicts, keyed by what decides a verdict.

`VerdictCache` is the interface the classifier uses; `MemoryVerdictCache` is
an in-process LRU with a TTL. A cache shared across replicas (Redis) can
implement the same three methods and store `ModelVerdict.to_json()`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Protocol

from services.classifier.llm import ModelVerdict

KEY_VERSION = "v1"

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

    async def set(self, key: str, verdict: ModelVerdict) -> None: ...

    async def close(self) -> None: ...


def cache_key(
    labels: Mapping[str, str], annotations: Mapping[str, str], model: str
) -> str:
    """Return the cache key of an alert's verdict from `model`.

    The key is "v1:" and the SHA-256 of a JSON document with the model name,
    the alertname, every label except `VOLATILE_LABELS`, and every annotation
    with hex ids and digit runs replaced by "#". Values that change between
    repeat notifications, such as "CPU at 93%", therefore keep the key.
    """
    document = {
        "model": model,
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
    """In-process LRU cache whose entries expire `ttl_seconds` after being set.

    A TTL of 0 disables it: `set` stores nothing.
    """

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
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

    async def set(self, key: str, verdict: ModelVerdict) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()
