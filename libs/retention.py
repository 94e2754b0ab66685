"""The frame of a retention job: delete rows older than a window, in batches.

A service subclasses `Retention` with the statements of its own tables. A
run takes a lock, so that one replica runs at a time (`libs.locks`), and
deletes in short transactions of at most `batch_size` rows with a pause
between them, so that a writer waits at most for one short transaction.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter

from libs.db import Database
from libs.locks import try_lock

logger = logging.getLogger(__name__)

# Delay before the first run after start, when the interval is longer.
FIRST_RUN_DELAY_SECONDS = 300.0


class RetentionMetrics:
    """Rows deleted by one service's retention and the outcome of each run."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        prefix: str,
        service: str,
        tables: Sequence[str],
    ) -> None:
        self.deleted = Counter(
            f"{prefix}_retention_deleted_total",
            f"Rows deleted by {service} retention, by table.",
            ["table"],
            registry=registry,
        )
        self.runs = Counter(
            f"{prefix}_retention_runs_total",
            "Retention runs by outcome: completed, skipped (another replica "
            "held the lock) or failed.",
            ["outcome"],
            registry=registry,
        )
        for table in tables:
            self.deleted.labels(table)
        for outcome in ("completed", "skipped", "failed"):
            self.runs.labels(outcome)


@dataclass
class RetentionResult:
    """Rows one run deleted, by table, and whether another replica ran instead."""

    skipped: bool = False
    deleted: dict[str, int] = field(default_factory=dict)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Retention(ABC):
    """Deletes rows older than `days` days; 0 days keeps everything."""

    # The lock one replica holds while it runs.
    LOCK_NAME: str
    # Tables a run deletes from, as the metrics and results name them.
    TABLES: tuple[str, ...]

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

    @abstractmethod
    async def delete(self, cutoff: datetime, result: RetentionResult) -> None:
        """Delete the rows older than `cutoff`, counting them in `result`."""

    async def run_once(self) -> RetentionResult:
        """Delete everything older than the window, unless another replica is."""
        result = RetentionResult(deleted=dict.fromkeys(self.TABLES, 0))
        if self.days == 0:
            return result
        cutoff = self._clock() - timedelta(days=self.days)
        async with try_lock(self.LOCK_NAME, database_url=self.db.url) as acquired:
            if not acquired:
                result.skipped = True
                self._count_run("skipped")
                logger.info(
                    "retention skipped: the lock is taken by another replica",
                    extra={"lock": self.LOCK_NAME},
                )
                return result
            await self.delete(cutoff, result)
        self._count_run("completed")
        logger.info(
            "retention run completed",
            extra={"cutoff": cutoff.isoformat(), "deleted": result.deleted},
        )
        return result

    def count(self, result: RetentionResult, table: str, rows: int) -> None:
        """Add `rows` deleted from `table` to the result and the metrics."""
        result.deleted[table] += rows
        if self.metrics is not None and rows:
            self.metrics.deleted.labels(table).inc(rows)

    async def delete_batches(
        self, table: str, sql: str, cutoff: datetime, result: RetentionResult
    ) -> None:
        """Run `sql` with ($1 cutoff, $2 batch size) until it deletes a short batch."""
        await self.repeat(lambda: self._delete_batch(table, sql, cutoff, result))

    async def repeat(self, batch: Callable[[], Awaitable[int]]) -> None:
        """Call `batch`, which returns the rows it deleted, until it deletes
        fewer than `batch_size`, pausing between two calls."""
        while True:
            deleted = await batch()
            if deleted < self.batch_size:
                return
            await asyncio.sleep(self.pause_seconds)

    async def _delete_batch(
        self, table: str, sql: str, cutoff: datetime, result: RetentionResult
    ) -> int:
        deleted = await self.db.execute(sql, cutoff, self.batch_size)
        self.count(result, table, deleted)
        return deleted

    def _count_run(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.runs.labels(outcome).inc()

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
                logger.warning(
                    "retention run failed",
                    extra={"lock": self.LOCK_NAME, "error": str(exc)},
                )
            await asyncio.sleep(interval_seconds)
