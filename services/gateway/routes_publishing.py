"""HTTP routes of the gateway for publishing: targets, mode, statistics, the
delivery log, dead letters, test alerts and Secret templates.

Responses never contain a delivery's body, a target's URL path or query, its
headers or its routing key: the publisher does not return them.
`STATE_CHANGING_ROUTES` lists every route here that changes state, the ones
the access middleware requires an API token for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from services.gateway.keys import CLIENTS_KEY, SETTINGS_KEY
from services.gateway.responses import json_error, query_int
from services.publisher.secret_template import secret_template, template_formats

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

READ_DEADLINE = 10.0
CHANGE_DEADLINE = 10.0
REFRESH_DEADLINE = 30.0
# Beyond DELIVERY_TIMEOUT_SECONDS, which bounds the test's wait for its
# first attempt in the publisher.
TEST_DEADLINE_MARGIN = 5.0
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500

_STATES = {
    "pending": publisher_pb2.DELIVERY_STATE_PENDING,
    "succeeded": publisher_pb2.DELIVERY_STATE_SUCCEEDED,
    "dead": publisher_pb2.DELIVERY_STATE_DEAD,
    "discarded": publisher_pb2.DELIVERY_STATE_DISCARDED,
}
_STATE_NAMES = {value: name for name, value in _STATES.items()}
_ALERT_STATUS_NAMES = {
    alert_pb2.ALERT_STATUS_FIRING: "firing",
    alert_pb2.ALERT_STATUS_RESOLVED: "resolved",
}


async def list_targets(request: web.Request) -> web.Response:
    """GET /publishing/targets: the targets, URLs cut to scheme and host."""
    response = await _publisher(request).ListTargets(
        publisher_pb2.ListTargetsRequest(), timeout=READ_DEADLINE
    )
    return web.json_response(
        {
            "metrics_only": response.metrics_only,
            "targets": [
                {
                    "name": target.name,
                    "format": target.format,
                    "endpoint": target.endpoint,
                    "enabled": target.enabled,
                    "source": target.source,
                }
                for target in response.targets
            ],
        }
    )


async def get_mode(request: web.Request) -> web.Response:
    """GET /publishing/mode: metrics-only without targets, else publishing."""
    response = await _publisher(request).ListTargets(
        publisher_pb2.ListTargetsRequest(), timeout=READ_DEADLINE
    )
    return web.json_response(
        {
            "mode": "metrics-only" if response.metrics_only else "publishing",
            "targets": len(response.targets),
            "enabled": sum(1 for target in response.targets if target.enabled),
        }
    )


async def refresh_targets(request: web.Request) -> web.Response:
    """POST /publishing/targets/refresh: reload the file, list Secrets again."""
    try:
        response = await _publisher(request).RefreshTargets(
            publisher_pb2.RefreshTargetsRequest(), timeout=REFRESH_DEADLINE
        )
    except grpc.aio.AioRpcError as exc:
        return _conflict_or_raise(exc)
    return web.json_response(
        {
            "targets": response.targets,
            "enabled": response.enabled,
            "from_file": response.from_file,
            "discovered": response.discovered,
            "metrics_only": response.metrics_only,
            "discovery": response.discovery,
            "discovery_errors": response.discovery_errors,
        }
    )


async def get_stats(request: web.Request) -> web.Response:
    """GET /publishing/stats?since=&until=&target=: per-target counts and latency."""
    try:
        since = _query_time(request, "since")
        until = _query_time(request, "until")
    except InvalidParameterError as exc:
        return exc.response()
    if since is not None and until is not None and since >= until:
        return json_error(400, "since must be before until", parameter="since")
    stats_request = publisher_pb2.GetStatsRequest(
        target=request.query.get("target", "")
    )
    if since is not None:
        stats_request.since.FromDatetime(since)
    if until is not None:
        stats_request.until.FromDatetime(until)
    response = await _publisher(request).GetStats(stats_request, timeout=READ_DEADLINE)
    return web.json_response(
        {
            "since": response.since.ToJsonString(),
            "until": response.until.ToJsonString(),
            "targets": [_stats_json(stats) for stats in response.targets],
        }
    )


async def list_deliveries(request: web.Request) -> web.Response:
    """GET /publishing/deliveries?target=&state=&limit=&page_token=: the log."""
    state_name = request.query.get("state", "")
    if state_name and state_name not in _STATES:
        return json_error(
            400,
            f"state must be one of {', '.join(_STATES)}",
            parameter="state",
        )
    response = await _publisher(request).ListDeliveries(
        publisher_pb2.ListDeliveriesRequest(
            target=request.query.get("target", ""),
            state=_STATES.get(state_name, publisher_pb2.DELIVERY_STATE_UNSPECIFIED),
            limit=query_int(request, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
            page_token=request.query.get("page_token", ""),
        ),
        timeout=READ_DEADLINE,
    )
    return web.json_response(
        {
            "deliveries": [_delivery_json(d) for d in response.deliveries],
            "next_page_token": response.next_page_token or None,
        }
    )


async def get_delivery(request: web.Request) -> web.Response:
    """GET /publishing/deliveries/{id}: one delivery with every attempt."""
    try:
        delivery_id = _path_id(request)
    except InvalidParameterError as exc:
        return exc.response()
    response = await _publisher(request).GetDelivery(
        publisher_pb2.GetDeliveryRequest(id=delivery_id), timeout=READ_DEADLINE
    )
    body = _delivery_json(response.delivery)
    body["attempt_log"] = [
        {
            "attempt": attempt.attempt,
            "attempted_at": attempt.attempted_at.ToJsonString(),
            "status_code": attempt.status_code or None,
            "error": attempt.error or None,
            "response_body": attempt.response_body,
            "duration_seconds": attempt.duration_seconds,
        }
        for attempt in response.attempts
    ]
    return web.json_response(body)


async def list_dead_letters(request: web.Request) -> web.Response:
    """GET /publishing/dead-letters?target=&limit=&page_token=: dead letters."""
    response = await _publisher(request).ListDeadLetters(
        publisher_pb2.ListDeadLettersRequest(
            target=request.query.get("target", ""),
            limit=query_int(request, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
            page_token=request.query.get("page_token", ""),
        ),
        timeout=READ_DEADLINE,
    )
    return web.json_response(
        {
            "dead_letters": [_delivery_json(d) for d in response.dead_letters],
            "next_page_token": response.next_page_token or None,
        }
    )


async def retry_dead_letter(request: web.Request) -> web.Response:
    """POST /publishing/dead-letters/{id}/retry: queue a dead letter again."""
    try:
        delivery_id = _path_id(request)
    except InvalidParameterError as exc:
        return exc.response()
    try:
        response = await _publisher(request).RetryDeadLetter(
            publisher_pb2.RetryDeadLetterRequest(id=delivery_id),
            timeout=CHANGE_DEADLINE,
        )
    except grpc.aio.AioRpcError as exc:
        return _conflict_or_raise(exc)
    return web.json_response(_delivery_json(response.delivery))


async def discard_dead_letter(request: web.Request) -> web.Response:
    """DELETE /publishing/dead-letters/{id}: discard a dead letter."""
    try:
        delivery_id = _path_id(request)
    except InvalidParameterError as exc:
        return exc.response()
    try:
        response = await _publisher(request).DiscardDeadLetter(
            publisher_pb2.DiscardDeadLetterRequest(id=delivery_id),
            timeout=CHANGE_DEADLINE,
        )
    except grpc.aio.AioRpcError as exc:
        return _conflict_or_raise(exc)
    return web.json_response(_delivery_json(response.delivery))


async def send_test_alert(request: web.Request) -> web.Response:
    """POST /publishing/test/{target}?leave_firing=: send a synthetic alert."""
    try:
        leave_firing = _query_bool(request, "leave_firing")
    except InvalidParameterError as exc:
        return exc.response()
    settings = request.app[SETTINGS_KEY]
    try:
        response = await _publisher(request).TestTarget(
            publisher_pb2.TestTargetRequest(
                target=request.match_info["target"], leave_firing=leave_firing
            ),
            timeout=settings.delivery_timeout_seconds + TEST_DEADLINE_MARGIN,
        )
    except grpc.aio.AioRpcError as exc:
        return _conflict_or_raise(exc)
    body: dict[str, Any] = {
        "attempted": response.attempted,
        "trigger": _delivery_json(response.trigger),
        "resolve": _delivery_json(response.resolve)
        if response.HasField("resolve")
        else None,
    }
    return web.json_response(body)


async def get_secret_template(request: web.Request) -> web.Response:
    """GET /publishing/secrets/template?format=: a Secret manifest in YAML."""
    target_format = request.query.get("format", "")
    formats = template_formats()
    if target_format not in formats:
        return json_error(
            400,
            f"format must be one of {', '.join(formats)}",
            parameter="format",
        )
    return web.Response(
        text=secret_template(target_format), content_type="application/yaml"
    )


# Every route of this module that changes state. The access middleware
# requires an API token for them, as for any POST, PUT, PATCH or DELETE.
STATE_CHANGING_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/publishing/targets/refresh", refresh_targets),
    ("POST", "/publishing/test/{target}", send_test_alert),
    ("POST", "/publishing/dead-letters/{id}/retry", retry_dead_letter),
    ("DELETE", "/publishing/dead-letters/{id}", discard_dead_letter),
)

READ_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/publishing/targets", list_targets),
    ("GET", "/publishing/mode", get_mode),
    ("GET", "/publishing/stats", get_stats),
    ("GET", "/publishing/deliveries", list_deliveries),
    ("GET", "/publishing/deliveries/{id}", get_delivery),
    ("GET", "/publishing/dead-letters", list_dead_letters),
    ("GET", "/publishing/secrets/template", get_secret_template),
)


def add_routes(app: web.Application) -> None:
    """Register this area's routes on the gateway application."""
    for method, path, handler in (*READ_ROUTES, *STATE_CHANGING_ROUTES):
        app.router.add_route(method, path, handler)


