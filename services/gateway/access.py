"""API tokens and the audit log of the gateway's API.

With API_TOKENS set, every call that changes state needs one of the named
tokens as a bearer token: any POST, PUT, PATCH or DELETE except the webhooks,
which have their own credentials. Each such call is written to the audit log
with the token's name, the route and the response's status code.
With API_READ_PROTECTED, reads need a token too. Health, readiness, metrics
and the dashboard's static files stay open: they show no alert data.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from alerthistory.audit.v1 import audit_pb2
from libs.config import Settings, parse_api_tokens
from services.gateway.keys import CLIENTS_KEY, SETTINGS_KEY
from services.gateway.responses import json_error, query_int

logger = logging.getLogger(__name__)

AUDIT_DEADLINE = 5.0
READ_DEADLINE = 10.0
ANONYMOUS = "anonymous"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Paths with their own authentication or none needed.
OPEN_PATHS = frozenset(
    {"/webhook", "/webhook/proxy", "/healthz", "/readyz", "/metrics"}
)
OPEN_PREFIXES = ("/ui",)
# Keys whose values never reach the audit log.
SECRET_WORDS = ("token", "key", "secret", "password", "auth", "credential")
DETAIL_CHARACTERS = 500

ACTOR_KEY = web.RequestKey("actor", str)


class AccessMetrics:
    """Counters of rejected calls and audit failures."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejected = Counter(
            "alert_history_api_unauthorized_total",
            "API calls rejected for a missing or unknown token.",
            registry=registry,
        )
        self.audit_failures = Counter(
            "alert_history_audit_failures_total",
            "Changes whose audit event could not be written.",
            registry=registry,
        )


def _token_name(request: web.Request, tokens: dict[str, str]) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    offered = credentials.strip().encode()
    found = None
    for token, name in tokens.items():
        # Compare with every token so the time taken does not reveal which
        # prefix matched.
        if hmac.compare_digest(offered, token.encode()):
            found = name
    return found


def _needs_token(request: web.Request, settings: Settings) -> bool:
    if settings.api_tokens is None:
        return False
    if request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
        return False
    return request.method in MUTATING_METHODS or settings.api_read_protected


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: "[redacted]"
            if any(word in str(key).lower() for word in SECRET_WORDS)
            else _redacted(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redacted(item) for item in value[:20]]
    return value


async def _detail(request: web.Request) -> str:
    if not request.can_read_body and not request.body_exists:
        return ""
    try:
        raw = await request.read()
        body = json.loads(raw) if raw else None
    except (ValueError, web.HTTPException):
        return ""
    return json.dumps(_redacted(body), ensure_ascii=False)[:DETAIL_CHARACTERS]


def access_middleware(metrics: AccessMetrics) -> Any:
    """Build the middleware that checks tokens and writes the audit log."""
    tokens_cache: dict[str, dict[str, str]] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        settings = request.app[SETTINGS_KEY]
        actor = ANONYMOUS
        if _needs_token(request, settings):
            assert settings.api_tokens is not None
            secret = settings.api_tokens.get_secret_value()
            tokens = tokens_cache.setdefault(secret, parse_api_tokens(secret))
            name = _token_name(request, tokens)
            if name is None:
                metrics.rejected.inc()
                rejection = json_error(401, "missing or unknown API token")
                rejection.headers["WWW-Authenticate"] = 'Bearer realm="alert-history"'
                return rejection
            actor = name
        request[ACTOR_KEY] = actor

        response: web.StreamResponse = await handler(request)
        if request.method in MUTATING_METHODS and request.path not in OPEN_PATHS:
            await _audit(request, response.status, actor, metrics)
        return response

    return middleware


async def _audit(
    request: web.Request, status: int, actor: str, metrics: AccessMetrics
) -> None:
    route = request.match_info.route.resource
    canonical = route.canonical if route is not None else request.path
    event = audit_pb2.Event(
        actor=actor,
        action=f"{request.method} {canonical}",
        path=request.path,
        status_code=status,
        detail=await _detail(request),
    )
    try:
        await request.app[CLIENTS_KEY].audit.RecordEvent(
            audit_pb2.RecordEventRequest(event=event), timeout=AUDIT_DEADLINE
        )
    except grpc.aio.AioRpcError as exc:
        metrics.audit_failures.inc()
        logger.error(
            "cannot write audit event",
            extra={"actor": actor, "action": event.action, "error": exc.code().name},
        )


async def list_audit(request: web.Request) -> web.Response:
    """GET /audit?limit=&cursor=&actor= : the audit log, newest first."""
    limit = query_int(request, "limit", 100, 1, 1000)
    response = await request.app[CLIENTS_KEY].audit.ListEvents(
        audit_pb2.ListEventsRequest(
            limit=limit,
            cursor=request.query.get("cursor", ""),
            actor=request.query.get("actor", ""),
        ),
        timeout=READ_DEADLINE,
    )
    return web.json_response(
        {
            "events": [
                {
                    "id": event.id,
                    "occurred_at": event.occurred_at.ToJsonString(),
                    "actor": event.actor,
                    "action": event.action,
                    "path": event.path,
                    "status_code": event.status_code,
                    "detail": event.detail,
                }
                for event in response.events
            ],
            "next_cursor": response.next_cursor or None,
        }
    )
