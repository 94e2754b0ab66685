"""The history gRPC service: a thin servicer over `HistoryStore`.

Every RPC maps the store's `libs.errors` exceptions to status codes with
`libs.grpcserver.abort_with`, so a database outage reaches callers as
UNAVAILABLE and bad input as INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import NoReturn

import grpc
from prometheus_client import CollectorRegistry, Counter

from alerthistory.audit.v1 import audit_pb2_grpc
from alerthistory.history.v1 import history_pb2, history_pb2_grpc
from libs.config import Settings
from libs.db import Database, database_url, migrate
from libs.errors import AlertHistoryError, InvalidInputError, UnavailableError
from libs.grpcserver import abort_with, error_status
from services.history import audit, queries
from services.history.migrations import COMPONENT, MIGRATIONS
from services.history.retention import Retention, RetentionMetrics
from services.history.store import HistoryStore, StoreItem

logger = logging.getLogger(__name__)

SERVICE_NAME = history_pb2.DESCRIPTOR.services_by_name["HistoryService"].full_name

# Requests per StoreNotifications call.
MAX_STORE_REQUESTS = 500

_OUTCOME_LABELS = {
    history_pb2.STORE_OUTCOME_NEW: "new",
    history_pb2.STORE_OUTCOME_REPEAT: "repeat",
}


class HistoryMetrics:
    """Counters of what StoreNotification stored."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.alerts_stored = Counter(
            "alert_history_alerts_stored_total",
            "Alerts stored, by outcome: new (a new state change) or repeat.",
            ["outcome"],
            registry=registry,
        )
        for outcome in _OUTCOME_LABELS.values():
            self.alerts_stored.labels(outcome)
        self.work_items_enqueued = Counter(
            "alert_history_work_items_enqueued_total",
            "Work items queued for classification and publishing.",
            registry=registry,
        )


async def _fail(
    context: grpc.aio.ServicerContext, method: str, error: Exception
) -> NoReturn:
    """Log a failed call, then end it with the error's status code."""
    log_failure(method, error)
    await abort_with(context, error)


def log_failure(method: str, error: Exception) -> None:
    """Log an expected failure: unavailable as a warning, rejected as info."""
    if isinstance(error, UnavailableError):
        logger.warning(
            "history call failed", extra={"method": method, "error": str(error)}
        )
    elif isinstance(error, AlertHistoryError):
        logger.info(
            "history call rejected", extra={"method": method, "error": str(error)}
        )


# Room left in a LeaseWork response for its own framing, in bytes.
_RESPONSE_MARGIN = 1024


def fit_message(
    items: list[history_pb2.WorkItem], max_bytes: int
) -> tuple[list[history_pb2.WorkItem], list[history_pb2.WorkItem]]:
    """Split leased items into those that fit one response and the rest.

    The first item is always kept. Releasing an oversized oldest item would
    lease it again first on every call, and the queue would stall.
    """
    budget = max_bytes - _RESPONSE_MARGIN
    size = 0
    for index, item in enumerate(items):
        # A repeated field costs a tag byte and a length prefix of at most
        # 5 bytes per element on top of the element itself.
        size += item.ByteSize() + 6
        # NOTE: an item larger than the budget on its own is still returned.
        # Sending it then fails, and it is leased again when its lease runs out.
        if index > 0 and size > budget:
            return items[:index], items[index:]
    return items, []


