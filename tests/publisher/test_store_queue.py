"""Which deliveries the store leases (group heads only) and when targets are due."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from libs.db import Database, migrate
from services.publisher.migrations import COMPONENT, MIGRATIONS
from services.publisher.store import DeliveryStore, NewDelivery

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LEASE_UNTIL = NOW + timedelta(seconds=60)


def delivery(group_key: str, part: int, target: str = "hook") -> NewDelivery:
    return NewDelivery(
        target=target,
        part=part,
        format="webhook",
        group_key=group_key,
        idempotency_key=f"{group_key}-{part}",
        body="{}",
        alerts=(),
    )


@pytest.fixture
async def store(any_database_url: str) -> AsyncIterator[DeliveryStore]:
    db = Database(any_database_url)
    await db.connect()
    await migrate(db, COMPONENT, MIGRATIONS)
    try:
        yield DeliveryStore(db)
    finally:
        await db.close()


async def record(store: DeliveryStore, batch_id: str, *items: NewDelivery) -> None:
    await store.record_batch(batch_id, len(items), items, NOW)


async def test_claim_one_per_group(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0), delivery("g2", 1))
    await record(store, "b2", delivery("g1", 0), delivery("g2", 1))

    claimed = await store.claim("hook", 10, "worker", NOW, LEASE_UNTIL)

    assert [d.batch_id for d in claimed] == ["b1", "b1"]


async def test_claim_leased_head_blocks_group(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0))
    await record(store, "b2", delivery("g1", 0))
    await store.claim("hook", 1, "worker-a", NOW, LEASE_UNTIL)

    claimed = await store.claim("hook", 10, "worker-b", NOW, LEASE_UNTIL)

    assert claimed == []


async def test_claim_respects_limit(store: DeliveryStore) -> None:
    await record(store, "b1", *(delivery(f"g{index}", index) for index in range(5)))

    claimed = await store.claim("hook", 3, "worker", NOW, LEASE_UNTIL)

    assert len(claimed) == 3


async def test_claim_other_target_ignored(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0, target="other"))

    claimed = await store.claim("hook", 10, "worker", NOW, LEASE_UNTIL)

    assert claimed == []


async def test_due_times_lease_expiry(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0))
    await record(store, "b2", delivery("g1", 0))
    await store.claim("hook", 1, "worker", NOW, LEASE_UNTIL)

    due = await store.due_times()

    assert due == {"hook": LEASE_UNTIL}


async def test_due_times_per_target(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0), delivery("g1", 1, target="other"))

    due = await store.due_times()

    assert set(due) == {"hook", "other"}
