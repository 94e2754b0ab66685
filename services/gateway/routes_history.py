"""HTTP routes of the gateway for alert history."""

from __future__ import annotations

from aiohttp import web

from alerthistory.history.v1 import history_pb2
from libs import convert
from libs.errors import InvalidInputError
from services.gateway.keys import CLIENTS_KEY
from services.gateway.responses import json_error, query_int

READ_DEADLINE = 10.0


async def history(request: web.Request) -> web.Response:
    try:
        limit = query_int(request, "limit", 100, 1, 1000)
    except InvalidInputError as exc:
        return json_error(400, str(exc), parameter="limit")
    status = request.query.get("status", "")
    status_value = {"firing": 1, "resolved": 2, "": 0}.get(status)
    if status_value is None:
        return json_error(400, "status must be firing or resolved", parameter="status")
    response = await request.app[CLIENTS_KEY].history.ListOccurrences(
        history_pb2.ListOccurrencesRequest(
            limit=limit,
            cursor=request.query.get("cursor", ""),
            alertname=request.query.get("alertname", ""),
            fingerprint=request.query.get("fingerprint", ""),
            status=status_value,  # type: ignore[arg-type]
        ),
        timeout=READ_DEADLINE,
    )
    return web.json_response(
        {
            "occurrences": [convert.occurrence(o) for o in response.occurrences],
            "next_cursor": response.next_cursor or None,
        }
    )


def add_routes(app: web.Application) -> None:
    """Register this area's routes on the gateway application."""
    app.router.add_get("/history", history)