class HistoryServicer(history_pb2_grpc.HistoryServiceServicer):
    """Implements HistoryService over a HistoryStore."""

    def __init__(
        self, store: HistoryStore, metrics: HistoryMetrics, max_message_bytes: int
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes

    async def StoreNotification(
        self,
        request: history_pb2.StoreNotificationRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.StoreNotificationResponse:
        try:
            response = await self.store.store_notification(
                request.notification,
                enqueue_work=request.enqueue_work,
                trace_context=request.trace_context,
            )
        except Exception as exc:
            await _fail(context, "StoreNotification", exc)
        self._observe(request, response)
        return response

    async def StoreNotifications(
        self,
        request: history_pb2.StoreNotificationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.StoreNotificationsResponse:
        count = len(request.requests)
        if not 0 < count <= MAX_STORE_REQUESTS:
            await _fail(
                context,
                "StoreNotifications",
                InvalidInputError(
                    f"requests must have 1 to {MAX_STORE_REQUESTS} entries, got {count}"
                ),
            )
        try:
            results = await self.store.store_notifications(
                [
                    StoreItem(
                        single.notification,
                        enqueue_work=single.enqueue_work,
                        trace_context=single.trace_context,
                    )
                    for single in request.requests
                ]
            )
        except Exception as exc:
            await _fail(context, "StoreNotifications", exc)
        response = history_pb2.StoreNotificationsResponse()
        for single, outcome in zip(request.requests, results, strict=True):
            result = response.results.add()
            if not isinstance(outcome, Exception):
                result.response.CopyFrom(outcome)
                self._observe(single, outcome)
                continue
            if isinstance(outcome, AlertHistoryError):
                log_failure("StoreNotifications", outcome)
            else:
                logger.error(
                    "unexpected error storing a notification",
                    exc_info=outcome,
                    extra={"group_key": single.notification.group_key},
                )
            code, result.message = error_status(outcome)
            result.code = code.value[0]
        return response

    def _observe(
        self,
        request: history_pb2.StoreNotificationRequest,
        response: history_pb2.StoreNotificationResponse,
    ) -> None:
        notification = request.notification
        counts = collections.Counter(
            _OUTCOME_LABELS[stored.outcome] for stored in response.alerts
        )
        for outcome, stored_count in counts.items():
            self.metrics.alerts_stored.labels(outcome).inc(stored_count)
        if logger.isEnabledFor(logging.DEBUG):
            for stored in response.alerts:
                logger.debug(
                    "alert stored",
                    extra={
                        "fingerprint": stored.fingerprint,
                        "group_key": notification.group_key,
                        "receiver": notification.receiver,
                        "outcome": _OUTCOME_LABELS[stored.outcome],
                        "occurrence_id": stored.occurrence_id,
                        "state_change_id": stored.state_change_id,
                        "warnings": list(stored.warnings),
                    },
                )
        if response.work_item_id:
            self.metrics.work_items_enqueued.inc()

    async def ListOccurrences(
        self,
        request: history_pb2.ListOccurrencesRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.ListOccurrencesResponse:
        try:
            occurrences, next_cursor = await self.store.list_occurrences(
                limit=request.limit,
                cursor=request.cursor,
                selected=queries.filter_from_request(request),
            )
        except Exception as exc:
            await _fail(context, "ListOccurrences", exc)
        return history_pb2.ListOccurrencesResponse(
            occurrences=occurrences, next_cursor=next_cursor
        )

    async def GetOccurrence(
        self,
        request: history_pb2.GetOccurrenceRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.GetOccurrenceResponse:
        try:
            occurrence = await self.store.get_occurrence(request.id)
        except Exception as exc:
            await _fail(context, "GetOccurrence", exc)
        return history_pb2.GetOccurrenceResponse(occurrence=occurrence)

    async def RecordClassifications(
        self,
        request: history_pb2.RecordClassificationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.RecordClassificationsResponse:
        try:
            stored = await self.store.record_classifications(request.records)
        except Exception as exc:
            await _fail(context, "RecordClassifications", exc)
        return history_pb2.RecordClassificationsResponse(stored=stored)

    async def LeaseWork(
        self,
        request: history_pb2.LeaseWorkRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.LeaseWorkResponse:
        try:
            items = await self.store.lease_work(
                request.owner, request.max_items, request.lease_seconds
            )
            kept, extra = fit_message(items, self.max_message_bytes)
            if extra:
                await self.store.release_work(
                    [item.id for item in extra], request.owner
                )
        except Exception as exc:
            await _fail(context, "LeaseWork", exc)
        return history_pb2.LeaseWorkResponse(items=kept)

    async def CompleteWork(
        self,
        request: history_pb2.CompleteWorkRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.CompleteWorkResponse:
        try:
            completed = await self.store.complete_work(request.ids)
        except Exception as exc:
            await _fail(context, "CompleteWork", exc)
        return history_pb2.CompleteWorkResponse(completed=completed)

    async def GetAlertContext(
        self,
        request: history_pb2.GetAlertContextRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.GetAlertContextResponse:
        try:
            return await self.store.get_alert_context(request.fingerprint)
        except Exception as exc:
            await _fail(context, "GetAlertContext", exc)

    async def GetTimeline(
        self,
        request: history_pb2.GetTimelineRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.GetTimelineResponse:
        try:
            return await queries.get_timeline(
                self.store.db,
                request.fingerprint,
                limit=request.limit,
                cursor=request.cursor,
            )
        except Exception as exc:
            await _fail(context, "GetTimeline", exc)

    async def GetTopAlerts(
        self,
        request: history_pb2.GetTopAlertsRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.GetTopAlertsResponse:
        try:
            alerts = await queries.top_alerts(self.store.db, request)
        except Exception as exc:
            await _fail(context, "GetTopAlerts", exc)
        return history_pb2.GetTopAlertsResponse(alerts=alerts)

    async def GetFlappingAlerts(
        self,
        request: history_pb2.GetFlappingAlertsRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.GetFlappingAlertsResponse:
        try:
            alerts = await queries.flapping_alerts(self.store.db, request)
        except Exception as exc:
            await _fail(context, "GetFlappingAlerts", exc)
        return history_pb2.GetFlappingAlertsResponse(alerts=alerts)

    async def GetTimeToResolve(
        self,
        request: history_pb2.GetTimeToResolveRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.GetTimeToResolveResponse:
        try:
            alerts = await queries.time_to_resolve(self.store.db, request)
        except Exception as exc:
            await _fail(context, "GetTimeToResolve", exc)
        return history_pb2.GetTimeToResolveResponse(alerts=alerts)

    async def GetAlertStatistics(
        self,
        request: history_pb2.GetAlertStatisticsRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.GetAlertStatisticsResponse:
        try:
            return await queries.alert_statistics(self.store.db, request)
        except Exception as exc:
            await _fail(context, "GetAlertStatistics", exc)


class HistoryService:
    """The history service as `libs.grpcserver` runs it."""

    name = "history"

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.service_names = [SERVICE_NAME]
        self.db = Database(
            database_url(settings, "history"), pool_size=settings.database_pool_size
        )
        self.store = HistoryStore(self.db)
        self.servicer = HistoryServicer(
            self.store, HistoryMetrics(registry), settings.grpc_max_message_bytes
        )
        self.service_names.append(audit.SERVICE_NAME)
        self.audit_servicer = audit.AuditServicer(audit.AuditStore(self.db))
        self.retention = Retention(
            self.db,
            days=settings.history_retention_days,
            batch_size=settings.history_retention_batch_size,
            pause_seconds=settings.history_retention_pause_seconds,
            metrics=RetentionMetrics(registry),
        )
        self._retention_task: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        history_pb2_grpc.add_HistoryServiceServicer_to_server(self.servicer, server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(self.audit_servicer, server)

    async def start(self) -> None:
        """Connect the database and, with MIGRATE_ON_START, apply migrations."""
        await self.db.connect()
        logger.info("history database connected", extra={"dialect": self.db.dialect})
        if self.settings.migrate_on_start:
            applied = await migrate(self.db, COMPONENT, MIGRATIONS)
            applied += await migrate(self.db, audit.COMPONENT, audit.MIGRATIONS)
            logger.info("history migrations applied", extra={"applied": applied})
        if self.settings.history_retention_days:
            self._retention_task = asyncio.create_task(
                self.retention.run_periodically(
                    self.settings.history_retention_interval_seconds
                )
            )

    async def close(self) -> None:
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
            self._retention_task = None
        await self.db.close()
        logger.info("history database closed")


def create_service(settings: Settings, registry: CollectorRegistry) -> HistoryService:
    """Build the history service; `start()` connects its database."""
    return HistoryService(settings, registry)


async def run_migrations(settings: Settings) -> int:
    """Apply the history migrations the database lacks and return how many ran."""
    db = Database(database_url(settings, "history"), pool_size=1)
    await db.connect()
    try:
        applied = await migrate(db, COMPONENT, MIGRATIONS)
        applied += await migrate(db, audit.COMPONENT, audit.MIGRATIONS)
    finally:
        await db.close()
    logger.info("history migrations applied", extra={"applied": applied})
    return applied
