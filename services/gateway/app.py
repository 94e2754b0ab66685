"""The HTTP gateway: Alertmanager's webhook receiver and the product's HTTP API.

The gateway owns no data. It stores each webhook through the history
service and returns the response to Alertmanager only after the commit.
Classification and publishing follow from the durable work queue
(`services.gateway.pipeline`).

Status codes toward Alertmanager: 200 once stored; 400 for a body that can
never be valid; 401 without valid credentials; 413 for a body over
WEBHOOK_MAX_BODY_BYTES; 503 for a transient failure, which Alertmanager
retries. Never 429, because Alertmanager drops a notification that gets a 429.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from libs import telemetry
from libs.alerts import STATUS_NAMES, parse_notification
from libs.batching import split_by_size
from libs.clients import ServiceClients
from libs.config import Settings
from libs.errors import AlertHistoryError, InvalidInputError
from services.gateway import (
    dashboard,
    routes_classify,
    routes_history,
    routes_publishing,
    routes_recommendations,
)
from services.gateway.access import AccessMetrics, access_middleware, list_audit
from services.gateway.keys import (
    CLIENTS_KEY,
    METRICS_KEY,
    MODE_KEY,
    PIPELINE_KEY,
    REGISTRY_KEY,
    SETTINGS_KEY,
    STATE_KEY,
    STORE_KEY,
)
from services.gateway.metrics import GatewayMetrics
from services.gateway.mode import ModeStore
from services.gateway.pipeline import Pipeline
from services.gateway.responses import json_error, not_json_message
from services.gateway.storing import NotificationStore

logger = logging.getLogger(__name__)

SERVER_NAME = "alert-history"

READ_DEADLINE = 10.0

# gRPC codes that mean "try again later", returned as 503 so Alertmanager retries.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


def _authorized(request: web.Request, settings: Settings) -> bool:
    if not settings.webhook_auth_configured():
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if settings.webhook_bearer_token is not None and scheme.lower() == "bearer":
        expected = settings.webhook_bearer_token.get_secret_value()
        return hmac.compare_digest(credentials.strip().encode(), expected.encode())
    if settings.webhook_basic_auth_username and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        secret = settings.webhook_basic_auth_password
        expected_password = secret.get_secret_value() if secret else ""
        return hmac.compare_digest(
            user.encode(), settings.webhook_basic_auth_username.encode()
        ) & hmac.compare_digest(password.encode(), expected_password.encode())
    return False


async def _read_body(request: web.Request, settings: Settings) -> bytes:
    limit = settings.webhook_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limit, actual_size=request.content_length
        )
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body.extend(chunk)
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return bytes(body)


async def _handle_webhook(request: web.Request, *, enqueue_work: bool) -> web.Response:
    endpoint = "proxy" if enqueue_work else "store"
    app = request.app
    settings = app[SETTINGS_KEY]
    metrics: GatewayMetrics = app[METRICS_KEY]
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await _webhook_response(request, settings, metrics, enqueue_work)
    metrics.webhooks.labels(endpoint, str(response.status)).inc()
    metrics.latency.labels(endpoint).observe(loop.time() - started)
    return response


async def _webhook_response(
    request: web.Request,
    settings: Settings,
    metrics: GatewayMetrics,
    enqueue_work: bool,
) -> web.Response:
    if not _authorized(request, settings):
        metrics.rejected.labels("unauthorized").inc()
        return web.json_response(
            {"status": "error", "error": "missing or invalid credentials"},
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="alert-history"'},
        )
    try:
        raw = await _read_body(request, settings)
    except web.HTTPRequestEntityTooLarge:
        metrics.rejected.labels("too_large").inc()
        logger.warning(
            "webhook body too large",
            extra={
                "content_length": request.content_length,
                "limit_bytes": settings.webhook_max_body_bytes,
            },
        )
        return json_error(
            413,
            f"body larger than {settings.webhook_max_body_bytes} bytes "
            "(WEBHOOK_MAX_BODY_BYTES)",
        )

    try:
        notification = parse_notification(json.loads(raw))
    except (ValueError, InvalidInputError) as exc:
        reason = (
            str(exc) if isinstance(exc, InvalidInputError) else not_json_message(exc)
        )
        metrics.rejected.labels("invalid").inc()
        logger.info("webhook rejected", extra={"error": reason})
        return json_error(400, reason)

    telemetry.annotate_current_span(
        receiver=notification.receiver, group_key=notification.group_key
    )
    try:
        stored = await store_notification(request.app, notification, enqueue_work)
    except InvalidInputError as exc:
        metrics.rejected.labels("invalid").inc()
        return json_error(400, str(exc))
    except grpc.aio.AioRpcError as exc:
        return _storage_error(exc, notification, metrics)

    if enqueue_work and any(a.outcome == history_pb2.STORE_OUTCOME_NEW for a in stored):
        request.app[PIPELINE_KEY].wake()
    return web.json_response(_webhook_body(stored))


def _storage_error(
    exc: grpc.aio.AioRpcError, notification: alert_pb2.Notification, metrics: Any
) -> web.Response:
    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        metrics.rejected.labels("invalid").inc()
        return json_error(400, exc.details() or "invalid notification")
    level = logging.WARNING if code in TRANSIENT_CODES else logging.ERROR
    logger.log(
        level,
        "cannot store webhook; answering 503 so Alertmanager retries",
        extra={
            "group_key": notification.group_key,
            "receiver": notification.receiver,
            "error": f"{code.name}: {(exc.details() or '')[:200]}",
        },
    )
    return json_error(503, "alert history is unavailable; retry later")


async def store_notification(
    app: web.Application, notification: alert_pb2.Notification, enqueue_work: bool
) -> list[history_pb2.StoredAlert]:
    """Store a notification, split so that each message fits the gRPC maximum."""
    settings = app[SETTINGS_KEY]
    metrics: GatewayMetrics = app[METRICS_KEY]
    envelope = alert_pb2.Notification()
    envelope.CopyFrom(notification)
    del envelope.alerts[:]

    stored: list[history_pb2.StoredAlert] = []
    for chunk in split_by_size(notification.alerts, settings.grpc_max_message_bytes):
        part = alert_pb2.Notification()
        part.CopyFrom(envelope)
        part.alerts.extend(chunk)
        response = await app[STORE_KEY].store(
            history_pb2.StoreNotificationRequest(
                notification=part,
                enqueue_work=enqueue_work,
                trace_context=telemetry.inject_context(),
            )
        )
        stored.extend(response.alerts)
    for alert in stored:
        outcome = "new" if alert.outcome == history_pb2.STORE_OUTCOME_NEW else "repeat"
        metrics.alerts.labels(outcome).inc()
        for warning in alert.warnings:
            logger.warning(
                "alert stored with a warning",
                extra={"fingerprint": alert.fingerprint, "error": warning},
            )
    return stored


def _webhook_body(stored: list[history_pb2.StoredAlert]) -> dict[str, Any]:
    alerts = []
    for alert in stored:
        entry: dict[str, Any] = {
            "fingerprint": alert.fingerprint,
            "status": STATUS_NAMES.get(alert.status, "unknown"),
            "outcome": "new"
            if alert.outcome == history_pb2.STORE_OUTCOME_NEW
            else "repeat",
            "occurrence_id": alert.occurrence_id,
        }
        if alert.warnings:
            entry["warnings"] = list(alert.warnings)
        alerts.append(entry)
    new = sum(1 for a in alerts if a["outcome"] == "new")
    return {
        "status": "success",
        "received": len(alerts),
        "new": new,
        "repeat": len(alerts) - new,
        "alerts": alerts,
    }


async def webhook(request: web.Request) -> web.Response:
    return await _handle_webhook(request, enqueue_work=False)


async def webhook_proxy(request: web.Request) -> web.Response:
    return await _handle_webhook(request, enqueue_work=True)


async def get_mode(request: web.Request) -> web.Response:
    mode, source = await request.app[MODE_KEY].get()
    return web.json_response({"mode": mode, "source": source})


async def set_mode(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return json_error(400, 'body must be JSON such as {"mode": "enriched"}')
    if not isinstance(body, dict) or not isinstance(body.get("mode"), str):
        return json_error(400, 'body must be JSON such as {"mode": "enriched"}')
    mode, source = await request.app[MODE_KEY].set(body["mode"])
    logger.info("enrichment mode set", extra={"mode": mode, "source": source})
    return web.json_response({"mode": mode, "source": source})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[STATE_KEY].get("stopping"):
        return json_error(503, "shutting down")
    return web.json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Map product and gRPC errors to JSON error responses; nothing else does."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        # aiohttp's own errors (404, 405, 413) come as text/plain, so they are
        # rewritten as the JSON error object that every route returns.
        message = exc.reason
        if exc.status == 404:
            message = f"not found: {request.path}"
        elif exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            message = f"method {request.method} not allowed, use {allowed}"
        error = json_error(exc.status, message)
        for name in ("Allow", "WWW-Authenticate", "Retry-After"):
            if name in exc.headers:
                error.headers[name] = exc.headers[name]
        return error
    except AlertHistoryError as exc:
        if isinstance(exc, InvalidInputError):
            return json_error(400, str(exc))
        return json_error(503 if exc.retryable else 500, str(exc))
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return json_error(400, exc.details() or "invalid request")
        if code == grpc.StatusCode.NOT_FOUND:
            return json_error(404, exc.details() or "not found")
        if code in (
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.ALREADY_EXISTS,
        ):
            return json_error(409, exc.details() or "conflict")
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            logger.error(
                "backend call failed",
                extra={"path": request.path, "error": f"{code.name}: {exc.details()}"},
            )
            return json_error(500, "internal error in a backend service")
        logger.warning(
            "backend call failed",
            extra={"path": request.path, "error": f"{code.name}: {exc.details()}"},
        )
        return json_error(503, "a backend service is unavailable; retry later")


async def _name_server(_: web.Request, response: web.StreamResponse) -> None:
    """Name the product in the Server header instead of Python's and aiohttp's
    versions, which tell a scanner what to try."""
    response.headers["Server"] = SERVER_NAME


def create_app(
    settings: Settings,
    clients: ServiceClients,
    registry: CollectorRegistry,
    mode_store: ModeStore,
) -> web.Application:
    """Build the aiohttp application; the caller starts and stops the pipeline."""
    # The body limit is enforced while reading (413); aiohttp's own limit only
    # has to stay out of the way.
    app = web.Application(
        middlewares=[
            telemetry.http_server_middleware(),
            access_middleware(AccessMetrics(registry)),
            error_middleware,
        ],
        client_max_size=settings.webhook_max_body_bytes + 1,
    )
    app.on_response_prepare.append(_name_server)
    app[SETTINGS_KEY] = settings
    app[CLIENTS_KEY] = clients
    app[REGISTRY_KEY] = registry
    app[METRICS_KEY] = GatewayMetrics(registry)
    app[MODE_KEY] = mode_store
    app[STATE_KEY] = {"stopping": False}

    async def current_mode() -> Any:
        return (await mode_store.get())[0]

    app[PIPELINE_KEY] = Pipeline(settings, clients, current_mode, registry)
    app[STORE_KEY] = NotificationStore(
        clients.history,
        concurrency=settings.store_concurrency,
        max_batch=settings.store_batch_size,
        max_message_bytes=settings.grpc_max_message_bytes,
    )
    app.router.add_post("/webhook", webhook)
    app.router.add_post("/webhook/proxy", webhook_proxy)
    app.router.add_get("/enrichment/mode", get_mode)
    app.router.add_post("/enrichment/mode", set_mode)
    for area in (
        routes_classify,
        routes_publishing,
        routes_history,
        routes_recommendations,
        dashboard,
    ):
        area.add_routes(app)
    app.router.add_get("/audit", list_audit)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
