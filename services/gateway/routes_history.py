"""HTTP routes of the gateway for alert history and its reports.

`GET /history` filters `severity` on the alert's severity label, as the
alerting rule set it, and `GET /history/enriched` on the final severity of
the occurrence's latest classification. Both filter `min_confidence` on the
latest classification, so it leaves out unclassified occurrences, and
`since` and `until` on the occurrence's start time. A parameter that is
invalid gets a 400 whose `parameter` field names it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from libs import convert
from libs.alerts import datetime_to_timestamp, format_time, parse_time
from libs.errors import InvalidInputError
from services.gateway.keys import CLIENTS_KEY
from services.gateway.responses import json_error, query_int

READ_DEADLINE = 10.0
REPORT_DEADLINE = 30.0
DEFAULT_REPORT_WINDOW = timedelta(hours=24)

STATUS_VALUES = {
    "firing": alert_pb2.ALERT_STATUS_FIRING,
    "resolved": alert_pb2.ALERT_STATUS_RESOLVED,
}
SEVERITY_VALUES = {
    "critical": alert_pb2.SEVERITY_CRITICAL,
    "warning": alert_pb2.SEVERITY_WARNING,
    "info": alert_pb2.SEVERITY_INFO,
    "noise": alert_pb2.SEVERITY_NOISE,
}
TOP_ORDERS = {
    "occurrences": history_pb2.TOP_ALERTS_ORDER_OCCURRENCES,
    "state_changes": history_pb2.TOP_ALERTS_ORDER_STATE_CHANGES,
}


class BadParameter(Exception):
    """A query parameter is invalid; the message gives the reason."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        return query_int(request, name, default, low, high)
    except InvalidInputError as exc:
        raise BadParameter(name, str(exc)) from None


def _choice(request: web.Request, name: str, choices: dict[str, Any]) -> Any:
    raw = request.query.get(name, "")
    if not raw:
        return 0
    if raw not in choices:
        raise BadParameter(name, f"{name} must be one of {', '.join(choices)}")
    return choices[raw]


def _time(request: web.Request, name: str) -> Timestamp | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        stamp = parse_time(raw, name)
    except InvalidInputError as exc:
        raise BadParameter(name, str(exc)) from None
    if stamp is None:
        raise BadParameter(name, f"{name} must be a time after year 1")
    return stamp


def _confidence(request: web.Request) -> float:
    raw = request.query.get("min_confidence", "")
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise BadParameter(
            "min_confidence", "min_confidence must be a number from 0 to 1"
        )
    return value


def _check_order(since: Timestamp | None, until: Timestamp | None) -> None:
    if since is None or until is None:
        return
    if since.ToNanoseconds() >= until.ToNanoseconds():
        raise BadParameter("since", "since must be before until")


def _window(request: web.Request) -> tuple[Timestamp | None, Timestamp | None]:
    since = _time(request, "since")
    until = _time(request, "until")
    _check_order(since, until)
    return since, until


def _report_window(request: web.Request) -> tuple[Timestamp, Timestamp]:
    """Return since and until, by default the 24 hours up to now."""
    since, until = _window(request)
    if until is None:
        until = datetime_to_timestamp(datetime.now(UTC))
    if since is None:
        since = datetime_to_timestamp(until.ToDatetime(UTC) - DEFAULT_REPORT_WINDOW)
    _check_order(since, until)
    return since, until


def list_request(
    request: web.Request, *, enriched: bool
) -> history_pb2.ListOccurrencesRequest:
    """Build the ListOccurrences request of /history or /history/enriched."""
    since, until = _window(request)
    message = history_pb2.ListOccurrencesRequest(
        limit=_int(request, "limit", 100, 1, 1000),
        cursor=request.query.get("cursor", ""),
        alertname=request.query.get("alertname", ""),
        fingerprint=request.query.get("fingerprint", ""),
        namespace=request.query.get("namespace", ""),
        status=_choice(request, "status", STATUS_VALUES),
        min_confidence=_confidence(request),
    )
    if enriched:
        message.classified_severity = _choice(request, "severity", SEVERITY_VALUES)
    else:
        message.severity_label = request.query.get("severity", "")
    if since is not None:
        message.since.CopyFrom(since)
    if until is not None:
        message.until.CopyFrom(until)
    return message


def occurrence_json(
    occurrence: history_pb2.Occurrence, *, enriched: bool
) -> dict[str, Any]:
    item = convert.occurrence(occurrence)
    if enriched:
        latest = None
        if occurrence.HasField("latest_classification"):
            latest = convert.classification(occurrence.latest_classification)
        item["classification"] = latest
        item["final_severity"] = latest["severity"] if latest else None
    return item


def _bad_argument(
    exc: grpc.aio.AioRpcError, parameters: tuple[str, ...]
) -> web.Response | None:
    """Return a 400 naming the parameter an INVALID_ARGUMENT names, if any."""
    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    details = exc.details() or "invalid request"
    named = next((p for p in parameters if details.startswith(p)), None)
    if named is None:
        return None
    return json_error(400, details, parameter=named)


