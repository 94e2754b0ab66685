"""Operator calls of the publisher: the delivery log, dead letters, statistics
and test alerts, with their conversion to protobuf messages.

Nothing here returns a delivery's body or a target's URL path, query or
headers: bodies carry PagerDuty routing keys, and the rest may carry
credentials.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from libs.alerts import compute_fingerprint
from libs.errors import AlertHistoryError, InvalidInputError, NotFoundError
from services.publisher.log_store import (
    CarriedAlert,
    ListState,
    PublishingLog,
    TargetStats,
)
from services.publisher.store import AttemptRecord, DeliveryRecord

if TYPE_CHECKING:
    from services.publisher.service import PublisherService

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
DEFAULT_STATS_WINDOW = timedelta(hours=24)
# Seconds TestTarget waits beyond DELIVERY_TIMEOUT_SECONDS for the first attempt.
TEST_WAIT_MARGIN_SECONDS = 2.0
TEST_POLL_SECONDS = 0.05
TEST_ALERTNAME = "AlertHistoryTest"

_LIST_STATES: dict[int, ListState | None] = {
    publisher_pb2.DELIVERY_STATE_UNSPECIFIED: None,
    publisher_pb2.DELIVERY_STATE_PENDING: "pending",
    publisher_pb2.DELIVERY_STATE_SUCCEEDED: "succeeded",
    publisher_pb2.DELIVERY_STATE_DEAD: "dead",
    publisher_pb2.DELIVERY_STATE_DISCARDED: "discarded",
}
_ALERT_STATUSES = {
    "firing": alert_pb2.ALERT_STATUS_FIRING,
    "resolved": alert_pb2.ALERT_STATUS_RESOLVED,
}


class PreconditionError(AlertHistoryError):
    """The request is valid but the object is not in a state that allows it."""

    reason = "failed_precondition"


def page_size(limit: int) -> int:
    """Return the page size for a request's limit, or raise InvalidInputError."""
    if limit == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInputError(f"limit must be from 1 to {MAX_PAGE_SIZE}, got {limit}")
    return limit


def parse_page_token(token: str) -> int | None:
    """Return the id a page token continues below; tokens are decimal ids."""
    if not token:
        return None
    if not token.isdigit() or len(token) > 19:
        raise InvalidInputError("page_token is invalid; pass next_page_token as is")
    return int(token)


async def list_deliveries(
    log: PublishingLog,
    *,
    target: str,
    state: ListState | None,
    limit: int,
    page_token: str,
) -> tuple[list[publisher_pb2.Delivery], str]:
    """Return one page of deliveries as messages and the next page token."""
    size = page_size(limit)
    records = await log.list_deliveries(
        target=target or None,
        state=state,
        limit=size + 1,
        before_id=parse_page_token(page_token),
    )
    page = records[:size]
    carried = await log.carried_alerts([record.id for record in page])
    messages = [delivery_message(record, carried[record.id]) for record in page]
    next_token = str(page[-1].id) if len(records) > size else ""
    return messages, next_token


def list_state(state: int) -> ListState | None:
    if state not in _LIST_STATES:
        raise InvalidInputError(f"state {state} is not a DeliveryState")
    return _LIST_STATES[state]


async def get_delivery(
    service: PublisherService, delivery_id: int
) -> publisher_pb2.GetDeliveryResponse:
    """Return a delivery with its attempts, or raise NotFoundError."""
    message = await delivery_by_id(service, delivery_id)
    attempts = await service.store.attempts(delivery_id)
    return publisher_pb2.GetDeliveryResponse(
        delivery=message, attempts=[attempt_message(a) for a in attempts]
    )


async def delivery_by_id(
    service: PublisherService, delivery_id: int
) -> publisher_pb2.Delivery:
    record = await service.store.get(delivery_id)
    if record is None:
        raise NotFoundError(f"delivery {delivery_id} not found")
    carried = await service.log.carried_alerts([delivery_id])
    return delivery_message(record, carried[delivery_id])


