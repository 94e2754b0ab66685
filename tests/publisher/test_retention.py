"""Publisher retention on SQLite and PostgreSQL: what is deleted, what is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.publisher.log_store import PublishingLog
from services.publisher.retention import Retention, RetentionMetrics
from services.publisher.store import (
    AttemptResult,
    DeliveredAlert,
    DeliveryStore,
    FinishedAttempt,
    NewDelivery,
    Outcome,
)
from tests.publisher.conftest import make_settings, running_publisher, write_targets

OLD = datetime(2026, 1, 1, tzinfo=UTC)
NOW = OLD + timedelta(days=100)
RESULT = AttemptResult(
    attempted_at=OLD,
    duration_seconds=0.1,
    status_code=200,
    error=None,
    response_body="ok",
)


def retention(
    store: DeliveryStore, days: int = 90, metrics: RetentionMetrics | None = None
) -> Retention:
    return Retention(
        store.db,
        days=days,
        batch_size=2,
        pause_seconds=0,
        metrics=metrics,
        clock=lambda: NOW,
    )


async def deliver(
    store: DeliveryStore,
    batch_id: str,
    status: str,
    *,
    state: str = "succeeded",
    at: datetime = OLD,
    occurrence: str = "fp@start",
) -> int:
    """Record a one-alert delivery to "hook" and finish its attempt at `at`."""
    alert = DeliveredAlert(
        fingerprint="fp",
        status=status,
        state_change_id=1,
        occurrence_key=occurrence,
    )
    delivery = NewDelivery(
        target="hook",
        part=0,
        format="webhook",
        group_key=batch_id,
        idempotency_key=batch_id,
        body="{}",
        alerts=(alert,),
    )
    await store.record_batch(batch_id, 1, [delivery], at)
    if state == "pending":
        [record] = await store.deliveries_for_batch(batch_id)
        return record.id
    [claimed] = await store.claim("hook", 1, "worker", at, at + timedelta(minutes=1))
    outcome = Outcome(state, at)  # type: ignore[arg-type]
    await store.finish_attempts(
        [FinishedAttempt(claimed, RESULT, outcome)], "worker", at
    )
    return claimed.id


async def count(store: DeliveryStore, table: str) -> int:
    return int(await store.db.fetchval(f"SELECT count(*) FROM {table}"))


async def test_retention_deletes_old_resolved_deliveries(
    store: DeliveryStore,
) -> None:
    trigger = await deliver(store, "b-fire", "firing")
    resolve = await deliver(store, "b-resolve", "resolved")

    result = await retention(store).run_once()

    assert await store.get(trigger) is None
    assert await store.get(resolve) is None
    assert result.deleted["publisher_deliveries"] == 2
    assert result.deleted["publisher_delivery_attempts"] == 2
    assert result.deleted["publisher_delivery_alerts"] == 2
    assert result.deleted["publisher_batches"] == 2
    for table in (
        "publisher_deliveries",
        "publisher_delivery_attempts",
        "publisher_delivery_alerts",
        "publisher_batches",
    ):
        assert await count(store, table) == 0, table


async def test_retention_keeps_recent_deliveries(store: DeliveryStore) -> None:
    await deliver(store, "b-fire", "firing", at=NOW - timedelta(days=10))
    recent = await deliver(store, "b-resolve", "resolved", at=NOW - timedelta(days=1))

    result = await retention(store).run_once()

    assert await store.get(recent) is not None
    assert result.deleted["publisher_deliveries"] == 0
    assert await count(store, "publisher_batches") == 2


async def test_retention_keeps_unresolved_trigger(store: DeliveryStore) -> None:
    trigger = await deliver(store, "b-fire", "firing")
    other = await deliver(store, "b-other", "resolved", occurrence="other@start")

    await retention(store).run_once()

    assert await store.get(trigger) is not None
    assert await store.get(other) is None


async def test_retention_keeps_pending_and_undiscarded(
    store: DeliveryStore,
) -> None:
    pending = await deliver(store, "b-pending", "resolved", state="pending")
    dead = await deliver(
        store, "b-dead", "resolved", state="dead", occurrence="dead@start"
    )

    await retention(store).run_once()

    assert await store.get(pending) is not None
    assert await store.get(dead) is not None


async def test_retention_deletes_discarded_dead_letters(
    store: DeliveryStore,
) -> None:
    old_discard = await deliver(store, "b-dead-1", "resolved", state="dead")
    recent_discard = await deliver(
        store, "b-dead-2", "resolved", state="dead", occurrence="x@start"
    )
    log = PublishingLog(store.db)
    await log.discard_dead(old_discard, OLD + timedelta(days=1))
    await log.discard_dead(recent_discard, NOW - timedelta(days=1))

    await retention(store).run_once()

    assert await store.get(old_discard) is None
    assert await store.get(recent_discard) is not None


async def test_retention_zero_days_keeps_everything(store: DeliveryStore) -> None:
    resolve = await deliver(store, "b-resolve", "resolved")

    result = await retention(store, days=0).run_once()

    assert await store.get(resolve) is not None
    assert result.deleted["publisher_deliveries"] == 0


async def test_retention_counts_metrics(store: DeliveryStore) -> None:
    registry = CollectorRegistry()
    for index in range(3):
        await deliver(store, f"b-{index}", "resolved", occurrence=f"{index}@start")

    await retention(store, metrics=RetentionMetrics(registry)).run_once()

    deleted = registry.get_sample_value(
        "alert_history_publisher_retention_deleted_total",
        {"table": "publisher_deliveries"},
    )
    runs = registry.get_sample_value(
        "alert_history_publisher_retention_runs_total", {"outcome": "completed"}
    )
    assert deleted == 3.0
    assert runs == 1.0


async def test_service_runs_retention_when_enabled(
    any_database_url: str, tmp_path: Path
) -> None:
    targets = write_targets(tmp_path, [])
    enabled = make_settings(any_database_url, targets)
    disabled = make_settings(any_database_url, targets, publisher_retention_days=0)

    async with running_publisher(enabled) as service:
        assert service.retention is not None
        assert service.retention.days == 90
    async with running_publisher(disabled) as service:
        assert service.retention is None