def _publisher(request: web.Request) -> Any:
    return request.app[CLIENTS_KEY].publisher


def _conflict_or_raise(exc: grpc.aio.AioRpcError) -> web.Response:
    """Return 409 for FAILED_PRECONDITION; re-raise anything else for the
    error middleware."""
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return json_error(409, exc.details() or "the request conflicts with the state")
    raise exc


class InvalidParameterError(Exception):
    """An invalid query or path parameter, returned as a 400 naming it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter

    def response(self) -> web.Response:
        return json_error(400, str(self), parameter=self.parameter)


def _path_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidParameterError(
            "id", f"id must be a positive whole number, got {raw[:40]!r}"
        )
    return int(raw)


def _query_time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name, "")
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidParameterError(
            name,
            f"{name} must be an RFC 3339 time with a zone, such as "
            f"2024-05-01T10:00:00Z; got {raw[:40]!r}",
        )
    return moment


def _query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidParameterError(name, f"{name} must be true or false")
    return raw in ("true", "1")


def _time_or_none(stamp: Timestamp, present: bool) -> str | None:
    return stamp.ToJsonString() if present else None


def _delivery_json(delivery: publisher_pb2.Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "batch_id": delivery.batch_id,
        "target": delivery.target,
        "format": delivery.format,
        "order_key": delivery.order_key,
        "state": _STATE_NAMES.get(delivery.state, "unspecified"),
        "alert_count": delivery.alert_count,
        "alerts": [
            {
                "fingerprint": alert.fingerprint,
                "status": _ALERT_STATUS_NAMES.get(alert.status, "unspecified"),
            }
            for alert in delivery.alerts
        ],
        "attempts": delivery.attempts,
        "next_attempt_at": _time_or_none(
            delivery.next_attempt_at,
            delivery.state == publisher_pb2.DELIVERY_STATE_PENDING,
        ),
        "last_status_code": delivery.last_status_code or None,
        "last_error": delivery.last_error or None,
        "last_response_body": delivery.last_response_body or None,
        "created_at": delivery.created_at.ToJsonString(),
        "completed_at": _time_or_none(
            delivery.completed_at, delivery.HasField("completed_at")
        ),
        "discarded_at": _time_or_none(
            delivery.discarded_at, delivery.HasField("discarded_at")
        ),
    }


def _stats_json(stats: publisher_pb2.TargetStats) -> dict[str, Any]:
    return {
        "target": stats.target,
        "format": stats.format,
        "succeeded": stats.succeeded,
        "failed": stats.failed_attempts,
        "dead": stats.dead,
        "discarded": stats.discarded,
        "pending": stats.pending,
        "retried": stats.retried,
        "attempts": stats.attempts,
        "latency_seconds": {
            "mean": stats.latency_mean_seconds,
            "p50": stats.latency_p50_seconds,
            "p99": stats.latency_p99_seconds,
        },
    }
