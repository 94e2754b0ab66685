"""HTTP routes of the gateway for the recommender's recommendations.

`POST /recommendations/generate` returns 409 while another generation runs
on any replica, as the recommender's lock decides. A parameter that is invalid
gets a 400 whose `parameter` field names it, and an unknown id a 404.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from aiohttp import web

from alerthistory.history.v1 import history_pb2
from alerthistory.recommender.v1 import recommender_pb2
from libs import convert
from libs.errors import InvalidInputError
from services.gateway.keys import CLIENTS_KEY
from services.gateway.responses import json_error, query_int

READ_DEADLINE = 10.0
GENERATE_DEADLINE = 120.0
UPDATE_DEADLINE = 5.0

STATUS_VALUES = {
    "pending": recommender_pb2.RECOMMENDATION_STATUS_PENDING,
    "applied": recommender_pb2.RECOMMENDATION_STATUS_APPLIED,
    "rejected": recommender_pb2.RECOMMENDATION_STATUS_REJECTED,
}
STATUS_NAMES = {value: name for name, value in STATUS_VALUES.items()}
CONFIG_FIELDS = tuple(f.name for f in recommender_pb2.AlertConfig.DESCRIPTOR.fields)


def _enum_text(enum: Any, value: int, prefix: str) -> str | None:
    """Return "prometheus" for CONFIG_SOURCE_PROMETHEUS; None for 0 or unknown."""
    if value == 0 or value not in enum.values():
        return None
    return str(enum.Name(value)).removeprefix(prefix).lower()


def _source(value: int) -> str | None:
    return _enum_text(recommender_pb2.ConfigSource, value, "CONFIG_SOURCE_")


def _config(config: recommender_pb2.AlertConfig) -> dict[str, str | None]:
    return {name: getattr(config, name) or None for name in CONFIG_FIELDS}


def _statistics(statistics: history_pb2.AlertStatistics) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for field in statistics.DESCRIPTOR.fields:
        if field.message_type is not None:
            result[field.name] = convert.time_text(statistics, field.name)
        else:
            result[field.name] = getattr(statistics, field.name)
    return result


def recommendation_json(item: recommender_pb2.Recommendation) -> dict[str, Any]:
    """Return a Recommendation as the HTTP API shows it."""
    return {
        "id": item.id,
        "alert_name": item.alert_name,
        "namespace": item.namespace,
        "status": STATUS_NAMES.get(item.status),
        "problems": [
            _enum_text(recommender_pb2.Problem, problem, "PROBLEM_")
            for problem in item.problems
        ],
        "reasons": list(item.reasons),
        "current": _config(item.current),
        "recommended": _config(item.recommended),
        "confidence": round(item.confidence, 3),
        "config_source": _source(item.config_source),
        "rule_config_source": _source(item.rule_config_source),
        "route_config_source": _source(item.route_config_source),
        "origin": _enum_text(recommender_pb2.Origin, item.origin, "ORIGIN_"),
        "model": item.model or None,
        "fallback_reason": item.fallback_reason or None,
        "reasoning": item.reasoning,
        "impact_estimate": item.impact_estimate,
        "snippet": item.snippet,
        "statistics": _statistics(item.statistics),
        "window_since": convert.time_text(item, "window_since"),
        "window_until": convert.time_text(item, "window_until"),
        "created_at": convert.time_text(item, "created_at"),
        "updated_at": convert.time_text(item, "updated_at"),
    }


def _status_value(raw: Any, parameter: str) -> int | web.Response:
    if not isinstance(raw, str) or raw not in STATUS_VALUES:
        return json_error(
            400,
            f"{parameter} must be pending, applied or rejected",
            parameter=parameter,
        )
    return STATUS_VALUES[raw]


async def list_recommendations(request: web.Request) -> web.Response:
    try:
        limit = query_int(request, "limit", 100, 1, 1000)
    except InvalidInputError as exc:
        return json_error(400, str(exc), parameter="limit")
    status = 0
    if request.query.get("status"):
        checked = _status_value(request.query["status"], "status")
        if isinstance(checked, web.Response):
            return checked
        status = checked
    message = recommender_pb2.ListRecommendationsRequest(
        alert_name=request.query.get("alert_name", ""),
        namespace=request.query.get("namespace", ""),
        status=status,  # type: ignore[arg-type]
        limit=limit,
        cursor=request.query.get("cursor", ""),
    )
    try:
        response = await request.app[CLIENTS_KEY].recommender.ListRecommendations(
            message, timeout=READ_DEADLINE
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return json_error(
                400, exc.details() or "cursor is invalid", parameter="cursor"
            )
        raise
    return web.json_response(
        {
            "recommendations": [
                recommendation_json(r) for r in response.recommendations
            ],
            "next_cursor": response.next_cursor or None,
        }
    )


async def _window_hours(request: web.Request) -> int | web.Response:
    """Return window_hours from the query or a JSON body; 0 means the default."""
    raw: Any = request.query.get("window_hours")
    if raw is None and request.can_read_body:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return json_error(400, "body must be a JSON object", parameter="body")
        if not isinstance(body, dict):
            return json_error(400, "body must be a JSON object", parameter="body")
        raw = body.get("window_hours")
    if raw is None:
        return 0
    try:
        hours = int(raw)
    except (TypeError, ValueError):
        hours = -1
    if isinstance(raw, bool) or not 1 <= hours <= 24 * 90:
        return json_error(
            400,
            "window_hours must be a whole number from 1 to 2160",
            parameter="window_hours",
        )
    return hours


async def generate(request: web.Request) -> web.Response:
    hours = await _window_hours(request)
    if isinstance(hours, web.Response):
        return hours
    response = await request.app[CLIENTS_KEY].recommender.GenerateRecommendations(
        recommender_pb2.GenerateRecommendationsRequest(window_hours=hours),
        timeout=GENERATE_DEADLINE,
    )
    if response.already_running:
        return json_error(
            409,
            "a generation is already running; retry when it has finished",
            already_running=True,
        )
    return web.json_response(
        {
            "analyzed": response.analyzed,
            "flagged": response.flagged,
            "created": response.created,
            "updated": response.updated,
            "unchanged": response.unchanged,
            "from_model": response.from_model,
            "from_rules": response.from_rules,
            "rule_config_source": _source(response.rule_config_source),
            "route_config_source": _source(response.route_config_source),
            "window_since": convert.time_text(response, "window_since"),
            "window_until": convert.time_text(response, "window_until"),
        }
    )


async def update_status(request: web.Request) -> web.Response:
    raw_id = request.match_info["id"]
    if not raw_id.isdigit() or int(raw_id) < 1:
        return json_error(400, "id must be a positive whole number", parameter="id")
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return json_error(400, "body must be a JSON object", parameter="body")
    if not isinstance(body, dict):
        return json_error(400, "body must be a JSON object", parameter="body")
    status = _status_value(body.get("status"), "status")
    if isinstance(status, web.Response):
        return status
    response = await request.app[CLIENTS_KEY].recommender.UpdateRecommendationStatus(
        recommender_pb2.UpdateRecommendationStatusRequest(
            id=int(raw_id),
            status=status,  # type: ignore[arg-type]
        ),
        timeout=UPDATE_DEADLINE,
    )
    return web.json_response(recommendation_json(response.recommendation))


def add_routes(app: web.Application) -> None:
    """Register this area's routes on the gateway application."""
    app.router.add_get("/recommendations", list_recommendations)
    app.router.add_post("/recommendations/generate", generate)
    app.router.add_patch("/recommendations/{id}/status", update_status)
