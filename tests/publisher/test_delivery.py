"""Delivery against a real receiver, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from alerthistory.alert.v1 import alert_pb2
from services.publisher.delivery import OUTCOME_CLOSE_SECONDS, idempotency_key
from services.publisher.service import build_deliveries, create_service
from services.publisher.store import DeliveryStore
from tests.fakes.receiver import Receiver, Reply
from tests.publisher.conftest import (
    make_settings,
    publish_alert,
    publish_request,
    running_publisher,
    wait_for_delivery,
    write_targets,
)


def numbered_alert(index: int) -> Any:
    return publish_alert(fingerprint=f"{index:016x}")


def target(receiver: Receiver, name: str = "hook", **values: Any) -> dict[str, Any]:
    return {
        "name": name,
        "format": "webhook",
        "url": receiver.url(f"/{name}?token=secret"),
        "headers": {"Authorization": "Bearer test-token"},
        **values,
    }


async def test_delivery_succeeds_once(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    registry = CollectorRegistry()
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )

    async with running_publisher(settings, registry) as service:
        await service.publish(publish_request("b-ok"))
        record = await wait_for_delivery(
            service, "b-ok", lambda d: d.state == "succeeded"
        )
        attempts = await service.store.attempts(record.id)

    (request,) = receiver.requests
    assert request.path == "/hook"
    assert request.query == "token=secret"
    assert request.headers["Idempotency-Key"] == idempotency_key("b-ok", "hook", 0)
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == "Bearer test-token"
    assert request.body["alerts"][0]["fingerprint"] == "0123456789abcdef"
    assert request.body == json.loads(record.body)
    assert record.attempts == 1
    assert [a.status_code for a in attempts] == [200]
    assert (
        registry.get_sample_value(
            "alert_history_publisher_success_total",
            {"target": "hook", "format": "webhook"},
        )
        == 1.0
    )


async def test_delivery_retries_server_error(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(500, "busy"), Reply(200)])
    registry = CollectorRegistry()
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )

    async with running_publisher(settings, registry) as service:
        await service.publish(publish_request("b-500"))
        record = await wait_for_delivery(
            service, "b-500", lambda d: d.state == "succeeded"
        )
        attempts = await service.store.attempts(record.id)

    first, second = receiver.requests
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.text == second.text
    assert [a.status_code for a in attempts] == [500, 200]
    assert attempts[0].response_body == "busy"
    assert attempts[0].error == "HTTP 500"
    assert (
        registry.get_sample_value(
            "alert_history_publisher_errors_total",
            {"target": "hook", "format": "webhook"},
        )
        == 1.0
    )


async def test_nul_response_body_stored(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(500, "bad\x00body"), Reply(200)])
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-nul"))
        record = await wait_for_delivery(
            service, "b-nul", lambda d: d.state == "succeeded"
        )
        attempts = await service.store.attempts(record.id)

    assert len(receiver.requests) == 2
    assert [a.status_code for a in attempts] == [500, 200]
    assert attempts[0].response_body == "bad\ufffdbody"


async def test_simultaneous_outcomes_all_stored(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(200, delay=0.2)], repeat_last=True)
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )

    async with running_publisher(settings) as service:
        for index in range(12):
            await service.publish(
                publish_request(
                    f"b-many-{index}", [numbered_alert(index)], group_key=f"g{index}"
                )
            )
        records = [
            await wait_for_delivery(
                service, f"b-many-{index}", lambda d: d.state == "succeeded"
            )
            for index in range(12)
        ]

    assert len(receiver.requests) == 12
    assert {record.attempts for record in records} == {1}


async def test_delivery_client_error_dead(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    reason = '{"error": "invalid routing key"}'
    receiver.script("/hook", [Reply(400, reason)], repeat_last=True)
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-400"))
        record = await wait_for_delivery(service, "b-400", lambda d: d.state == "dead")
        await asyncio.sleep(0.3)
        attempts = await service.store.attempts(record.id)

    assert len(receiver.requests) == 1
    assert record.attempts == 1
    assert record.last_status_code == 400
    assert record.last_response_body == reason
    assert attempts[0].response_body == reason
    assert "rejected by the target" in (record.last_error or "")


async def test_delivery_honours_retry_after(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(429, headers={"Retry-After": "1"}), Reply(200)])
    settings = make_settings(
        any_database_url,
        write_targets(tmp_path, [target(receiver)]),
        delivery_max_backoff_seconds=2.0,
    )

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-429"))
        await wait_for_delivery(service, "b-429", lambda d: d.state == "succeeded")

    first, second = receiver.requests
    assert second.monotonic - first.monotonic >= 1.0


async def test_delivery_stops_at_max_attempts(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(503)], repeat_last=True)
    registry = CollectorRegistry()
    settings = make_settings(
        any_database_url,
        write_targets(tmp_path, [target(receiver)]),
        delivery_max_attempts=3,
    )

    async with running_publisher(settings, registry) as service:
        await service.publish(publish_request("b-dead"))
        record = await wait_for_delivery(service, "b-dead", lambda d: d.state == "dead")
        await asyncio.sleep(0.3)
        attempts = await service.store.attempts(record.id)

    assert len(receiver.requests) == 3
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert record.last_error == "gave up after 3 attempts: HTTP 503"
    assert (
        registry.get_sample_value(
            "alert_history_publisher_dead_letters_total",
            {"target": "hook", "format": "webhook"},
        )
        == 1.0
    )


async def test_delivery_connection_refused_retried(
    any_database_url: str, tmp_path: Path
) -> None:
    async with Receiver() as gone:
        url = gone.url("/hook?token=secret")
    settings = make_settings(
        any_database_url,
        write_targets(tmp_path, [{"name": "hook", "format": "webhook", "url": url}]),
        delivery_max_attempts=2,
    )

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-refused"))
        record = await wait_for_delivery(
            service, "b-refused", lambda d: d.state == "dead"
        )
        attempts = await service.store.attempts(record.id)

    assert len(attempts) == 2
    assert attempts[0].status_code is None
    assert "secret" not in (attempts[0].error or "")


async def test_publish_twice_one_request(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )

    async with running_publisher(settings) as service:
        first = await service.publish(publish_request("b-twice"))
        second = await service.publish(publish_request("b-twice"))
        await wait_for_delivery(service, "b-twice", lambda d: d.state == "succeeded")
        await asyncio.sleep(0.3)
        records = await service.store.deliveries_for_batch("b-twice")

    assert [t.created for t in first.targets] == [True]
    assert [t.created for t in second.targets] == [False]
    assert [t.alerts for t in second.targets] == [1]
    assert len(records) == 1
    assert len(receiver.requests) == 1


async def test_publish_no_match_no_request(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    registry = CollectorRegistry()
    hook = target(receiver, filter={"severity": ["critical"]})
    settings = make_settings(any_database_url, write_targets(tmp_path, [hook]))

    async with running_publisher(settings, registry) as service:
        response = await service.publish(
            publish_request("b-none", [publish_alert(severity="info")])
        )
        await asyncio.sleep(0.2)
        records = await service.store.deliveries_for_batch("b-none")

    assert list(response.targets) == []
    assert records == []
    assert receiver.requests == []
    assert (
        registry.get_sample_value(
            "alert_history_alerts_filtered_total",
            {"target": "hook", "reason": "severity"},
        )
        == 1.0
    )


async def test_slow_target_not_blocking(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/slow", [Reply(200, delay=3.0)])
    targets = [target(receiver, "slow"), target(receiver, "fast")]
    settings = make_settings(any_database_url, write_targets(tmp_path, targets))

    async with running_publisher(settings) as service:
        for index in range(3):
            await service.publish(
                publish_request(
                    f"b-slow-{index}", [numbered_alert(index)], group_key=f"g{index}"
                )
            )
        started = time.monotonic()
        await receiver.wait_for_requests(3, "/fast", wait_seconds=5.0)
        elapsed = time.monotonic() - started

    assert elapsed < 1.5


async def test_concurrency_per_target_limit(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(200, delay=0.5)], repeat_last=True)
    settings = make_settings(
        any_database_url,
        write_targets(tmp_path, [target(receiver)]),
        delivery_concurrency_per_target=2,
    )

    async with running_publisher(settings) as service:
        for index in range(3):
            await service.publish(
                publish_request(
                    f"b-limit-{index}", [numbered_alert(index)], group_key=f"g{index}"
                )
            )
        requests = await receiver.wait_for_requests(3, "/hook", wait_seconds=5.0)

    first, second, third = sorted(r.monotonic for r in requests)
    assert second - first < 0.4
    assert third - first >= 0.45


async def test_group_order_kept(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(500), Reply(200)])
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )
    firing = publish_alert(fingerprint="aaaa000000000001")
    resolved = publish_alert(fingerprint="aaaa000000000001")
    resolved.alert.status = alert_pb2.ALERT_STATUS_RESOLVED

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-order-1", [firing]))
        await service.publish(publish_request("b-order-2", [resolved]))
        await receiver.wait_for_requests(3, "/hook", wait_seconds=5.0)

    statuses = [r.body["alerts"][0]["status"] for r in receiver.requests]
    assert statuses == ["firing", "firing", "resolved"]


async def test_close_mid_delivery_resumes(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(200, delay=5.0), Reply(200)])
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-restart"))
        await receiver.wait_for_requests(1, "/hook")

    async with running_publisher(settings) as service:
        record = await wait_for_delivery(
            service, "b-restart", lambda d: d.state == "succeeded"
        )

    keys = {r.headers["Idempotency-Key"] for r in receiver.requests}
    assert 1 <= len(receiver.requests) <= 2
    assert keys == {idempotency_key("b-restart", "hook", 0)}
    assert record.attempts == 1


async def test_expired_lease_resumes(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )
    request = publish_request("b-crashed")

    async with running_publisher(settings) as service:
        await service.worker.close()
        hook = service.targets.enabled()[0]
        store: DeliveryStore = service.store
        now = datetime.now(UTC)
        await store.record_batch(
            "b-crashed", 1, build_deliveries(request, hook, list(request.alerts)), now
        )
        claimed = await store.claim(
            "hook", 1, "crashed-replica", now, now + timedelta(seconds=1)
        )

    assert len(claimed) == 1

    async with running_publisher(settings) as service:
        started = time.monotonic()
        await wait_for_delivery(service, "b-crashed", lambda d: d.state == "succeeded")
        elapsed = time.monotonic() - started

    assert len(receiver.requests) == 1
    assert elapsed >= 0.5


async def test_two_replicas_send_once(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(200, delay=0.05)], repeat_last=True)
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )
    batches = [f"b-replica-{index}" for index in range(20)]

    async with (
        running_publisher(settings) as first,
        running_publisher(settings) as second,
    ):
        for index, batch_id in enumerate(batches):
            service = first if index % 2 else second
            await service.publish(
                publish_request(
                    batch_id, [numbered_alert(index)], group_key=f"g{index % 4}"
                )
            )
        for batch_id in batches:
            await wait_for_delivery(first, batch_id, lambda d: d.state == "succeeded")
        await asyncio.sleep(0.3)

    keys = [r.headers["Idempotency-Key"] for r in receiver.requests]
    index_of = {idempotency_key(b, "hook", 0): i for i, b in enumerate(batches)}
    arrival = [index_of[key] for key in keys]
    assert len(keys) == 20
    assert len(set(keys)) == 20
    for group in range(4):
        in_group = [index for index in arrival if index % 4 == group]
        assert in_group == sorted(in_group), f"group g{group} out of order"


async def test_close_drains_short_request(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(200, delay=0.3)])
    settings = make_settings(
        sqlite_url,
        write_targets(tmp_path, [target(receiver)]),
        shutdown_grace_seconds=3.0,
    )

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-drain"))
        await receiver.wait_for_requests(1, "/hook")

    async with running_publisher(settings) as service:
        (record,) = await service.store.deliveries_for_batch("b-drain")
        await asyncio.sleep(0.2)

    assert record.state == "succeeded"
    assert len(receiver.requests) == 1


async def test_close_bounds_slow_outcome_writes(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [target(receiver)])
    )
    service = create_service(settings, CollectorRegistry())
    await service.start()
    stored = asyncio.Event()

    async def hung_finish(*args: Any) -> list[bool]:
        stored.set()
        await asyncio.sleep(60)
        return []

    service.store.finish_attempts = hung_finish  # type: ignore[method-assign,assignment]
    try:
        await service.publish(publish_request("b-hung"))
        await asyncio.wait_for(stored.wait(), 5.0)
        started = time.monotonic()
        await service.close()
        elapsed = time.monotonic() - started
    finally:
        await service.close()

    assert elapsed < OUTCOME_CLOSE_SECONDS + 2.0
    assert len(receiver.requests) == 1
