"""Contract suite of HistoryStore, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from libs.alerts import parse_notification, timestamp_to_datetime
from libs.db import Database
from libs.errors import InvalidInputError, NotFoundError, UnavailableError
from services.history.store import HistoryStore, StoreItem
from tests.history.conftest import FIXTURES, FakeClock, load_notification

NEW = history_pb2.STORE_OUTCOME_NEW
REPEAT = history_pb2.STORE_OUTCOME_REPEAT
FIRING = alert_pb2.ALERT_STATUS_FIRING
RESOLVED = alert_pb2.ALERT_STATUS_RESOLVED
ZERO_TIME = "0001-01-01T00:00:00Z"
LATER = "2024-05-01T10:07:00Z"


def alert_body(
    fingerprint: str = "00000000000000a1",
    *,
    status: str = "firing",
    starts_at: str = "2024-05-01T10:00:00Z",
    ends_at: str = ZERO_TIME,
    annotations: dict[str, str] | None = None,
    alertname: str = "DiskFull",
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": alertname, "instance": fingerprint},
        "annotations": annotations or {},
        "startsAt": starts_at,
        "endsAt": ends_at,
        "generatorURL": "http://prometheus.example:9090/graph",
        "fingerprint": fingerprint,
    }


def notification(*alerts: dict[str, Any], **fields: Any) -> alert_pb2.Notification:
    body = {
        "version": "4",
        "groupKey": '{}:{alertname="DiskFull"}',
        "status": "firing",
        "receiver": "ai-proxy",
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
        **fields,
    }
    return parse_notification(body)


def stored(
    result: history_pb2.StoreNotificationResponse | Exception,
) -> history_pb2.StoreNotificationResponse:
    assert not isinstance(result, Exception), result
    return result


async def count(store: HistoryStore, table: str) -> int:
    return int(await store.db.fetchval(f"SELECT count(*) FROM {table}"))


def classification(reasoning: str = "disk is full") -> alert_pb2.Classification:
    result = alert_pb2.Classification(
        severity=alert_pb2.SEVERITY_CRITICAL,
        confidence=0.75,
        reasoning=reasoning,
        recommendations=["free space", "grow the volume"],
        source=alert_pb2.VERDICT_SOURCE_MODEL,
        model="gpt-4o-mini",
        fallback_reason="",
        model_severity=alert_pb2.SEVERITY_WARNING,
        flags=["severity_floor"],
        refusal="",
    )
    result.processing_time.FromMilliseconds(1234)
    result.classified_at.FromDatetime(datetime(2024, 5, 1, 10, 1, tzinfo=UTC))
    return result


# Occurrences and outcomes.


async def test_store_new_then_repeat(store: HistoryStore) -> None:
    body = load_notification("cases/r14/inbound.json")

    first = await store.store_notification(body)
    second = await store.store_notification(body)

    assert first.alerts[0].outcome == NEW
    assert second.alerts[0].outcome == REPEAT
    assert second.alerts[0].occurrence_id == first.alerts[0].occurrence_id
    assert second.alerts[0].state_change_id == 0
    assert await count(store, "state_changes") == 1


async def test_store_repeat_updates_latest(
    store: HistoryStore, clock: FakeClock
) -> None:
    first = await store.store_notification(
        notification(alert_body(annotations={"summary": "old"}))
    )
    clock.advance(60)
    await store.store_notification(
        notification(
            alert_body(annotations={"summary": "new"}),
            groupKey="group-2",
            receiver="other",
            truncatedAlerts=3,
        )
    )

    occurrence = await store.get_occurrence(first.alerts[0].occurrence_id)
    assert occurrence.deliveries == 2
    assert occurrence.annotations["summary"] == "new"
    assert occurrence.group_key == "group-2"
    assert occurrence.receiver == "other"
    assert occurrence.truncated_alerts == 3
    assert occurrence.last_seen_at.ToDatetime(UTC) == clock.now
    assert occurrence.first_seen_at.ToDatetime(UTC) == clock.now - timedelta(seconds=60)
    assert occurrence.status == FIRING


async def test_store_ha_duplicate_is_repeat(store: HistoryStore) -> None:
    first = await store.store_notification(load_notification("cases/r14/inbound.json"))
    second = await store.store_notification(
        load_notification("cases/r14/inbound_second_peer.json")
    )

    assert first.alerts[0].outcome == NEW
    assert second.alerts[0].outcome == REPEAT
    assert await count(store, "occurrences") == 1
    assert await count(store, "state_changes") == 1
    occurrence = await store.get_occurrence(first.alerts[0].occurrence_id)
    assert occurrence.external_url == "http://alertmanager-2.example:9093"


async def test_store_duplicate_in_body(store: HistoryStore) -> None:
    response = await store.store_notification(notification(alert_body(), alert_body()))

    assert [a.outcome for a in response.alerts] == [NEW, REPEAT]
    occurrence = await store.get_occurrence(response.alerts[0].occurrence_id)
    assert occurrence.deliveries == 2
    assert len(occurrence.state_changes) == 1


async def test_store_new_start_is_new_occurrence(store: HistoryStore) -> None:
    first = await store.store_notification(notification(alert_body()))
    second = await store.store_notification(
        notification(alert_body(starts_at="2024-05-01T11:00:00Z"))
    )

    assert second.alerts[0].outcome == NEW
    assert second.alerts[0].occurrence_id != first.alerts[0].occurrence_id


async def test_store_alert_status_not_group_status(store: HistoryStore) -> None:
    body = notification(
        alert_body("00000000000000a1"),
        alert_body(
            "00000000000000a2", status="resolved", ends_at="2024-05-01T10:05:00Z"
        ),
        status="firing",
    )

    response = await store.store_notification(body)

    assert [a.status for a in response.alerts] == [FIRING, RESOLVED]


# Resolving and times.


async def test_store_resolve_takes_seven_minutes(store: HistoryStore) -> None:
    firing = await store.store_notification(load_notification("cases/r12/inbound.json"))
    resolved = await store.store_notification(
        load_notification("cases/r12/inbound_resolved.json")
    )

    assert resolved.alerts[0].outcome == NEW
    assert resolved.alerts[0].status == RESOLVED
    assert resolved.alerts[0].state_change_id != firing.alerts[0].state_change_id
    occurrence = await store.get_occurrence(firing.alerts[0].occurrence_id)
    duration = occurrence.ends_at.ToDatetime() - occurrence.starts_at.ToDatetime()
    assert duration == timedelta(minutes=7)
    assert occurrence.status == RESOLVED
    assert [c.status for c in occurrence.state_changes] == [FIRING, RESOLVED]


async def test_store_resolved_repeat_keeps_end(store: HistoryStore) -> None:
    await store.store_notification(load_notification("cases/r12/inbound.json"))
    first = await store.store_notification(
        load_notification("cases/r12/inbound_resolved.json")
    )
    again = await store.store_notification(
        load_notification("cases/r12/inbound_resolved.json")
    )

    assert again.alerts[0].outcome == REPEAT
    occurrence = await store.get_occurrence(first.alerts[0].occurrence_id)
    assert occurrence.ends_at.ToDatetime() == datetime(2024, 5, 1, 10, 7)


async def test_store_resolved_zero_end_warns(
    store: HistoryStore, clock: FakeClock
) -> None:
    response = await store.store_notification(
        load_notification("cases/r12/inbound_resolved_zero_end.json")
    )

    stored = response.alerts[0]
    assert stored.outcome == NEW
    assert stored.status == RESOLVED
    assert len(stored.warnings) == 1
    assert "endsAt" in stored.warnings[0]
    occurrence = await store.get_occurrence(stored.occurrence_id)
    assert occurrence.ends_at.ToDatetime(UTC) == clock.now
    assert occurrence.ends_at.ToDatetime() >= occurrence.starts_at.ToDatetime()


async def test_store_zero_end_before_start_clamped(
    store: HistoryStore, clock: FakeClock
) -> None:
    clock.now = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)

    response = await store.store_notification(
        load_notification("cases/r12/inbound_resolved_zero_end.json")
    )

    occurrence = await store.get_occurrence(response.alerts[0].occurrence_id)
    assert occurrence.ends_at == occurrence.starts_at


async def test_store_end_before_start_clamped(store: HistoryStore) -> None:
    response = await store.store_notification(
        notification(
            alert_body(
                status="resolved",
                starts_at="2024-05-01T10:00:00Z",
                ends_at="2024-05-01T09:59:00Z",
            )
        )
    )

    stored = response.alerts[0]
    assert len(stored.warnings) == 1
    assert "before startsAt" in stored.warnings[0]
    occurrence = await store.get_occurrence(stored.occurrence_id)
    assert occurrence.ends_at == occurrence.starts_at


async def test_store_firing_ignores_ends_at(store: HistoryStore) -> None:
    response = await store.store_notification(
        notification(alert_body(ends_at="2024-05-01T10:04:00Z"))
    )

    occurrence = await store.get_occurrence(response.alerts[0].occurrence_id)
    assert not occurrence.HasField("ends_at")
    assert not response.alerts[0].warnings


async def test_store_firing_after_resolved_stays_resolved(
    store: HistoryStore,
) -> None:
    await store.store_notification(load_notification("cases/r12/inbound.json"))
    await store.store_notification(load_notification("cases/r12/inbound_resolved.json"))

    late = await store.store_notification(load_notification("cases/r12/inbound.json"))

    stored = late.alerts[0]
    assert stored.outcome == REPEAT
    assert stored.status == RESOLVED
    assert len(stored.warnings) == 1
    occurrence = await store.get_occurrence(stored.occurrence_id)
    assert occurrence.status == RESOLVED
    assert occurrence.ends_at.ToDatetime() == datetime(2024, 5, 1, 10, 7)
    assert len(occurrence.state_changes) == 2


async def test_store_first_seen_resolved(store: HistoryStore) -> None:
    response = await store.store_notification(
        load_notification("cases/r12/inbound_resolved.json")
    )

    assert response.alerts[0].outcome == NEW
    occurrence = await store.get_occurrence(response.alerts[0].occurrence_id)
    assert [c.status for c in occurrence.state_changes] == [RESOLVED]


async def test_store_firing_and_resolved_in_body(store: HistoryStore) -> None:
    response = await store.store_notification(
        notification(
            alert_body(),
            alert_body(status="resolved", ends_at="2024-05-01T10:03:00Z"),
        )
    )

    assert [a.outcome for a in response.alerts] == [NEW, NEW]
    assert [a.status for a in response.alerts] == [FIRING, RESOLVED]
    occurrence = await store.get_occurrence(response.alerts[0].occurrence_id)
    assert occurrence.status == RESOLVED
    assert len(occurrence.state_changes) == 2


async def test_store_truncated_alerts_kept(store: HistoryStore) -> None:
    response = await store.store_notification(
        load_notification("cases/r16/inbound.json"), enqueue_work=True
    )

    assert await count(store, "occurrences") == 2
    page, _ = await store.list_occurrences(limit=10)
    assert [o.truncated_alerts for o in page] == [4998, 4998]
    assert [o.status for o in page] == [FIRING, FIRING]
    items = await store.lease_work("test", 10, 30)
    assert items[0].notification.truncated_alerts == 4998
    assert response.work_item_id == items[0].id


async def test_store_times_in_utc(store: HistoryStore) -> None:
    response = await store.store_notification(
        notification(alert_body(starts_at="2024-05-01T12:00:00.123456789+02:00"))
    )

    stored = await store.db.fetchval("SELECT starts_at FROM occurrences")
    expected = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert stored == expected
    assert stored.utcoffset() == timedelta(0)
    occurrence = await store.get_occurrence(response.alerts[0].occurrence_id)
    assert occurrence.starts_at.ToDatetime(UTC) == expected


async def test_store_all_webhook_fixtures(store: HistoryStore) -> None:
    paths = sorted(
        path
        for path in (FIXTURES / "webhooks").glob("*.json")
        if path.name != "index.json"
    )
    assert len(paths) == 10

    for path in paths:
        body = load_notification(f"webhooks/{path.name}")
        response = await store.store_notification(body, enqueue_work=True)
        assert len(response.alerts) == len(body.alerts), path.name


async def test_store_fixture_resolve_pair(store: HistoryStore) -> None:
    firing = await store.store_notification(
        load_notification("webhooks/01_firing_single_node_filesystem.json")
    )
    resolved = await store.store_notification(
        load_notification("webhooks/02_resolved_single_node_filesystem.json")
    )

    assert resolved.alerts[0].outcome == NEW
    assert resolved.alerts[0].occurrence_id == firing.alerts[0].occurrence_id


async def test_store_parallel_identical_one_new(store: HistoryStore) -> None:
    body = load_notification("webhooks/03_grouped_firing_kubepodnotready.json")

    responses = await asyncio.gather(
        *(store.store_notification(body, enqueue_work=True) for _ in range(6))
    )

    outcomes = [a.outcome for r in responses for a in r.alerts]
    assert outcomes.count(NEW) == len(body.alerts)
    assert await count(store, "occurrences") == len(body.alerts)
    assert await count(store, "state_changes") == len(body.alerts)
    assert await count(store, "work_items") == 1


async def test_store_parallel_resolve_one_new(store: HistoryStore) -> None:
    await store.store_notification(load_notification("cases/r12/inbound.json"))
    body = load_notification("cases/r12/inbound_resolved.json")

    responses = await asyncio.gather(
        *(store.store_notification(body) for _ in range(10))
    )

    outcomes = [r.alerts[0].outcome for r in responses]
    assert outcomes.count(NEW) == 1
    assert await count(store, "state_changes") == 2


async def test_store_batch_applies_notifications_in_order(
    store: HistoryStore,
) -> None:
    first = notification(alert_body("00000000000000a1"))
    second = notification(
        alert_body("00000000000000a1"), alert_body("00000000000000a2"), groupKey="g2"
    )
    third = notification(
        alert_body("00000000000000a1", status="resolved", ends_at=LATER),
        groupKey="g3",
        receiver="last",
    )

    results = await store.store_notifications(
        [StoreItem(body, enqueue_work=True) for body in (first, second, third)]
    )

    responses = [stored(result) for result in results]
    assert [[a.outcome for a in r.alerts] for r in responses] == [
        [NEW],
        [REPEAT, NEW],
        [NEW],
    ]
    ids = [r.notification_id for r in responses]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    items = await store.lease_work("test", 10, 30)
    assert [[a.state_change_id for a in item.alerts] for item in items] == [
        [responses[0].alerts[0].state_change_id],
        [responses[1].alerts[1].state_change_id],
        [responses[2].alerts[0].state_change_id],
    ]
    assert [item.id for item in items] == [r.work_item_id for r in responses]
    occurrence = await store.get_occurrence(responses[0].alerts[0].occurrence_id)
    assert occurrence.status == RESOLVED
    assert occurrence.deliveries == 3
    assert (occurrence.group_key, occurrence.receiver) == ("g3", "last")
    changes = await store.db.fetch(
        "SELECT notification_id FROM state_changes ORDER BY id"
    )
    assert [row["notification_id"] for row in changes] == ids


async def test_store_batch_invalid_notification_fails_alone(
    store: HistoryStore,
) -> None:
    results = await store.store_notifications(
        [
            StoreItem(notification(alert_body("00000000000000a1"))),
            StoreItem(alert_pb2.Notification(version="4")),
            StoreItem(notification(alert_body("00000000000000a2"))),
        ]
    )

    assert isinstance(results[1], InvalidInputError)
    assert stored(results[0]).alerts[0].outcome == NEW
    assert stored(results[2]).alerts[0].outcome == NEW
    assert await count(store, "notifications") == 2


async def test_store_batch_stores_each_alone_when_together_fails(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = store._write
    batch_sizes: list[int] = []

    async def fail_together(conn: Any, planned: Any) -> Any:
        batch_sizes.append(len(planned.batch))
        if len(planned.batch) > 1:
            raise UnavailableError("together failed")
        return await write(conn, planned)

    monkeypatch.setattr(store, "_write", fail_together)
    zero_end = alert_body("00000000000000a3", status="resolved", ends_at=ZERO_TIME)
    results = await store.store_notifications(
        [
            StoreItem(notification(alert_body("00000000000000a1"))),
            StoreItem(notification(zero_end)),
        ]
    )

    assert batch_sizes == [2, 1, 1]
    responses = [stored(result) for result in results]
    assert [r.alerts[0].outcome for r in responses] == [NEW, NEW]
    # The failed attempt's decisions leave no warning behind.
    assert [len(r.alerts[0].warnings) for r in responses] == [0, 1]
    assert await count(store, "notifications") == 2


async def test_store_parallel_batches_one_new(store: HistoryStore) -> None:
    body = load_notification("webhooks/03_grouped_firing_kubepodnotready.json")

    batches = await asyncio.gather(
        *(
            store.store_notifications([StoreItem(body, enqueue_work=True)] * 3)
            for _ in range(4)
        )
    )

    outcomes = [
        a.outcome for results in batches for r in results for a in stored(r).alerts
    ]
    assert outcomes.count(NEW) == len(body.alerts)
    assert await count(store, "state_changes") == len(body.alerts)
    assert await count(store, "work_items") == 1


async def test_store_no_alerts_rejected(store: HistoryStore) -> None:
    with pytest.raises(InvalidInputError, match="alerts"):
        await store.store_notification(alert_pb2.Notification(version="4"))


async def test_store_missing_fingerprint_rejected(store: HistoryStore) -> None:
    body = notification(alert_body())
    body.alerts[0].fingerprint = ""

    with pytest.raises(InvalidInputError, match=r"alerts\[0\]\.fingerprint"):
        await store.store_notification(body)


async def test_store_missing_status_rejected(store: HistoryStore) -> None:
    body = notification(alert_body())
    body.alerts[0].status = alert_pb2.ALERT_STATUS_UNSPECIFIED

    with pytest.raises(InvalidInputError, match=r"alerts\[0\]\.status"):
        await store.store_notification(body)


async def test_store_missing_start_rejected(store: HistoryStore) -> None:
    body = notification(alert_body())
    body.alerts[0].ClearField("starts_at")

    with pytest.raises(InvalidInputError, match=r"alerts\[0\]\.starts_at"):
        await store.store_notification(body)


async def test_store_nul_character_rejected(store: HistoryStore) -> None:
    body = notification(alert_body(annotations={"summary": "a\x00b"}))

    with pytest.raises(InvalidInputError, match="NUL"):
        await store.store_notification(body)
    assert await count(store, "notifications") == 0


# Work queue.


async def test_work_enqueued_for_new_only(store: HistoryStore) -> None:
    body = load_notification("cases/r14/inbound.json")

    first = await store.store_notification(body, enqueue_work=True)
    repeat = await store.store_notification(body, enqueue_work=True)

    assert first.work_item_id > 0
    assert repeat.work_item_id == 0
    assert await count(store, "work_items") == 1


async def test_work_not_enqueued_without_flag(store: HistoryStore) -> None:
    response = await store.store_notification(
        load_notification("cases/r14/inbound.json")
    )

    assert response.work_item_id == 0
    assert await count(store, "work_items") == 0


async def test_work_lists_only_new_changes(store: HistoryStore) -> None:
    await store.store_notification(notification(alert_body("00000000000000a1")))
    response = await store.store_notification(
        notification(alert_body("00000000000000a1"), alert_body("00000000000000a2")),
        enqueue_work=True,
    )

    items = await store.lease_work("test", 10, 30)
    assert [a.state_change_id for a in items[0].alerts] == [
        response.alerts[1].state_change_id
    ]


async def test_work_lease_returns_item(store: HistoryStore, clock: FakeClock) -> None:
    firing = await store.store_notification(
        load_notification("cases/r12/inbound.json"), enqueue_work=True
    )
    response = await store.store_notification(
        load_notification("cases/r12/inbound_resolved.json"),
        enqueue_work=True,
        trace_context={"traceparent": "00-abc-def-01"},
    )

    items = await store.lease_work("gateway-1", 1, 30)
    items += await store.lease_work("gateway-1", 1, 30)

    assert [item.id for item in items] == [firing.work_item_id, response.work_item_id]
    item = items[1]
    assert item.attempts == 1
    assert item.trace_context["traceparent"] == "00-abc-def-01"
    assert item.enqueued_at.ToDatetime(UTC) == clock.now
    assert item.notification.receiver == "ai-proxy"
    assert item.notification.status == RESOLVED
    assert len(item.notification.alerts) == 0
    work_alert = item.alerts[0]
    assert work_alert.state_change_id == response.alerts[0].state_change_id
    assert work_alert.occurrence_id == response.alerts[0].occurrence_id
    assert work_alert.alert.status == RESOLVED
    assert work_alert.alert.fingerprint == "00000000000000c2"
    assert work_alert.alert.labels["instance"] == "api-1:8080"
    assert work_alert.alert.ends_at.ToDatetime() == datetime(2024, 5, 1, 10, 7)
    assert not work_alert.HasField("classification")


async def test_work_firing_alert_has_no_end(store: HistoryStore) -> None:
    await store.store_notification(
        load_notification("cases/r12/inbound.json"), enqueue_work=True
    )
    await store.store_notification(load_notification("cases/r12/inbound_resolved.json"))

    items = await store.lease_work("test", 10, 30)

    alert = items[0].alerts[0].alert
    assert alert.status == FIRING
    assert not alert.HasField("ends_at")


async def test_work_live_lease_not_leased(store: HistoryStore) -> None:
    await store.store_notification(
        load_notification("cases/r14/inbound.json"), enqueue_work=True
    )

    first = await store.lease_work("a", 10, 30)
    second = await store.lease_work("b", 10, 30)

    assert len(first) == 1
    assert second == []


async def test_work_expired_lease_leased_again(
    store: HistoryStore, clock: FakeClock
) -> None:
    await store.store_notification(
        load_notification("cases/r14/inbound.json"), enqueue_work=True
    )
    first = await store.lease_work("a", 10, 30)
    clock.advance(31)

    second = await store.lease_work("b", 10, 30)

    assert [item.id for item in second] == [first[0].id]
    assert second[0].attempts == 2
    lease_owner = await store.db.fetchval("SELECT lease_owner FROM work_items")
    assert lease_owner == "b"


async def test_work_complete_ends_leasing(
    store: HistoryStore, clock: FakeClock
) -> None:
    await store.store_notification(
        load_notification("cases/r14/inbound.json"), enqueue_work=True
    )
    items = await store.lease_work("a", 10, 30)

    completed = await store.complete_work([items[0].id])
    again = await store.complete_work([items[0].id])
    clock.advance(3600)

    assert completed == 1
    assert again == 0
    assert await store.lease_work("a", 10, 30) == []


async def test_work_complete_empty(store: HistoryStore) -> None:
    assert await store.complete_work([]) == 0


async def test_work_lease_oldest_first(store: HistoryStore) -> None:
    ids = []
    for index in range(3):
        response = await store.store_notification(
            notification(alert_body(f"00000000000000b{index}")), enqueue_work=True
        )
        ids.append(response.work_item_id)

    items = await store.lease_work("a", 2, 30)

    assert [item.id for item in items] == ids[:2]


@pytest.mark.parametrize(("max_items", "lease_seconds"), [(0, 30), (1001, 30), (1, 0)])
async def test_work_lease_bad_arguments(
    store: HistoryStore, max_items: int, lease_seconds: int
) -> None:
    with pytest.raises(InvalidInputError):
        await store.lease_work("a", max_items, lease_seconds)


async def test_work_lease_carries_classification(store: HistoryStore) -> None:
    response = await store.store_notification(
        load_notification("cases/r14/inbound.json"), enqueue_work=True
    )
    verdict = classification()
    await store.record_classifications(
        [
            history_pb2.ClassificationRecord(
                state_change_id=response.alerts[0].state_change_id,
                classification=verdict,
            )
        ]
    )

    items = await store.lease_work("a", 10, 30)

    assert items[0].alerts[0].classification == verdict


# Classifications.


async def test_classification_first_kept(store: HistoryStore) -> None:
    response = await store.store_notification(
        load_notification("cases/r14/inbound.json")
    )
    change_id = response.alerts[0].state_change_id
    first = history_pb2.ClassificationRecord(
        state_change_id=change_id, classification=classification("first")
    )
    second = history_pb2.ClassificationRecord(
        state_change_id=change_id, classification=classification("second")
    )

    stored = await store.record_classifications([first])
    again = await store.record_classifications([second, first])

    assert stored == 1
    assert again == 0
    occurrence = await store.get_occurrence(response.alerts[0].occurrence_id)
    assert occurrence.state_changes[0].classification == classification("first")
    assert await count(store, "classifications") == 1


async def test_classification_latest_is_newest_change_in_any_order(
    store: HistoryStore,
) -> None:
    firing = await store.store_notification(
        notification(alert_body("00000000000000a1"))
    )
    resolved = await store.store_notification(
        notification(
            alert_body("00000000000000a1", status="resolved", ends_at=LATER),
            alert_body("00000000000000a2"),
        )
    )
    older = firing.alerts[0].state_change_id
    newer = resolved.alerts[0].state_change_id
    other = resolved.alerts[1].state_change_id

    def record(change_id: int, severity: int) -> history_pb2.ClassificationRecord:
        verdict = classification()
        verdict.severity = severity  # type: ignore[assignment]
        return history_pb2.ClassificationRecord(
            state_change_id=change_id, classification=verdict
        )

    await store.record_classifications(
        [
            record(newer, alert_pb2.SEVERITY_INFO),
            record(other, alert_pb2.SEVERITY_WARNING),
            record(older, alert_pb2.SEVERITY_CRITICAL),
        ]
    )

    rows = await store.db.fetch(
        "SELECT fingerprint, latest_change_id, latest_severity FROM occurrences"
        " ORDER BY fingerprint"
    )
    assert [tuple(row) for row in rows] == [
        ("00000000000000a1", newer, "info"),
        ("00000000000000a2", other, "warning"),
    ]


async def test_classification_unknown_change_rejected(store: HistoryStore) -> None:
    record = history_pb2.ClassificationRecord(
        state_change_id=999, classification=classification()
    )

    with pytest.raises(InvalidInputError, match="999"):
        await store.record_classifications([record])


async def test_classification_missing_rejected(store: HistoryStore) -> None:
    response = await store.store_notification(
        load_notification("cases/r14/inbound.json")
    )
    record = history_pb2.ClassificationRecord(
        state_change_id=response.alerts[0].state_change_id
    )

    with pytest.raises(InvalidInputError, match="classification"):
        await store.record_classifications([record])


async def test_classification_minimal_round_trip(store: HistoryStore) -> None:
    response = await store.store_notification(
        load_notification("cases/r14/inbound.json")
    )
    verdict = alert_pb2.Classification(
        severity=alert_pb2.SEVERITY_INFO, source=alert_pb2.VERDICT_SOURCE_RULES
    )
    await store.record_classifications(
        [
            history_pb2.ClassificationRecord(
                state_change_id=response.alerts[0].state_change_id,
                classification=verdict,
            )
        ]
    )

    occurrence = await store.get_occurrence(response.alerts[0].occurrence_id)

    assert occurrence.state_changes[0].classification == verdict


# Reading.


async def test_list_newest_first(store: HistoryStore) -> None:
    for hour in (10, 12, 11):
        await store.store_notification(
            notification(alert_body(starts_at=f"2024-05-01T{hour}:00:00Z"))
        )

    page, cursor = await store.list_occurrences(limit=10)

    hours = [timestamp_to_datetime(o.starts_at).hour for o in page]
    assert hours == [12, 11, 10]
    assert cursor == ""


async def test_list_pages_with_cursor(store: HistoryStore) -> None:
    alerts = [alert_body(f"00000000000000c{i}") for i in range(5)]
    await store.store_notification(notification(*alerts))

    seen: list[int] = []
    cursor = ""
    for _ in range(5):
        page, cursor = await store.list_occurrences(limit=2, cursor=cursor)
        seen.extend(o.id for o in page)
        if not cursor:
            break

    assert len(seen) == 5
    assert seen == sorted(seen, reverse=True)


async def test_list_filters(store: HistoryStore) -> None:
    await store.store_notification(
        notification(
            alert_body("00000000000000d1", alertname="DiskFull"),
            alert_body("00000000000000d2", alertname="CpuHigh"),
            alert_body(
                "00000000000000d3",
                alertname="CpuHigh",
                status="resolved",
                ends_at="2024-05-01T10:01:00Z",
            ),
        )
    )

    by_name, _ = await store.list_occurrences(limit=10, alertname="CpuHigh")
    by_status, _ = await store.list_occurrences(limit=10, status=RESOLVED)
    by_fingerprint, _ = await store.list_occurrences(
        limit=10, fingerprint="00000000000000d1"
    )

    assert {o.fingerprint for o in by_name} == {"00000000000000d2", "00000000000000d3"}
    assert [o.fingerprint for o in by_status] == ["00000000000000d3"]
    assert [o.fingerprint for o in by_fingerprint] == ["00000000000000d1"]


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_list_bad_limit_rejected(store: HistoryStore, limit: int) -> None:
    with pytest.raises(InvalidInputError, match="limit"):
        await store.list_occurrences(limit=limit)


@pytest.mark.parametrize("cursor", ["not base64!", "bm90IGpzb24=", "WzEsIDJd"])
async def test_list_bad_cursor_rejected(store: HistoryStore, cursor: str) -> None:
    with pytest.raises(InvalidInputError, match="cursor"):
        await store.list_occurrences(limit=10, cursor=cursor)


async def test_get_unknown_occurrence(store: HistoryStore) -> None:
    with pytest.raises(NotFoundError):
        await store.get_occurrence(12345)


async def test_context_counts_last_day(store: HistoryStore, clock: FakeClock) -> None:
    clock.now = datetime(2024, 4, 29, 10, 0, tzinfo=UTC)
    await store.store_notification(
        notification(alert_body(starts_at="2024-04-29T10:00:00Z"))
    )
    clock.now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    await store.store_notification(load_notification("cases/r12/inbound.json"))
    response = await store.store_notification(
        load_notification("cases/r12/inbound_resolved.json")
    )
    await store.record_classifications(
        [
            history_pb2.ClassificationRecord(
                state_change_id=response.alerts[0].state_change_id,
                classification=classification("latest"),
            )
        ]
    )
    clock.now = datetime(2024, 5, 2, 10, 1, tzinfo=UTC)

    context = await store.get_alert_context("00000000000000c2")
    old = await store.get_alert_context("00000000000000a1")

    assert context.recent_occurrences == 1
    assert context.flap_count == 1
    assert context.last_classification.reasoning == "latest"
    assert old.recent_occurrences == 0
    assert not old.HasField("last_classification")


async def test_context_empty_fingerprint_rejected(store: HistoryStore) -> None:
    with pytest.raises(InvalidInputError, match="fingerprint"):
        await store.get_alert_context("")


# Connection failures.


async def test_database_unreachable() -> None:
    db = Database("postgresql://postgres@127.0.0.1:9/unreachable")

    with pytest.raises(UnavailableError):
        await db.connect()


async def test_parallel_writers_separate_databases(
    any_database_url: str, store: HistoryStore
) -> None:
    other = Database(any_database_url)
    await other.connect()
    try:
        body = load_notification("cases/r14/inbound.json")
        responses = await asyncio.gather(
            store.store_notification(body),
            HistoryStore(other).store_notification(body),
        )
    finally:
        await other.close()

    outcomes = sorted(r.alerts[0].outcome for r in responses)
    assert outcomes == [NEW, REPEAT]


async def test_work_release_returns_item(store: HistoryStore) -> None:
    await store.store_notification(
        load_notification("cases/r14/inbound.json"), enqueue_work=True
    )
    items = await store.lease_work("a", 10, 30)

    other = await store.release_work([items[0].id], "b")
    released = await store.release_work([items[0].id], "a")
    again = await store.lease_work("c", 10, 30)

    assert other == 0
    assert released == 1
    assert [item.id for item in again] == [items[0].id]
    assert again[0].attempts == 1
