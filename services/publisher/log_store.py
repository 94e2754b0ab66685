"""The publishing log: reads of deliveries, dead-letter changes and statistics.

`store.DeliveryStore` owns the delivery queue (recording, leasing, storing
attempts). This module reads the same tables for operators and changes dead
letters: a retry puts a dead delivery back in the queue, and a discard
marks it so it is no longer listed as a dead letter. Neither deletes
anything, so every attempt stays in the log.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from libs.db import Connection, Database
from services.publisher.store import (
    DELIVERY_COLUMNS,
    DeliveryRecord,
    delivery_record,
)

# Attempt durations read per target for the latency percentiles.
MAX_LATENCY_SAMPLES = 10_000

ListState = Literal["pending", "succeeded", "dead", "discarded"]
RequeueStatus = Literal[
    "requeued", "pending", "not_found", "succeeded", "discarded", "resolved_since"
]
DiscardStatus = Literal["discarded", "already_discarded", "not_found", "not_dead"]

_STATE_CONDITIONS: dict[str, str] = {
    "pending": "state = 'pending'",
    "succeeded": "state = 'succeeded'",
    "dead": "state = 'dead' AND discarded_at IS NULL",
    "discarded": "state = 'dead' AND discarded_at IS NOT NULL",
}


@dataclass(frozen=True)
class CarriedAlert:
    """An alert state a delivery carries, as the log shows it."""

    fingerprint: str
    status: str


@dataclass(frozen=True)
class RequeueResult:
    """Result of a dead-letter retry, with the delivery that blocks it."""

    status: RequeueStatus
    blocking_delivery_id: int | None = None
    blocking_state: str | None = None


@dataclass
class TargetStats:
    """Counts and latency of one target over a time window."""

    target: str
    format: str = ""
    pending: int = 0
    succeeded: int = 0
    dead: int = 0
    discarded: int = 0
    retried: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    latency_mean_seconds: float = 0.0
    latency_p50_seconds: float = 0.0
    latency_p99_seconds: float = 0.0


class PublishingLog:
    """Reads and dead-letter changes over the publisher's tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def list_deliveries(
        self,
        *,
        target: str | None,
        state: ListState | None,
        limit: int,
        before_id: int | None,
    ) -> list[DeliveryRecord]:
        """Return deliveries newest first, with ids below `before_id` if set."""
        conditions = ["1 = 1"]
        args: list[object] = []
        if target:
            args.append(target)
            conditions.append(f"target = ${len(args)}")
        if state is not None:
            conditions.append(_STATE_CONDITIONS[state])
        if before_id is not None:
            args.append(before_id)
            conditions.append(f"id < ${len(args)}")
        args.append(limit)
        rows = await self.db.fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM publisher_deliveries"
            f" WHERE {' AND '.join(conditions)}"
            f" ORDER BY id DESC LIMIT ${len(args)}",
            *args,
        )
        return [delivery_record(row) for row in rows]

    async def carried_alerts(
        self, delivery_ids: Sequence[int]
    ) -> dict[int, list[CarriedAlert]]:
        """Return the alert states each delivery carries, by delivery id."""
        carried: dict[int, list[CarriedAlert]] = {
            delivery_id: [] for delivery_id in delivery_ids
        }
        if not delivery_ids:
            return carried
        placeholders = ", ".join(f"${i + 1}" for i in range(len(delivery_ids)))
        rows = await self.db.fetch(
            "SELECT delivery_id, fingerprint, status FROM publisher_delivery_alerts"
            f" WHERE delivery_id IN ({placeholders})"
            " ORDER BY delivery_id, fingerprint",
            *delivery_ids,
        )
        for row in rows:
            carried[int(row["delivery_id"])].append(
                CarriedAlert(row["fingerprint"], row["status"])
            )
        return carried

    async def requeue_dead(self, delivery_id: int, now: datetime) -> RequeueResult:
        """Put a dead letter back in the queue, due now, with a fresh attempt limit.

        A dead delivery carrying a trigger whose resolve to the same target
        is recorded in a delivery that is not pending is not requeued
        ("resolved_since"): sent alone, the trigger would open an incident
        that nothing resolves.
        """
        async with self.db.transaction() as conn:
            lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
            row = await conn.fetchrow(
                "SELECT state, discarded_at FROM publisher_deliveries"
                f" WHERE id = $1{lock}",
                delivery_id,
            )
            if row is None:
                return RequeueResult("not_found")
            if row["state"] != "dead":
                return RequeueResult(row["state"])
            if row["discarded_at"] is not None:
                return RequeueResult("discarded")
            blocking = await _later_resolve(conn, delivery_id)
            if blocking is not None:
                return RequeueResult("resolved_since", *blocking)
            await conn.execute(
                "UPDATE publisher_deliveries SET state = 'pending',"
                " attempt_offset = attempts, next_attempt_at = $2,"
                " completed_at = NULL, lease_owner = NULL,"
                " lease_expires_at = NULL, updated_at = $2"
                " WHERE id = $1 AND state = 'dead' AND discarded_at IS NULL",
                delivery_id,
                now,
            )
            return RequeueResult("requeued")

    async def discard_dead(self, delivery_id: int, now: datetime) -> DiscardStatus:
        """Mark a dead letter discarded; a second discard changes nothing."""
        async with self.db.transaction() as conn:
            changed = await conn.execute(
                "UPDATE publisher_deliveries SET discarded_at = $2, updated_at = $2"
                " WHERE id = $1 AND state = 'dead' AND discarded_at IS NULL",
                delivery_id,
                now,
            )
            if changed == 1:
                return "discarded"
            row = await conn.fetchrow(
                "SELECT state, discarded_at FROM publisher_deliveries WHERE id = $1",
                delivery_id,
            )
        if row is None:
            return "not_found"
        if row["discarded_at"] is not None:
            return "already_discarded"
        return "not_dead"

    async def stats(
        self, since: datetime, until: datetime, target: str | None
    ) -> dict[str, TargetStats]:
        """Return per-target statistics of [since, until).

        Delivery counts cover deliveries recorded in the window; attempt
        counts and latency cover attempts made in it. The percentiles use
        the latest MAX_LATENCY_SAMPLES attempts of each target.
        """
        found: dict[str, TargetStats] = {}
        await self._count_deliveries(found, since, until, target)
        await self._count_attempts(found, since, until, target)
        for stats in found.values():
            await self._latency(stats, since, until)
        return found

    async def _count_deliveries(
        self,
        found: dict[str, TargetStats],
        since: datetime,
        until: datetime,
        target: str | None,
    ) -> None:
        status = (
            "CASE WHEN state = 'dead' AND discarded_at IS NOT NULL"
            " THEN 'discarded' ELSE state END"
        )
        rows = await self.db.fetch(
            f"SELECT target, MIN(format) AS format, {status} AS status,"
            " COUNT(*) AS deliveries,"
            " SUM(CASE WHEN attempts > 1 THEN 1 ELSE 0 END) AS retried"
            " FROM publisher_deliveries"
            " WHERE created_at >= $1 AND created_at < $2"
            " AND ($3 = '' OR target = $3)"
            f" GROUP BY target, {status}",
            since,
            until,
            target or "",
        )
        for row in rows:
            stats = found.setdefault(row["target"], TargetStats(row["target"]))
            stats.format = row["format"]
            setattr(stats, row["status"], int(row["deliveries"]))
            stats.retried += int(row["retried"] or 0)

    async def _count_attempts(
        self,
        found: dict[str, TargetStats],
        since: datetime,
        until: datetime,
        target: str | None,
    ) -> None:
        rows = await self.db.fetch(
            "SELECT d.target, MIN(d.format) AS format, COUNT(*) AS attempts,"
            " SUM(CASE WHEN a.status_code BETWEEN 200 AND 299 THEN 0 ELSE 1 END)"
            " AS failed, AVG(a.duration_seconds) AS mean"
            " FROM publisher_delivery_attempts a"
            " JOIN publisher_deliveries d ON d.id = a.delivery_id"
            " WHERE a.attempted_at >= $1 AND a.attempted_at < $2"
            " AND ($3 = '' OR d.target = $3)"
            " GROUP BY d.target",
            since,
            until,
            target or "",
        )
        for row in rows:
            stats = found.setdefault(row["target"], TargetStats(row["target"]))
            stats.format = stats.format or row["format"]
            stats.attempts = int(row["attempts"])
            stats.failed_attempts = int(row["failed"] or 0)
            stats.latency_mean_seconds = float(row["mean"] or 0.0)

    async def _latency(
        self, stats: TargetStats, since: datetime, until: datetime
    ) -> None:
        if not stats.attempts:
            return
        rows = await self.db.fetch(
            "SELECT a.duration_seconds FROM publisher_delivery_attempts a"
            " JOIN publisher_deliveries d ON d.id = a.delivery_id"
            " WHERE a.attempted_at >= $1 AND a.attempted_at < $2 AND d.target = $3"
            " ORDER BY a.attempted_at DESC LIMIT $4",
            since,
            until,
            stats.target,
            MAX_LATENCY_SAMPLES,
        )
        samples = sorted(float(row["duration_seconds"]) for row in rows)
        stats.latency_p50_seconds = percentile(samples, 50)
        stats.latency_p99_seconds = percentile(samples, 99)


def percentile(sorted_values: Sequence[float], rank: float) -> float:
    """Return the nearest-rank percentile of ascending values; 0 when empty."""
    if not sorted_values:
        return 0.0
    index = max(math.ceil(rank / 100 * len(sorted_values)) - 1, 0)
    return sorted_values[min(index, len(sorted_values) - 1)]


async def _later_resolve(conn: Connection, delivery_id: int) -> tuple[int, str] | None:
    """Return a non-pending delivery of a resolve of this delivery's triggers."""
    row = await conn.fetchrow(
        "SELECT r.delivery_id, d.state FROM publisher_delivery_alerts f"
        " JOIN publisher_delivery_alerts r ON r.occurrence_key = f.occurrence_key"
        " AND r.target = f.target AND r.status = 'resolved'"
        " JOIN publisher_deliveries d ON d.id = r.delivery_id"
        " WHERE f.delivery_id = $1 AND f.status = 'firing'"
        " AND d.state <> 'pending'"
        " ORDER BY r.delivery_id LIMIT 1",
        delivery_id,
    )
    if row is None:
        return None
    return int(row["delivery_id"]), str(row["state"])
