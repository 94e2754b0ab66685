"""PagerDuty and Slack targets against local receivers that reply as the real
services do: retries, dead letters, resolves that follow triggers, one
delivery per alert state, rate limits and operator calls."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from libs.errors import NotFoundError
from services.publisher import operations
from services.publisher.operations import PreconditionError
from services.publisher.service import PublisherService, build_deliveries
from services.publisher.store import DeliveryRecord
from tests.fakes.kubeapi import FakeKubeApi
from tests.fakes.receiver import Receiver, RecordedRequest, Reply
from tests.publisher.conftest import (
    classification,
    fixture_request,
    make_settings,
    publish_alert,
    publish_request,
    running_publisher,
    write_targets,
)
from tests.publisher.test_discovery import LABELS, NAMESPACE, discovery_settings

ROUTING_KEY = "R0UTINGKEY0123456789abcdef012345"
NO_SERVICE = '{"status":"invalid event","message":"Not found","errors":["no_service"]}'


def pagerduty_accepted(request: RecordedRequest) -> Reply:
    """PagerDuty's response to an accepted event."""
    body = {
        "status": "success",
        "message": "Event processed",
        "dedup_key": request.body["dedup_key"],
    }
    return Reply(202, json.dumps(body), {"Content-Type": "application/json"})


def pagerduty(receiver: Receiver, name: str = "pd", **values: Any) -> dict[str, Any]:
    receiver.respond(f"/{name}", pagerduty_accepted)
    return {
        "name": name,
        "format": "pagerduty",
        "url": receiver.url(f"/{name}"),
        "routing_key": ROUTING_KEY,
        **values,
    }


def slack(receiver: Receiver, name: str = "slack", **values: Any) -> dict[str, Any]:
    receiver.respond(f"/{name}", lambda _: Reply(200, "ok"))
    return {"name": name, "format": "slack", "url": receiver.url(f"/{name}"), **values}


def resolved(item: publisher_pb2.PublishAlert) -> publisher_pb2.PublishAlert:
    copy = publisher_pb2.PublishAlert()
    copy.CopyFrom(item)
    copy.alert.status = alert_pb2.ALERT_STATUS_RESOLVED
    copy.alert.ends_at.FromSeconds(copy.alert.starts_at.seconds + 600)
    return copy


