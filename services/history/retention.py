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
deleted by a later run. One replica runs at a time (`libs.retention`).
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry

from libs import retention
from libs.db import id_in
from libs.retention import RetentionResult

LOCK_NAME = "alert-history-retention"
TABLES = (
    "occurrences",
    "state_changes",
    "classifications",
    "work_items",
    "notifications",
)


class RetentionMetrics(retention.RetentionMetrics):
    """Rows deleted by history retention and the outcome of each run."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(
            registry, prefix="alert_history", service="history", tables=TABLES
        )


class Retention(retention.Retention):
    """Deletes history older than `days` days; 0 days keeps everything."""

    LOCK_NAME = LOCK_NAME
    TABLES = TABLES

    async def delete(self, cutoff: datetime, result: RetentionResult) -> None:
        await self.repeat(lambda: self._delete_occurrence_batch(cutoff, result))
        await self.delete_batches("work_items", self._work_items_sql(), cutoff, result)
        await self.delete_batches(
            "notifications", self._notifications_sql(), cutoff, result
        )

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
        self.count(result, "classifications", classifications)
        self.count(result, "state_changes", changes)
        self.count(result, "occurrences", occurrences)
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