async def retry_dead_letter(
    service: PublisherService, delivery_id: int
) -> publisher_pb2.Delivery:
    """Requeue a dead letter; raise NotFoundError or PreconditionError."""
    record = await service.store.get(delivery_id)
    if record is None:
        raise NotFoundError(f"delivery {delivery_id} not found")
    target = service.targets.get(record.target)
    if record.state == "dead" and (target is None or not target.enabled):
        raise PreconditionError(
            f"delivery {delivery_id} is for target {record.target!r}, which is not "
            "configured or not enabled; enable it, then retry"
        )
    result = await service.log.requeue_dead(delivery_id, datetime.now(UTC))
    if result.status == "not_found":
        raise NotFoundError(f"delivery {delivery_id} not found")
    if result.status == "resolved_since":
        raise PreconditionError(
            f"delivery {delivery_id} carries a trigger whose resolve is in "
            f"delivery {result.blocking_delivery_id} ({result.blocking_state}); "
            "sent alone it would open an incident that nothing resolves. Retry "
            f"delivery {result.blocking_delivery_id} first if it is dead, or "
            "discard this one"
        )
    if result.status in ("succeeded", "discarded"):
        raise PreconditionError(
            f"delivery {delivery_id} is {result.status}; only dead letters can be "
            "retried"
        )
    logger.info(
        "dead letter queued again",
        extra={"delivery_id": delivery_id, "target": record.target},
    )
    service.worker.wake()
    return await delivery_by_id(service, delivery_id)


async def discard_dead_letter(
    service: PublisherService, delivery_id: int
) -> publisher_pb2.Delivery:
    """Discard a dead letter; raise NotFoundError or PreconditionError."""
    status = await service.log.discard_dead(delivery_id, datetime.now(UTC))
    if status == "not_found":
        raise NotFoundError(f"delivery {delivery_id} not found")
    if status == "not_dead":
        raise PreconditionError(
            f"delivery {delivery_id} is not dead; only dead letters can be discarded"
        )
    if status == "discarded":
        logger.info("dead letter discarded", extra={"delivery_id": delivery_id})
    return await delivery_by_id(service, delivery_id)


async def get_stats(
    service: PublisherService, request: publisher_pb2.GetStatsRequest
) -> publisher_pb2.GetStatsResponse:
    """Return per-target statistics; configured targets appear with zeros."""
    until = (
        request.until.ToDatetime(tzinfo=UTC)
        if request.HasField("until")
        else datetime.now(UTC)
    )
    since = (
        request.since.ToDatetime(tzinfo=UTC)
        if request.HasField("since")
        else until - DEFAULT_STATS_WINDOW
    )
    if since >= until:
        raise InvalidInputError("since must be before until")
    found = await service.log.stats(since, until, request.target or None)
    for target in service.targets.all():
        if not request.target or request.target == target.name:
            found.setdefault(target.name, TargetStats(target.name, target.format))
    response = publisher_pb2.GetStatsResponse(
        since=_timestamp(since), until=_timestamp(until)
    )
    for name in sorted(found):
        response.targets.append(_stats_message(found[name]))
    return response


@dataclass(frozen=True)
class SyntheticIds:
    """Ids of the deliveries a test recorded."""

    trigger_id: int
    resolve_id: int | None


async def send_test_alert(
    service: PublisherService, name: str, leave_firing: bool
) -> publisher_pb2.TestTargetResponse:
    """Record a synthetic alert (and its resolve) for one target, then wait
    for the trigger's first attempt."""
    target = service.targets.get(name)
    if target is None:
        raise NotFoundError(f"publishing target {name!r} is not configured")
    if not target.enabled:
        raise PreconditionError(f"publishing target {name!r} is disabled")
    ids = await service.record_test(target, synthetic_requests(name, leave_firing))
    logger.info(
        "test alert recorded",
        extra={"target": name, "delivery_id": ids.trigger_id},
    )
    service.worker.wake()

    deadline = (
        time.monotonic()
        + service.settings.delivery_timeout_seconds
        + TEST_WAIT_MARGIN_SECONDS
    )
    attempted = False
    while time.monotonic() < deadline:
        record = await service.store.get(ids.trigger_id)
        if record is not None and (record.attempts > 0 or record.state != "pending"):
            attempted = True
            break
        await asyncio.sleep(TEST_POLL_SECONDS)

    response = publisher_pb2.TestTargetResponse(
        trigger=await delivery_by_id(service, ids.trigger_id), attempted=attempted
    )
    if ids.resolve_id is not None:
        response.resolve.CopyFrom(await delivery_by_id(service, ids.resolve_id))
    return response