async def _list(request: web.Request, *, enriched: bool) -> web.Response:
    try:
        message = list_request(request, enriched=enriched)
        response = await request.app[CLIENTS_KEY].history.ListOccurrences(
            message, timeout=READ_DEADLINE
        )
    except BadParameter as exc:
        return json_error(400, str(exc), parameter=exc.parameter)
    except grpc.aio.AioRpcError as exc:
        answer = _bad_argument(exc, ("cursor", "limit", "since", "min_confidence"))
        if answer is None:
            raise
        return answer
    return web.json_response(
        {
            "occurrences": [
                occurrence_json(o, enriched=enriched) for o in response.occurrences
            ],
            "next_cursor": response.next_cursor or None,
        }
    )


async def history(request: web.Request) -> web.Response:
    return await _list(request, enriched=False)


async def history_enriched(request: web.Request) -> web.Response:
    return await _list(request, enriched=True)


async def timeline(request: web.Request) -> web.Response:
    fingerprint = request.match_info["fingerprint"]
    try:
        message = history_pb2.GetTimelineRequest(
            fingerprint=fingerprint,
            limit=_int(request, "limit", 100, 1, 1000),
            cursor=request.query.get("cursor", ""),
        )
        response = await request.app[CLIENTS_KEY].history.GetTimeline(
            message, timeout=READ_DEADLINE
        )
    except BadParameter as exc:
        return json_error(400, str(exc), parameter=exc.parameter)
    except grpc.aio.AioRpcError as exc:
        answer = _bad_argument(exc, ("cursor", "limit"))
        if answer is None:
            raise
        return answer
    return web.json_response(
        {
            "fingerprint": fingerprint,
            "total_occurrences": response.total_occurrences,
            "total_state_changes": response.total_state_changes,
            "occurrences": [
                occurrence_json(o, enriched=True) for o in response.occurrences
            ],
            "next_cursor": response.next_cursor or None,
        }
    )


def _window_json(since: Timestamp, until: Timestamp) -> dict[str, Any]:
    return {
        "since": format_time(since.ToDatetime(UTC)),
        "until": format_time(until.ToDatetime(UTC)),
    }


async def top_alerts(request: web.Request) -> web.Response:
    try:
        since, until = _report_window(request)
        message = history_pb2.GetTopAlertsRequest(
            since=since,
            until=until,
            limit=_int(request, "limit", 20, 1, 1000),
            order_by=_choice(request, "by", TOP_ORDERS),
        )
    except BadParameter as exc:
        return json_error(400, str(exc), parameter=exc.parameter)
    response = await request.app[CLIENTS_KEY].history.GetTopAlerts(
        message, timeout=REPORT_DEADLINE
    )
    alerts = [
        {
            "alertname": a.alertname,
            "namespace": a.namespace,
            "occurrences": a.occurrences,
            "state_changes": a.state_changes,
            "fingerprints": a.fingerprints,
            "deliveries": a.deliveries,
        }
        for a in response.alerts
    ]
    return web.json_response({**_window_json(since, until), "alerts": alerts})


async def flapping(request: web.Request) -> web.Response:
    try:
        since, until = _report_window(request)
        message = history_pb2.GetFlappingAlertsRequest(
            since=since,
            until=until,
            min_state_changes=_int(request, "min_state_changes", 4, 1, 1_000_000),
            limit=_int(request, "limit", 50, 1, 1000),
        )
    except BadParameter as exc:
        return json_error(400, str(exc), parameter=exc.parameter)
    response = await request.app[CLIENTS_KEY].history.GetFlappingAlerts(
        message, timeout=REPORT_DEADLINE
    )
    alerts = [
        {
            "fingerprint": a.fingerprint,
            "alertname": a.alertname,
            "namespace": a.namespace,
            "state_changes": a.state_changes,
            "occurrences": a.occurrences,
            "first_change_at": convert.time_text(a, "first_change_at"),
            "last_change_at": convert.time_text(a, "last_change_at"),
        }
        for a in response.alerts
    ]
    return web.json_response({**_window_json(since, until), "alerts": alerts})


async def time_to_resolve(request: web.Request) -> web.Response:
    try:
        since, until = _report_window(request)
        message = history_pb2.GetTimeToResolveRequest(
            since=since,
            until=until,
            alertname=request.query.get("alertname", ""),
            limit=_int(request, "limit", 50, 1, 1000),
        )
    except BadParameter as exc:
        return json_error(400, str(exc), parameter=exc.parameter)
    response = await request.app[CLIENTS_KEY].history.GetTimeToResolve(
        message, timeout=REPORT_DEADLINE
    )
    alerts = [
        {
            "alertname": a.alertname,
            "count": a.resolved,
            "p50_seconds": round(a.p50_seconds, 3),
            "p90_seconds": round(a.p90_seconds, 3),
            "max_seconds": round(a.max_seconds, 3),
        }
        for a in response.alerts
    ]
    return web.json_response({**_window_json(since, until), "alerts": alerts})


def add_routes(app: web.Application) -> None:
    """Register this area's routes on the gateway application."""
    app.router.add_get("/history", history)
    app.router.add_get("/history/enriched", history_enriched)
    app.router.add_get("/history/{fingerprint}", timeline)
    app.router.add_get("/reports/top-alerts", top_alerts)
    app.router.add_get("/reports/flapping", flapping)
    app.router.add_get("/reports/time-to-resolve", time_to_resolve)
