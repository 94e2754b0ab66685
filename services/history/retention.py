"""Deletes history older than the retention window, in small batches.

An occurrence is deleted, with its state changes and their
classifications, once it started and was last seen before the cutoff. A
work item is deleted once it was completed before the cutoff, and a
notification once it was received before the cutoff and no state change or
work item refers to it any more. A work item never completed is kept, but
once its occurrences are deleted it carries no alerts.

Each batch is one short transaction of at most `batch_size` rows of one
table, followed by a pause, so ingestion is never blocked for long. On
PostgreSQL, rows that a concurrent notification holds are skipped and
deleted by a later run. One replica runs at a time (`libs.locks`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter

from libs.db import Database
from libs.locks import try_lock
from services.history.queries import id_in

logger = logging.getLogger(__name__)

LOCK_NAME = "alert-history-retention"
TABLES = (
    "occurrences",
    "state_changes",
    "classifications",
    "work_items",
    "notifications",
)
# Delay before the first run after start, when the interval is longer.
FIRST_RUN_DELAY_SECONDS = 300.0


class RetentionMetrics:
    """Rows deleted by retention and the outcome of each run."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deleted = Counter(
            "alert_history_retention_deleted_total",
            "Rows deleted by history retention, by table.",
            ["table"],
            registry=registry,
        )
        self.runs = Counter(
            "alert_history_retention_runs_total",
            "Retention runs by outcome: completed, skipped (another replica "
            "held the lock) or failed.",
            ["outcome"],
            registry=registry,
        )
        for table in TABLES:
            self.deleted.labels(table)
        for outcome in ("completed", "skipped", "failed"):
            self.runs.labels(outcome)


@dataclass
class RetentionResult:
    """Rows one run deleted, by table; `skipped` when another replica ran."""

    skipped: bool = False
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Retention:
    """Deletes history older than `days` days; 0 days keeps everything."""

    def __init__(
        self,
        db: Database,
        *,
        days: int,
        batch_size: int = 5000,
        pause_seconds: float = 0.1,
        metrics: RetentionMetrics | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.db = db
        self.days = days
        self.batch_size = batch_size
        self.pause_seconds = pause_seconds
        self.metrics = metrics
        self._clock = clock

    async def run_once(self) -> RetentionResult:
        """Delete everything older than the window, unless another replica is."""
        result = RetentionResult()
        if self.days == 0:
            return result
        cutoff = self._clock() - timedelta(days=self.days)
        async with try_lock(LOCK_NAME, database_url=self.db.url) as acquired:
            if not acquired:
                result.skipped = True
                self._count_run("skipped")
                logger.info("retention skipped: another replica holds the lock")
                return result
            await self._delete_occurrences(cutoff, result)
            await self._delete_batches(
                "work_items", self._work_items_sql(), cutoff, result
            )
            await self._delete_batches(
                "notifications", self._notifications_sql(), cutoff, result
            )
        self._count_run("completed")
        logger.info(
            "retention run completed",
            extra={"cutoff": cutoff.isoformat(), "deleted": result.deleted},
        )
        return result

    def _count_run(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.runs.labels(outcome).inc()

    def _count(self, result: RetentionResult, table: str, rows: int) -> None:
        result.deleted[table] += rows
        if self.metrics is not None and rows:
            self.metrics.deleted.labels(table).inc(rows)

    async def _delete_occurrences(
        self, cutoff: datetime, result: RetentionResult
    ) -> None:
        while True:
            deleted = await self._delete_occurrence_batch(cutoff, result)
            if deleted < self.batch_size:
                return
            await asyncio.sleep(self.pause_seconds)

    async def _delete_occurrence_batch(
        self, cutoff: datetime, result: RetentionResult
    ) -> int:
        dialect = self.db.dialect
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT id FROM occurrences"
                " WHERE starts_at < $1 AND last_seen_at < $1"
                f" ORDER BY starts_at LIMIT $2{self.db.skip_locked}",
                cutoff,
                self.batch_size,
            )
            ids = [row["id"] for row in rows]
            if not ids:
                return 0
            classifications = await conn.execute(
                "DELETE FROM classifications WHERE state_change_id IN"
                " (SELECT id FROM state_changes"
                f" WHERE {id_in(dialect, 'occurrence_id', 1)})",
                ids,
            )
            changes = await conn.execute(
                f"DELETE FROM state_changes WHERE {id_in(dialect, 'occurrence_id', 1)}",
                ids,
            )
            occurrences = await conn.execute(
                f"DELETE FROM occurrences WHERE {id_in(dialect, 'id', 1)}", ids
            )
        self._count(result, "classifications", classifications)
        self._count(result, "state_changes", changes)
        self._count(result, "occurrences", occurrences)
        return len(ids)

    def _work_items_sql(self) -> str:
        return (
            "DELETE FROM work_items WHERE id IN (SELECT id FROM work_items"
            " WHERE completed_at IS NOT NULL AND completed_at < $1"
            f" ORDER BY completed_at LIMIT $2{self.db.skip_locked})"
        )

    def _notifications_sql(self) -> str:
        return (
            "DELETE FROM notifications WHERE id IN (SELECT n.id FROM notifications n"
            " WHERE n.received_at < $1"
            " AND NOT EXISTS (SELECT 1 FROM state_changes s"
            " WHERE s.notification_id = n.id)"
            " AND NOT EXISTS (SELECT 1 FROM work_items w"
            " WHERE w.notification_id = n.id)"
            " ORDER BY n.received_at LIMIT $2)"
        )

    async def _delete_batches(
        self, table: str, sql: str, cutoff: datetime, result: RetentionResult
    ) -> None:
        while True:
            deleted = await self.db.execute(sql, cutoff, self.batch_size)
            self._count(result, table, deleted)
            if deleted < self.batch_size:
                return
            await asyncio.sleep(self.pause_seconds)

    async def run_periodically(self, interval_seconds: float) -> None:
        """Run every `interval_seconds` until cancelled; a failed run is logged."""
        await asyncio.sleep(min(interval_seconds, FIRST_RUN_DELAY_SECONDS))
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._count_run("failed")
                logger.warning("retention run failed", extra={"error": str(exc)})
            await asyncio.sleep(interval_seconds)
