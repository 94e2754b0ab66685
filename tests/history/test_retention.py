"""Retention on SQLite and PostgreSQL: what is deleted, what is kept."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from libs.db import Database, migrate
from libs.locks import postgres_lock
from services.history.migrations import COMPONENT, MIGRATIONS
from services.history.retention import LOCK_NAME, Retention, RetentionMetrics
from services.history.store import HistoryStore
from tests.history.builders import alert, at, classify, cycle, notify
from tests.history.conftest import FakeClock

DAY = 86400


async def count(history: HistoryStore, table: str) -> int:
    return int(await history.db.fetchval(f"SELECT count(*) FROM {table}"))


async def fingerprints(history: HistoryStore) -> set[str]:
    rows = await history.db.fetch("SELECT fingerprint FROM occurrences")
    return {row["fingerprint"] for row in rows}


@pytest.fixture
async def aged(store: HistoryStore, clock: FakeClock) -> HistoryStore:
    """History received 100 days ago and now, with work items both ways.

    old1 and old2 resolved long ago. "done" has an old completed work item,
    and "pending" an old one never completed. "lasting" started long ago
    but was delivered again now, and "new" is recent.
    """
    for index in range(2):
        fired, _ = await cycle(store, f"old{index + 1}", at(index), at(index + 5))
        await classify(store, fired, "info", 0.5)
    old_work = await notify(store, alert("done", starts_at=at(10)), enqueue_work=True)
    await store.complete_work([old_work.work_item_id])
    await notify(store, alert("pending", starts_at=at(11)), enqueue_work=True)
    await notify(store, alert("lasting", starts_at=at(12)))

    clock.advance(100 * DAY)
    await notify(store, alert("lasting", starts_at=at(12)))
    await cycle(store, "new", clock.now, clock.now)
    return store


def retention(history: HistoryStore, clock: FakeClock, **options: int) -> Retention:
    return Retention(
        history.db,
        days=options.get("days", 90),
        batch_size=options.get("batch_size", 2),
        pause_seconds=0,
        clock=clock,
    )


async def test_retention_deletes_old_history(
    aged: HistoryStore, clock: FakeClock
) -> None:
    result = await retention(aged, clock).run_once()

    assert await fingerprints(aged) == {"lasting", "new"}
    assert result.deleted["occurrences"] == 4
    assert result.deleted["classifications"] == 2
    assert result.deleted["state_changes"] == 6
    assert result.skipped is False


async def test_retention_deletes_completed_work_only(
    aged: HistoryStore, clock: FakeClock
) -> None:
    result = await retention(aged, clock).run_once()

    rows = await aged.db.fetch("SELECT completed_at FROM work_items")
    assert result.deleted["work_items"] == 1
    assert [row["completed_at"] for row in rows] == [None]


async def test_retention_keeps_referenced_notifications(
    aged: HistoryStore, clock: FakeClock
) -> None:
    before = await count(aged, "notifications")

    result = await retention(aged, clock).run_once()

    # Old notifications of old1, old2 (two each) and "done" go; those of
    # "pending" (its work item) and "lasting" (its firing state change) stay.
    assert result.deleted["notifications"] == 5
    assert await count(aged, "notifications") == before - 5


async def test_retention_zero_days_keeps_everything(
    aged: HistoryStore, clock: FakeClock
) -> None:
    result = await retention(aged, clock, days=0).run_once()

    assert sum(result.deleted.values()) == 0
    assert await count(aged, "occurrences") == 6


async def test_retention_second_run_deletes_nothing(
    aged: HistoryStore, clock: FakeClock
) -> None:
    await retention(aged, clock).run_once()

    again = await retention(aged, clock).run_once()

    assert sum(again.deleted.values()) == 0


async def test_retention_counts_metrics(aged: HistoryStore, clock: FakeClock) -> None:
    registry = CollectorRegistry()
    job = Retention(
        aged.db,
        days=90,
        batch_size=5000,
        pause_seconds=0,
        metrics=RetentionMetrics(registry),
        clock=clock,
    )

    await job.run_once()

    deleted = registry.get_sample_value(
        "alert_history_retention_deleted_total", {"table": "occurrences"}
    )
    runs = registry.get_sample_value(
        "alert_history_retention_runs_total", {"outcome": "completed"}
    )
    assert deleted == 4
    assert runs == 1


async def test_retention_skips_while_locked(pg_url: str, clock: FakeClock) -> None:
    db = Database(pg_url)
    await db.connect()
    try:
        await migrate(db, COMPONENT, MIGRATIONS)
        history = HistoryStore(db, clock=clock)
        await cycle(history, "old", at(0), at(1))
        clock.advance(100 * DAY)
        async with postgres_lock(pg_url, LOCK_NAME) as held:
            result = await retention(history, clock).run_once()
        remaining = await count(history, "occurrences")
    finally:
        await db.close()

    assert held is True
    assert result.skipped is True
    assert remaining == 1
