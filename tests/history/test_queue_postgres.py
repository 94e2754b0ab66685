"""Work queue behaviour that only PostgreSQL's row locks provide."""

from __future__ import annotations

import asyncio
from collections import Counter

from alerthistory.alert.v1 import alert_pb2
from libs.db import Database, migrate
from services.history.migrations import COMPONENT, MIGRATIONS
from services.history.store import HistoryStore

ITEMS = 200


def _notification(index: int) -> alert_pb2.Notification:
    alert = alert_pb2.Alert(
        fingerprint=f"{index:016x}",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"alertname": "QueueTest", "index": str(index)},
    )
    alert.starts_at.FromSeconds(1_714_557_600)
    return alert_pb2.Notification(version="4", receiver="test", alerts=[alert])


async def _drain(store: HistoryStore, owner: str) -> list[int]:
    taken: list[int] = []
    while True:
        items = await store.lease_work(owner, 7, 300)
        if not items:
            return taken
        taken.extend(item.id for item in items)


async def test_two_consumers_never_share_items(pg_url: str) -> None:
    producer = Database(pg_url)
    await producer.connect()
    await migrate(producer, COMPONENT, MIGRATIONS)
    writer = HistoryStore(producer)
    for index in range(ITEMS):
        await writer.store_notification(_notification(index), enqueue_work=True)

    consumers = [Database(pg_url, pool_size=4), Database(pg_url, pool_size=4)]
    for db in consumers:
        await db.connect()
    try:
        stores = [HistoryStore(db) for db in consumers]
        results = await asyncio.gather(
            *(
                _drain(store, f"consumer-{n}-{task}")
                for n, store in enumerate(stores)
                for task in range(4)
            )
        )
    finally:
        for db in [producer, *consumers]:
            await db.close()

    taken = Counter(item for result in results for item in result)
    assert len(taken) == ITEMS
    assert max(taken.values()) == 1
