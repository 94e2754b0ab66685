"""JSON error responses and query-parameter parsing shared by the gateway's routes."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from libs.errors import InvalidInputError


def not_json_message(exc: ValueError) -> str:
    """Describe why a body is not JSON, with the position of the first error."""
    if isinstance(exc, json.JSONDecodeError):
        return f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return "body is not JSON"


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
