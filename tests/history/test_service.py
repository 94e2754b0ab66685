"""The history service over gRPC, in process, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
import pytest
from prometheus_client import CollectorRegistry

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2, history_pb2_grpc
from libs.config import load_settings
from libs.grpcserver import RunningService, start_service
from services.history import audit
from services.history.migrations import MIGRATIONS
from services.history.service import create_service, run_migrations
from tests.fakes.tcpproxy import TcpProxy
from tests.history.conftest import load_notification


@dataclass
class Running:
    stub: history_pb2_grpc.HistoryServiceStub
    registry: CollectorRegistry


async def _start(
    url: str, **environ: str
) -> tuple[RunningService, grpc.aio.Channel, CollectorRegistry]:
    settings = load_settings(
        {"DATABASE_URL": url, "MIGRATE_ON_START": "true", **environ}
    )
    registry = CollectorRegistry()
    service = create_service(settings, registry)
    running = await start_service(service, settings, registry, port=0, host="127.0.0.1")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return running, channel, registry


@pytest.fixture
async def server(any_database_url: str) -> AsyncIterator[Running]:
    running, channel, registry = await _start(any_database_url)
    try:
        yield Running(history_pb2_grpc.HistoryServiceStub(channel), registry)
    finally:
        await channel.close()
        await running.stop()


async def test_service_store_and_read(server: Running) -> None:
    stub = server.stub
    request = history_pb2.StoreNotificationRequest(
        notification=load_notification("cases/r12/inbound.json"),
        enqueue_work=True,
        trace_context={"traceparent": "00-abc-def-01"},
    )

    stored = await stub.StoreNotification(request, timeout=10)
    repeat = await stub.StoreNotification(request, timeout=10)
    listed = await stub.ListOccurrences(
        history_pb2.ListOccurrencesRequest(limit=10), timeout=10
    )
    got = await stub.GetOccurrence(
        history_pb2.GetOccurrenceRequest(id=stored.alerts[0].occurrence_id), timeout=5
    )

    assert stored.alerts[0].outcome == history_pb2.STORE_OUTCOME_NEW
    assert repeat.alerts[0].outcome == history_pb2.STORE_OUTCOME_REPEAT
    assert [o.id for o in listed.occurrences] == [stored.alerts[0].occurrence_id]
    assert got.occurrence.deliveries == 2
    assert len(got.occurrence.state_changes) == 1


async def test_service_work_cycle(server: Running) -> None:
    stub = server.stub
    stored = await stub.StoreNotification(
        history_pb2.StoreNotificationRequest(
            notification=load_notification("cases/r14/inbound.json"),
            enqueue_work=True,
        ),
        timeout=10,
    )
    verdict = alert_pb2.Classification(
        severity=alert_pb2.SEVERITY_CRITICAL, reasoning="disk full"
    )

    leased = await stub.LeaseWork(
        history_pb2.LeaseWorkRequest(owner="test", max_items=5, lease_seconds=30),
        timeout=5,
    )
    recorded = await stub.RecordClassifications(
        history_pb2.RecordClassificationsRequest(
            records=[
                history_pb2.ClassificationRecord(
                    state_change_id=stored.alerts[0].state_change_id,
                    classification=verdict,
                )
            ]
        ),
        timeout=5,
    )
    completed = await stub.CompleteWork(
        history_pb2.CompleteWorkRequest(ids=[stored.work_item_id]), timeout=5
    )
    context = await stub.GetAlertContext(
        history_pb2.GetAlertContextRequest(fingerprint="00000000000000e1"), timeout=2
    )

    assert [item.id for item in leased.items] == [stored.work_item_id]
    assert recorded.stored == 1
    assert completed.completed == 1
    assert context.last_classification.reasoning == "disk full"


async def test_service_metrics_count_outcomes(server: Running) -> None:
    request = history_pb2.StoreNotificationRequest(
        notification=load_notification("cases/r16/inbound.json"), enqueue_work=True
    )

    await server.stub.StoreNotification(request, timeout=10)
    await server.stub.StoreNotification(request, timeout=10)

    registry = server.registry
    new = registry.get_sample_value(
        "alert_history_alerts_stored_total", {"outcome": "new"}
    )
    repeat = registry.get_sample_value(
        "alert_history_alerts_stored_total", {"outcome": "repeat"}
    )
    enqueued = registry.get_sample_value("alert_history_work_items_enqueued_total")
    assert new == 2
    assert repeat == 2
    assert enqueued == 1


async def test_service_store_notifications_each_result(server: Running) -> None:
    good = history_pb2.StoreNotificationRequest(
        notification=load_notification("cases/r16/inbound.json"), enqueue_work=True
    )
    bad = history_pb2.StoreNotificationRequest(
        notification=load_notification("cases/r14/inbound.json")
    )
    bad.notification.alerts[0].fingerprint = ""

    response = await server.stub.StoreNotifications(
        history_pb2.StoreNotificationsRequest(requests=[good, bad, good]), timeout=10
    )

    first, failed, repeat = response.results
    assert first.code == 0
    assert [a.outcome for a in first.response.alerts] == [
        history_pb2.STORE_OUTCOME_NEW
    ] * 2
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "fingerprint" in failed.message
    assert not failed.HasField("response")
    assert [a.outcome for a in repeat.response.alerts] == [
        history_pb2.STORE_OUTCOME_REPEAT
    ] * 2
    assert repeat.response.work_item_id == 0
    new = server.registry.get_sample_value(
        "alert_history_alerts_stored_total", {"outcome": "new"}
    )
    assert new == 2


@pytest.mark.parametrize("count", [0, 501])
async def test_service_store_notifications_count_invalid(
    server: Running, count: int
) -> None:
    request = history_pb2.StoreNotificationRequest(
        notification=load_notification("cases/r16/inbound.json")
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.StoreNotifications(
            history_pb2.StoreNotificationsRequest(requests=[request] * count),
            timeout=10,
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1 to 500" in (raised.value.details() or "")


async def test_service_limit_zero_invalid(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.ListOccurrences(
            history_pb2.ListOccurrencesRequest(limit=0), timeout=10
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in (raised.value.details() or "")


async def test_service_bad_cursor_invalid(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.ListOccurrences(
            history_pb2.ListOccurrencesRequest(limit=10, cursor="%%%"), timeout=10
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cursor" in (raised.value.details() or "")


async def test_service_unknown_id_not_found(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.GetOccurrence(
            history_pb2.GetOccurrenceRequest(id=424242), timeout=5
        )

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_service_alert_without_fingerprint_invalid(server: Running) -> None:
    notification = load_notification("cases/r14/inbound.json")
    notification.alerts[0].fingerprint = ""

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.StoreNotification(
            history_pb2.StoreNotificationRequest(notification=notification), timeout=10
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_service_database_lost_unavailable(pg_url: str) -> None:
    target = urlsplit(pg_url)
    async with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        user = f"{target.username}@" if target.username else ""
        proxied = target._replace(netloc=f"{user}127.0.0.1:{proxy.port}").geturl()
        running, channel, _ = await _start(proxied)
        try:
            stub = history_pb2_grpc.HistoryServiceStub(channel)
            proxy.cut()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.ListOccurrences(
                    history_pb2.ListOccurrencesRequest(limit=10), timeout=10
                )
        finally:
            await channel.close()
            await running.stop()

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_run_migrations_applies_once(any_database_url: str) -> None:
    settings = load_settings({"DATABASE_URL": any_database_url})

    first = await run_migrations(settings)
    second = await run_migrations(settings)

    assert first == len(MIGRATIONS) + len(audit.MIGRATIONS)
    assert second == 0


async def test_service_lease_fits_message_limit(any_database_url: str) -> None:
    running, channel, _ = await _start(
        any_database_url, GRPC_MAX_MESSAGE_BYTES=str(64 * 1024)
    )
    try:
        stub = history_pb2_grpc.HistoryServiceStub(channel)
        for index in range(3):
            notification = load_notification("cases/r14/inbound.json")
            notification.alerts[0].fingerprint = f"00000000000000f{index}"
            notification.alerts[0].annotations["description"] = "x" * 30_000
            await stub.StoreNotification(
                history_pb2.StoreNotificationRequest(
                    notification=notification, enqueue_work=True
                ),
                timeout=10,
            )
        request = history_pb2.LeaseWorkRequest(
            owner="test", max_items=10, lease_seconds=30
        )
        first = await stub.LeaseWork(request, timeout=5)
        second = await stub.LeaseWork(request, timeout=5)
    finally:
        await channel.close()
        await running.stop()

    assert len(first.items) == 2
    assert len(second.items) == 1
    assert second.items[0].attempts == 1
