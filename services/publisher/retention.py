"""Deletes old delivery records, in small batches.

A delivery is deleted, with its attempts and the alert states it carried,
once it succeeded before the cutoff, or once it was dead-lettered and
discarded before the cutoff. Pending deliveries and dead letters not yet
discarded are kept. A firing alert's delivery is kept while the target
has no resolve of that alert, because the resolve goes to the targets that
received the trigger (see the publisher README). A batch record is deleted
once it was received before the cutoff and no delivery refers to it.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry

from libs import retention
from libs.db import id_in
from libs.retention import RetentionResult

LOCK_NAME = "alert-history-publisher-retention"
TABLES = (
    "publisher_deliveries",
    "publisher_delivery_attempts",
    "publisher_delivery_alerts",
    "publisher_batches",
)


class RetentionMetrics(retention.RetentionMetrics):
    """Rows deleted by publisher retention and the outcome of each run."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(
            registry,
            prefix="alert_history_publisher",
            service="publisher",
            tables=TABLES,
        )


class Retention(retention.Retention):
    """Deletes delivery records older than `days` days; 0 keeps everything."""

    LOCK_NAME = LOCK_NAME
    TABLES = TABLES

    async def delete(self, cutoff: datetime, result: RetentionResult) -> None:
        await self.repeat(lambda: self._delete_delivery_batch(cutoff, result))
        await self.delete_batches(
            "publisher_batches",
            "DELETE FROM publisher_batches WHERE batch_id IN"
            " (SELECT b.batch_id FROM publisher_batches b"
            " WHERE b.received_at < $1 AND NOT EXISTS"
            " (SELECT 1 FROM publisher_deliveries d WHERE d.batch_id = b.batch_id)"
            " ORDER BY b.received_at LIMIT $2)",
            cutoff,
            result,
        )

    async def _delete_delivery_batch(
        self, cutoff: datetime, result: RetentionResult
    ) -> int:
        dialect = self.db.dialect
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT d.id FROM publisher_deliveries d"
                " WHERE d.completed_at < $1"
                " AND (d.state = 'succeeded'"
                " OR (d.state = 'dead' AND d.discarded_at < $1))"
                # The trigger of an alert that the target has not seen resolve.
                " AND NOT EXISTS (SELECT 1 FROM publisher_delivery_alerts a"
                " WHERE a.delivery_id = d.id AND a.status = 'firing'"
                " AND a.occurrence_key IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM publisher_delivery_alerts r"
                " WHERE r.occurrence_key = a.occurrence_key"
                " AND r.status = 'resolved' AND r.target = a.target))"
                f" ORDER BY d.completed_at LIMIT $2{self.db.skip_locked}",
                cutoff,
                self.batch_size,
            )
            ids = [row["id"] for row in rows]
            if not ids:
                return 0
            attempts = await conn.execute(
                "DELETE FROM publisher_delivery_attempts"
                f" WHERE {id_in(dialect, 'delivery_id', 1)}",
                ids,
            )
            alerts = await conn.execute(
                "DELETE FROM publisher_delivery_alerts"
                f" WHERE {id_in(dialect, 'delivery_id', 1)}",
                ids,
            )
            deliveries = await conn.execute(
                f"DELETE FROM publisher_deliveries WHERE {id_in(dialect, 'id', 1)}",
                ids,
            )
        self.count(result, "publisher_delivery_attempts", attempts)
        self.count(result, "publisher_delivery_alerts", alerts)
        self.count(result, "publisher_deliveries", deliveries)
        return len(ids)