async def wait_for(
    service: PublisherService,
    batch_id: str,
    condition: Callable[[list[DeliveryRecord]], bool],
    wait_seconds: float = 10.0,
) -> list[DeliveryRecord]:
    """Poll until the batch's deliveries meet `condition`."""
    deadline = time.monotonic() + wait_seconds
    while True:
        records = await service.store.deliveries_for_batch(batch_id)
        if condition(records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries of {batch_id} still {records!r}")
        await asyncio.sleep(0.05)


def all_in(state: str, count: int = 1) -> Callable[[list[DeliveryRecord]], bool]:
    return lambda records: (
        len(records) == count and all(record.state == state for record in records)
    )


async def test_pagerduty_event_per_alert(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(sqlite_url, write_targets(tmp_path, [pagerduty(receiver)]))
    request = fixture_request(
        "webhooks/03_grouped_firing_kubepodnotready.json",
        [classification("critical")] * 4,
    )

    async with running_publisher(settings) as service:
        response = await service.publish(request)
        records = await wait_for(service, "fixture", all_in("succeeded", 4))

    bodies = [r.body for r in receiver.requests_to("/pd")]
    keys = {r.headers["Idempotency-Key"] for r in receiver.requests_to("/pd")}
    assert [(t.target, t.alerts) for t in response.targets] == [("pd", 4)]
    assert len(records) == 4
    assert len(bodies) == 4
    assert len(keys) == 4
    assert {body["event_action"] for body in bodies} == {"trigger"}
    assert len({body["dedup_key"] for body in bodies}) == 4


async def test_pagerduty_no_service_dead_at_once(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/pd", [Reply(404, NO_SERVICE)], repeat_last=True)
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [pagerduty(receiver)])
    )

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-404"))
        (record,) = await wait_for(service, "b-404", all_in("dead"))
        await asyncio.sleep(0.3)

    assert len(receiver.requests_to("/pd")) == 1
    assert record.attempts == 1
    assert record.last_status_code == 404
    assert record.last_response_body == NO_SERVICE


async def test_pagerduty_invalid_event_reason_kept(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    reason = '{"status":"invalid event","message":"Event object is invalid"}'
    receiver.script("/pd", [Reply(400, reason)])
    settings = make_settings(sqlite_url, write_targets(tmp_path, [pagerduty(receiver)]))

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-400"))
        (record,) = await wait_for(service, "b-400", all_in("dead"))

    assert record.last_response_body == reason
    assert "rejected by the target" in (record.last_error or "")


async def test_slack_retries_stop_at_maximum(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script(
        "/slack", [Reply(429, "rate_limited", {"Retry-After": "0"})], repeat_last=True
    )
    settings = make_settings(
        sqlite_url,
        write_targets(tmp_path, [slack(receiver)]),
        delivery_max_attempts=3,
    )

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-max"))
        (record,) = await wait_for(service, "b-max", all_in("dead"))
        await asyncio.sleep(0.3)

    assert len(receiver.requests_to("/slack")) == 3
    assert record.last_error == "gave up after 3 attempts: HTTP 429"


async def test_slack_retry_after_pauses_target(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/slack", [Reply(429, "rate_limited", {"Retry-After": "1"})])
    settings = make_settings(
        sqlite_url,
        write_targets(tmp_path, [slack(receiver)]),
        delivery_max_backoff_seconds=2.0,
    )

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-first", group_key="g1"))
        (limited,) = await receiver.wait_for_requests(1, "/slack")
        other = publish_alert(fingerprint="00000000000000b2")
        await service.publish(publish_request("b-other", [other], group_key="g2"))
        requests = await receiver.wait_for_requests(3, "/slack")

    later = [r for r in requests if r is not limited]
    assert min(r.monotonic for r in later) - limited.monotonic >= 0.9


async def test_rate_limit_spaces_requests(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(
        sqlite_url,
        write_targets(tmp_path, [slack(receiver, rate_limit_per_second=4)]),
        delivery_concurrency_per_target=8,
    )

    async with running_publisher(settings) as service:
        for index in range(6):
            item = publish_alert(fingerprint=f"{index:016x}")
            await service.publish(
                publish_request(f"b-rate-{index}", [item], group_key=f"g{index}")
            )
        requests = await receiver.wait_for_requests(6, "/slack")

    times = sorted(r.monotonic for r in requests)
    assert times[-1] - times[0] >= 0.4


async def test_same_state_recorded_once(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(
        any_database_url,
        write_targets(tmp_path, [pagerduty(receiver), slack(receiver)]),
    )

    async with running_publisher(settings) as service:
        first = await service.publish(publish_request("peer-a"))
        second = await service.publish(publish_request("peer-b"))
        await wait_for(service, "peer-a", all_in("succeeded", 2))
        await asyncio.sleep(0.3)
        repeated = await service.store.deliveries_for_batch("peer-b")

    assert len(first.targets) == 2
    assert list(second.targets) == []
    assert repeated == []
    assert len(receiver.requests_to("/pd")) == 1
    assert len(receiver.requests_to("/slack")) == 1


async def test_same_state_in_parallel_once(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [pagerduty(receiver)])
    )

    async with running_publisher(settings) as service:
        await asyncio.gather(
            *(service.publish(publish_request(f"par-{i}")) for i in range(6))
        )
        await receiver.wait_for_requests(1, "/pd")
        await asyncio.sleep(0.5)
        records = [
            record
            for i in range(6)
            for record in await service.store.deliveries_for_batch(f"par-{i}")
        ]

    assert len(records) == 1
    assert len(receiver.requests_to("/pd")) == 1


async def test_resolve_follows_trigger_after_filter_change(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    other_namespace = {"namespaces": ["other"]}
    path = write_targets(
        tmp_path, [pagerduty(receiver), slack(receiver, filter=other_namespace)]
    )
    trigger = publish_alert()

    async with running_publisher(make_settings(any_database_url, path)) as service:
        await service.publish(publish_request("b-trigger", [trigger]))
        await wait_for(service, "b-trigger", all_in("succeeded"))
        write_targets(
            tmp_path,
            [
                pagerduty(receiver, filter=other_namespace),
                slack(receiver, filter=other_namespace),
            ],
        )
        await service.refresh_targets()
        await service.publish(publish_request("b-resolve", [resolved(trigger)]))
        await wait_for(service, "b-resolve", all_in("succeeded"))
        await asyncio.sleep(0.3)

    first, second = (r.body for r in receiver.requests_to("/pd"))
    assert first["event_action"] == "trigger"
    assert second["event_action"] == "resolve"
    assert second["dedup_key"] == first["dedup_key"]
    assert receiver.requests_to("/slack") == []


async def test_resolve_follows_trigger_after_verdict_change(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    path = write_targets(tmp_path, [pagerduty(receiver)])
    trigger = publish_alert(severity="critical")
    ending = resolved(publish_alert(severity="noise"))

    async with running_publisher(make_settings(sqlite_url, path)) as service:
        await service.publish(publish_request("b-crit", [trigger]))
        await wait_for(service, "b-crit", all_in("succeeded"))
        await service.publish(publish_request("b-noise", [ending]))
        await wait_for(service, "b-noise", all_in("succeeded"))

    actions = [r.body["event_action"] for r in receiver.requests_to("/pd")]
    assert actions == ["trigger", "resolve"]


async def test_noise_never_reaches_pagerduty(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    path = write_targets(tmp_path, [pagerduty(receiver), slack(receiver)])
    noise = publish_alert(severity="noise")

    async with running_publisher(make_settings(sqlite_url, path)) as service:
        response = await service.publish(publish_request("b-n", [noise]))
        await wait_for(service, "b-n", all_in("succeeded"))
        await service.publish(publish_request("b-n-end", [resolved(noise)]))
        await wait_for(service, "b-n-end", all_in("succeeded"))

    assert [t.target for t in response.targets] == ["slack"]
    assert receiver.requests_to("/pd") == []


async def test_pagerduty_crash_mid_delivery_resumes(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(
        any_database_url, write_targets(tmp_path, [pagerduty(receiver)])
    )
    request = publish_request("b-pd-crash")

    async with running_publisher(settings) as service:
        await service.worker.close()
        target = service.targets.enabled()[0]
        now = datetime.now(UTC)
        deliveries = build_deliveries(request, target, list(request.alerts))
        await service.store.record_batch("b-pd-crash", 1, deliveries, now)
        await service.store.claim(
            "pd", 1, "killed-replica", now, now + timedelta(seconds=1)
        )

    async with running_publisher(settings) as service:
        (record,) = await wait_for(service, "b-pd-crash", all_in("succeeded"))

    (sent,) = receiver.requests_to("/pd")
    assert sent.body["event_action"] == "trigger"
    assert sent.body["dedup_key"] == json.loads(deliveries[0].body)["dedup_key"]
    assert record.attempts == 1


async def test_pagerduty_close_mid_delivery_resumes(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/pd", [Reply(202, delay=5.0)])
    settings = make_settings(sqlite_url, write_targets(tmp_path, [pagerduty(receiver)]))

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-pd-close"))
        await receiver.wait_for_requests(1, "/pd")

    async with running_publisher(settings) as service:
        (record,) = await wait_for(service, "b-pd-close", all_in("succeeded"))

    sent = receiver.requests_to("/pd")
    assert 1 <= len(sent) <= 2
    assert len({r.body["dedup_key"] for r in sent}) == 1
    assert record.attempts == 1


async def test_dead_letter_retry_delivers(
    any_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/slack", [Reply(400, "invalid_payload")])
    settings = make_settings(
        any_database_url,
        write_targets(tmp_path, [slack(receiver)]),
        delivery_max_attempts=1,
    )

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-dl"))
        (dead,) = await wait_for(service, "b-dl", all_in("dead"))
        listed, _ = await operations.list_deliveries(
            service.log, target="slack", state="dead", limit=0, page_token=""
        )
        retried = await operations.retry_dead_letter(service, dead.id)
        (record,) = await wait_for(service, "b-dl", all_in("succeeded"))
        attempts = await service.store.attempts(record.id)

    assert [d.id for d in listed] == [dead.id]
    assert retried.state == publisher_pb2.DELIVERY_STATE_PENDING
    assert [a.status_code for a in attempts] == [400, 200]
    assert len({r.headers["Idempotency-Key"] for r in receiver.requests}) == 1


async def test_dead_letter_discard(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/slack", [Reply(400, "invalid_payload")])
    settings = make_settings(sqlite_url, write_targets(tmp_path, [slack(receiver)]))

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-discard"))
        (dead,) = await wait_for(service, "b-discard", all_in("dead"))
        discarded = await operations.discard_dead_letter(service, dead.id)
        again = await operations.discard_dead_letter(service, dead.id)
        listed, _ = await operations.list_deliveries(
            service.log, target="", state="dead", limit=0, page_token=""
        )
        with pytest.raises(PreconditionError):
            await operations.retry_dead_letter(service, dead.id)

    assert discarded.state == publisher_pb2.DELIVERY_STATE_DISCARDED
    assert again.state == publisher_pb2.DELIVERY_STATE_DISCARDED
    assert listed == []


async def test_dead_trigger_retry_blocked_by_sent_resolve(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/pd", [Reply(400, "invalid")])
    settings = make_settings(sqlite_url, write_targets(tmp_path, [pagerduty(receiver)]))
    trigger = publish_alert()

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-t", [trigger]))
        (dead,) = await wait_for(service, "b-t", all_in("dead"))
        await service.publish(publish_request("b-r", [resolved(trigger)]))
        await wait_for(service, "b-r", all_in("succeeded"))
        with pytest.raises(PreconditionError) as caught:
            await operations.retry_dead_letter(service, dead.id)

    assert "resolve" in str(caught.value)


async def test_dead_letter_unknown_not_found(sqlite_url: str, tmp_path: Path) -> None:
    settings = make_settings(sqlite_url, None)

    async with running_publisher(settings) as service:
        with pytest.raises(NotFoundError):
            await operations.retry_dead_letter(service, 999)


async def test_stats_per_target(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/slack", [Reply(500), Reply(200, "ok")])
    receiver.script("/pd", [Reply(400, "invalid")])
    path = write_targets(tmp_path, [pagerduty(receiver), slack(receiver)])

    async with running_publisher(make_settings(sqlite_url, path)) as service:
        await service.publish(publish_request("b-stats"))
        await wait_for(
            service,
            "b-stats",
            lambda rs: len(rs) == 2 and all(r.state != "pending" for r in rs),
        )
        response = await operations.get_stats(service, publisher_pb2.GetStatsRequest())

    stats = {s.target: s for s in response.targets}
    assert stats["slack"].succeeded == 1
    assert stats["slack"].retried == 1
    assert stats["slack"].failed_attempts == 1
    assert stats["slack"].latency_p99_seconds > 0
    assert stats["pd"].dead == 1


async def test_test_alert_triggers_and_resolves(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(
        sqlite_url,
        write_targets(
            tmp_path, [pagerduty(receiver, filter={"severity": ["critical"]})]
        ),
    )

    async with running_publisher(settings) as service:
        response = await operations.send_test_alert(service, "pd", leave_firing=False)
        await receiver.wait_for_requests(2, "/pd")

    trigger, resolve = (r.body for r in receiver.requests_to("/pd"))
    assert response.attempted is True
    assert trigger["event_action"] == "trigger"
    assert trigger["payload"]["severity"] == "info"
    assert resolve["event_action"] == "resolve"
    assert resolve["dedup_key"] == trigger["dedup_key"]


async def test_test_alert_unknown_target(sqlite_url: str, tmp_path: Path) -> None:
    async with running_publisher(make_settings(sqlite_url, None)) as service:
        with pytest.raises(NotFoundError):
            await operations.send_test_alert(service, "nope", leave_firing=True)


async def test_refresh_invalid_file_keeps_targets(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    path = write_targets(tmp_path, [slack(receiver)])

    async with running_publisher(make_settings(sqlite_url, path)) as service:
        path.write_text("- name: [unclosed", encoding="utf-8")
        with pytest.raises(PreconditionError) as caught:
            await service.refresh_targets()
        names = [target.name for target in service.targets.all()]

    assert "unchanged" in str(caught.value)
    assert names == ["slack"]


async def test_refresh_counts_targets(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    path = write_targets(tmp_path, [slack(receiver)])

    async with running_publisher(make_settings(sqlite_url, path)) as service:
        write_targets(tmp_path, [slack(receiver), pagerduty(receiver, enabled=False)])
        result = await service.refresh_targets()

    assert result.targets == 2
    assert result.enabled == 1
    assert result.from_file == 2
    assert result.discovered == 0


async def test_echoed_credentials_redacted(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/pd", [Reply(400, f"bad routing_key {ROUTING_KEY}")])
    settings = make_settings(sqlite_url, write_targets(tmp_path, [pagerduty(receiver)]))

    async with running_publisher(settings) as service:
        await service.publish(publish_request("b-echo"))
        (record,) = await wait_for(service, "b-echo", all_in("dead"))

    assert ROUTING_KEY not in (record.last_response_body or "")
    assert "[redacted]" in (record.last_response_body or "")


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi(bookmark_interval_seconds=60.0) as api:
        yield api


async def test_refresh_relists_secrets_and_keeps_file(
    sqlite_url: str, tmp_path: Path, kube: FakeKubeApi, receiver: Receiver
) -> None:
    hook = {"url": receiver.url("/discovered"), "format": "webhook"}
    kube.create_secret(NAMESPACE, "hook", hook, labels=LABELS)
    path = write_targets(tmp_path, [slack(receiver)])
    settings = discovery_settings(sqlite_url, tmp_path, kube, targets_file=path)

    async with running_publisher(settings) as service:
        write_targets(tmp_path, [slack(receiver), pagerduty(receiver)])
        result = await service.refresh_targets()
        kube.update_secret(
            NAMESPACE, "hook", {**hook, "enabled": "false"}, labels=LABELS
        )
        await wait_until_disabled(service, "hook")
        names = sorted(target.name for target in service.targets.all())

    assert result.discovery is True
    assert result.from_file == 2
    assert result.discovered == 1
    assert result.discovery_errors == 0
    assert names == ["hook", "pd", "slack"]


async def wait_until_disabled(service: PublisherService, name: str) -> None:
    deadline = time.monotonic() + 10.0
    while True:
        target = service.targets.get(name)
        if target is not None and not target.enabled:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"target {name} still {target!r}")
        await asyncio.sleep(0.05)