def synthetic_requests(
    target_name: str, leave_firing: bool
) -> list[publisher_pb2.PublishRequest]:
    """Build the test's publish requests: the firing alert, then its resolve."""
    test_id = uuid.uuid4().hex[:16]
    alert = _synthetic_alert(target_name, test_id)
    notification = alert_pb2.Notification(
        version="4",
        receiver="alert-history-test",
        status=alert_pb2.ALERT_STATUS_FIRING,
        group_key=f'{{}}:{{alertname="{TEST_ALERTNAME}",test_id="{test_id}"}}',
    )
    notification.group_labels.update({"alertname": TEST_ALERTNAME, "test_id": test_id})
    verdict = alert_pb2.Classification(
        severity=alert_pb2.SEVERITY_INFO,
        confidence=1.0,
        reasoning="Synthetic test alert.",
        source=alert_pb2.VERDICT_SOURCE_RULES,
    )
    requests = [_synthetic_request(f"test-{test_id}", notification, alert, verdict)]
    if leave_firing:
        return requests

    resolved = alert_pb2.Alert()
    resolved.CopyFrom(alert)
    resolved.status = alert_pb2.ALERT_STATUS_RESOLVED
    resolved.ends_at.GetCurrentTime()
    ended = alert_pb2.Notification()
    ended.CopyFrom(notification)
    ended.status = alert_pb2.ALERT_STATUS_RESOLVED
    requests.append(
        _synthetic_request(f"test-{test_id}-resolve", ended, resolved, verdict)
    )
    return requests


def _synthetic_alert(target_name: str, test_id: str) -> alert_pb2.Alert:
    labels = {
        "alertname": TEST_ALERTNAME,
        "severity": "info",
        "target": target_name,
        "test_id": test_id,
    }
    alert = alert_pb2.Alert(
        fingerprint=compute_fingerprint(labels),
        status=alert_pb2.ALERT_STATUS_FIRING,
    )
    alert.labels.update(labels)
    alert.annotations["summary"] = (
        f"Test alert from alert-history to publishing target {target_name}"
    )
    alert.annotations["description"] = (
        "Sent by POST /publishing/test; nothing is wrong. Its resolve follows "
        "unless the test left it firing."
    )
    alert.starts_at.GetCurrentTime()
    return alert


def _synthetic_request(
    batch_id: str,
    notification: alert_pb2.Notification,
    alert: alert_pb2.Alert,
    verdict: alert_pb2.Classification,
) -> publisher_pb2.PublishRequest:
    return publisher_pb2.PublishRequest(
        batch_id=batch_id,
        notification=notification,
        alerts=[publisher_pb2.PublishAlert(alert=alert, classification=verdict)],
    )


def delivery_message(
    record: DeliveryRecord, carried: list[CarriedAlert]
) -> publisher_pb2.Delivery:
    """Convert a stored delivery to its message, without the body."""
    message = publisher_pb2.Delivery(
        id=record.id,
        batch_id=record.batch_id,
        target=record.target,
        format=record.format,
        order_key=record.group_key,
        alert_count=record.alert_count,
        state=_state(record),
        attempts=record.attempts,
        next_attempt_at=_timestamp(record.next_attempt_at),
        last_status_code=record.last_status_code or 0,
        last_error=record.last_error or "",
        last_response_body=record.last_response_body or "",
        created_at=_timestamp(record.created_at),
        alerts=[
            publisher_pb2.DeliveredAlert(
                fingerprint=alert.fingerprint,
                status=_ALERT_STATUSES.get(
                    alert.status, alert_pb2.ALERT_STATUS_UNSPECIFIED
                ),
            )
            for alert in carried
        ],
    )
    if record.completed_at is not None:
        message.completed_at.CopyFrom(_timestamp(record.completed_at))
    if record.discarded_at is not None:
        message.discarded_at.CopyFrom(_timestamp(record.discarded_at))
    return message


def attempt_message(attempt: AttemptRecord) -> publisher_pb2.DeliveryAttempt:
    return publisher_pb2.DeliveryAttempt(
        attempt=attempt.attempt,
        attempted_at=_timestamp(attempt.attempted_at),
        status_code=attempt.status_code or 0,
        error=attempt.error or "",
        response_body=attempt.response_body or "",
        duration_seconds=attempt.duration_seconds,
    )


def _state(record: DeliveryRecord) -> publisher_pb2.DeliveryState:
    if record.state == "pending":
        return publisher_pb2.DELIVERY_STATE_PENDING
    if record.state == "succeeded":
        return publisher_pb2.DELIVERY_STATE_SUCCEEDED
    if record.discarded_at is not None:
        return publisher_pb2.DELIVERY_STATE_DISCARDED
    return publisher_pb2.DELIVERY_STATE_DEAD


def _stats_message(stats: TargetStats) -> publisher_pb2.TargetStats:
    return publisher_pb2.TargetStats(
        target=stats.target,
        format=stats.format,
        pending=stats.pending,
        succeeded=stats.succeeded,
        dead=stats.dead,
        discarded=stats.discarded,
        retried=stats.retried,
        attempts=stats.attempts,
        failed_attempts=stats.failed_attempts,
        latency_mean_seconds=stats.latency_mean_seconds,
        latency_p50_seconds=stats.latency_p50_seconds,
        latency_p99_seconds=stats.latency_p99_seconds,
    )


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp
