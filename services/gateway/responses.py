"""JSON error responses and query-parameter parsing shared by the gateway's routes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from libs.errors import InvalidInputError


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response(
        {"status": "error", "error": message, **extra}, status=status
    )


def query_int(
    request: web.Request, name: str, default: int, low: int, high: int
) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise InvalidInputError(f"{name} must be from {low} to {high}")
    return value
