"""The publisher gRPC service: records deliveries and runs the delivery worker.

Publish selects each target's alerts (`planning`), builds their request
bodies and records every delivery in one transaction before anything is
sent. The worker sends them afterwards. The operator calls (delivery log,
dead letters, statistics, test alerts) are in `operations`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeAlias

import grpc
from prometheus_client import CollectorRegistry

from alerthistory.publisher.v1 import publisher_pb2, publisher_pb2_grpc
from libs import telemetry
from libs.config import Settings
from libs.db import Database, database_url, migrate
from libs.errors import AlertHistoryError, InvalidInputError
from libs.grpcserver import abort_with, error_status
from services.publisher import operations
from services.publisher.delivery import DeliveryWorker, idempotency_key
from services.publisher.discovery import (
    DiscoveryMetrics,
    SecretDiscovery,
    start_discovery,
)
from services.publisher.encoding import occurrence_key
from services.publisher.formats import FORMATS, STATUS_NAMES, encode_body
from services.publisher.log_store import PublishingLog
from services.publisher.metrics import PublisherMetrics
from services.publisher.migrations import COMPONENT, MIGRATIONS
from services.publisher.operations import PreconditionError, SyntheticIds
from services.publisher.planning import TargetPlan, plan_targets
from services.publisher.retention import Retention, RetentionMetrics
from services.publisher.store import (
    DeliveredAlert,
    DeliveredStates,
    DeliveryStore,
    NewDelivery,
    PlannedBatch,
)
from services.publisher.targets import (
    Target,
    TargetConfigError,
    TargetSet,
    load_targets,
)

logger = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

SERVICE_NAME = publisher_pb2.DESCRIPTOR.services_by_name["PublisherService"].full_name
MAX_BATCH_ID_LENGTH = 200
# Deliveries (or batch records) deleted per retention transaction.
RETENTION_BATCH_SIZE = 1000
# Requests per PublishBatch call.
MAX_PUBLISH_BATCH_REQUESTS = 500


@dataclass(frozen=True)
class _Publication:
    """A PublishRequest's batch and the target plans its planner fills in."""

    batch: PlannedBatch
    plans: list[TargetPlan]


def _set_error(
    result: publisher_pb2.PublishResult, error: Exception, batch_id: str
) -> None:
    """Report in `result` the status Publish would have returned for `error`."""
    if not isinstance(error, AlertHistoryError):
        logger.error(
            "unexpected error publishing a batch",
            exc_info=error,
            extra={"batch_id": batch_id},
        )
    code, result.message = error_status(error)
    result.code = code.value[0]


class PublisherService:
    """The publisher as `libs.grpcserver` runs it."""

    name = "publisher"
    service_names = [SERVICE_NAME]

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.metrics = PublisherMetrics(registry)
        self.discovery_metrics = DiscoveryMetrics(registry)
        self.targets = TargetSet()
        self._discovery: SecretDiscovery | None = None
        self._db: Database | None = None
        self._store: DeliveryStore | None = None
        self._log: PublishingLog | None = None
        self._worker: DeliveryWorker | None = None
        self._retention_metrics = RetentionMetrics(registry)
        self.retention: Retention | None = None
        self._retention_task: asyncio.Task[None] | None = None

    @property
    def store(self) -> DeliveryStore:
        assert self._store is not None, "PublisherService.start() was not called"
        return self._store

    @property
    def log(self) -> PublishingLog:
        assert self._log is not None, "PublisherService.start() was not called"
        return self._log

    @property
    def worker(self) -> DeliveryWorker:
        assert self._worker is not None, "PublisherService.start() was not called"
        return self._worker

    def register(self, server: grpc.aio.Server) -> None:
        publisher_pb2_grpc.add_PublisherServiceServicer_to_server(
            PublisherServicer(self), server
        )

    async def start(self) -> None:
        """Load the targets, connect and migrate the store, start the worker.

        Raises TargetConfigError for an invalid targets file, ConfigError
        when target discovery has no Kubernetes credentials, and
        UnavailableError when the database cannot be reached.
        """
        targets = load_targets(self.settings.publishing_targets_file)
        self.targets.replace(targets)
        self.metrics.show_targets(targets)
        if self.targets.metrics_only:
            logger.info("no publishing targets configured; metrics-only mode")
        else:
            logger.info("publishing targets loaded", extra={"targets": len(targets)})

        self._db = Database(
            database_url(self.settings, "publisher"),
            pool_size=self.settings.database_pool_size,
        )
        await self._db.connect()
        if self.settings.migrate_on_start:
            await migrate(self._db, COMPONENT, MIGRATIONS)
        self._store = DeliveryStore(self._db)
        self._log = PublishingLog(self._db)
        self._discovery = await start_discovery(
            self.settings, self.targets, targets, self.metrics, self.discovery_metrics
        )
        await self._warn_about_stranded_deliveries()

        self._worker = DeliveryWorker(
            self._store, self.targets, self.settings, self.metrics
        )
        await self._worker.start()
        if self.settings.publisher_retention_days:
            self.retention = Retention(
                self._db,
                days=self.settings.publisher_retention_days,
                batch_size=RETENTION_BATCH_SIZE,
                metrics=self._retention_metrics,
            )
            self._retention_task = asyncio.create_task(
                self.retention.run_periodically(
                    self.settings.publisher_retention_interval_seconds
                ),
                name="publisher-retention",
            )

    async def close(self) -> None:
        """Stop discovery, then the worker (releasing its leases), then the database."""
        if self._retention_task is not None:
            self._retention_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._retention_task
            self._retention_task = None
        if self._discovery is not None:
            await self._discovery.close()
            self._discovery = None
        if self._worker is not None:
            await self._worker.close()
            self._worker = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _warn_about_stranded_deliveries(self) -> None:
        """Log pending deliveries that this replica will not send."""
        enabled = {target.name for target in self.targets.enabled()}
        for target, pending in (await self.store.pending_counts()).items():
            if target not in enabled:
                logger.warning(
                    "pending deliveries for a target that is not configured or "
                    "not enabled; they wait until it is",
                    extra={"target": target, "pending": pending},
                )

    async def publish_batch(
        self, request: publisher_pb2.PublishBatchRequest
    ) -> publisher_pb2.PublishBatchResponse:
        """Publish each request in order, reporting each one's result.

        One request's error does not stop the others. Raises
        InvalidInputError for an empty request list or one over
        MAX_PUBLISH_BATCH_REQUESTS.
        """
        count = len(request.requests)
        if not 0 < count <= MAX_PUBLISH_BATCH_REQUESTS:
            raise InvalidInputError(
                f"requests must have 1 to {MAX_PUBLISH_BATCH_REQUESTS} entries,"
                f" got {count}"
            )
        response = publisher_pb2.PublishBatchResponse()
        pending: list[tuple[publisher_pb2.PublishResult, _Publication]] = []
        for single in request.requests:
            result = response.results.add()
            try:
                check_publish_request(single)
            except AlertHistoryError as exc:
                _set_error(result, exc, single.batch_id)
                continue
            if self.targets.metrics_only:
                result.response.metrics_only = True
                continue
            pending.append((result, self._publication(single)))
        if not pending:
            return response

        recorded = await self.store.record_planned_batches(
            [publication.batch for _, publication in pending], datetime.now(UTC)
        )
        for (result, publication), created in zip(pending, recorded, strict=True):
            try:
                if isinstance(created, Exception):
                    raise created
                result.response.CopyFrom(await self._published(publication, created))
            except Exception as exc:
                _set_error(result, exc, publication.batch.batch_id)
        return response

    async def publish(
        self, request: publisher_pb2.PublishRequest
    ) -> publisher_pb2.PublishResponse:
        """Record the batch's deliveries, then wake the worker."""
        check_publish_request(request)
        if self.targets.metrics_only:
            return publisher_pb2.PublishResponse(metrics_only=True)
        publication = self._publication(request)
        batch = publication.batch
        created = await self.store.record_planned_batch(
            batch.batch_id,
            batch.alert_count,
            batch.occurrence_keys,
            batch.plan,
            datetime.now(UTC),
        )
        return await self._published(publication, created)

    def _publication(self, request: publisher_pb2.PublishRequest) -> _Publication:
        """Return the batch to record for `request`, planned against the
        targets in effect now."""
        targets = self.targets.all()
        plans: list[TargetPlan] = []

        def plan(delivered: DeliveredStates) -> list[NewDelivery]:
            plans[:] = plan_targets(targets, request.alerts, delivered)
            return [
                delivery
                for target_plan in plans
                for delivery in build_deliveries(
                    request, target_plan.target, target_plan.selected
                )
            ]

        batch = PlannedBatch(
            request.batch_id,
            len(request.alerts),
            [occurrence_key(item.alert) for item in request.alerts],
            plan,
        )
        return _Publication(batch, plans)

    async def _published(
        self, publication: _Publication, created: bool
    ) -> publisher_pb2.PublishResponse:
        """Return the response for a recorded publication and wake the worker."""
        if not created:
            return await self._recorded_before(publication.batch.batch_id)

        self._count_filtered(publication.plans)
        self.worker.wake()
        response = publisher_pb2.PublishResponse()
        for target_plan in publication.plans:
            if target_plan.selected:
                response.targets.add(
                    target=target_plan.target.name,
                    alerts=len(target_plan.selected),
                    created=True,
                )
        return response

    async def _recorded_before(self, batch_id: str) -> publisher_pb2.PublishResponse:
        """Report what the first call with `batch_id` recorded, even if targets
        changed since."""
        response = publisher_pb2.PublishResponse()
        recorded: dict[str, int] = {}
        for record in await self.store.deliveries_for_batch(batch_id):
            recorded[record.target] = recorded.get(record.target, 0) + (
                record.alert_count
            )
        for name, alerts in recorded.items():
            response.targets.add(target=name, alerts=alerts, created=False)
        return response

    def _count_filtered(self, plans: Sequence[TargetPlan]) -> None:
        for target_plan in plans:
            for reason in target_plan.dropped:
                self.metrics.filtered.labels(target_plan.target.name, reason).inc()
            if target_plan.duplicates:
                logger.info(
                    "alert states already delivered to the target were left out",
                    extra={
                        "target": target_plan.target.name,
                        "duplicates": target_plan.duplicates,
                    },
                )

    async def record_test(
        self, target: Target, requests: Sequence[publisher_pb2.PublishRequest]
    ) -> SyntheticIds:
        """Record test requests for `target` alone, ignoring its filter.

        Returns the ids of the first two deliveries: the trigger and, when
        there is a second request, its resolve.
        """
        ids: list[int] = []
        for request in requests:
            deliveries = build_deliveries(request, target, list(request.alerts))
            await self.store.record_batch(
                request.batch_id, len(request.alerts), deliveries, datetime.now(UTC)
            )
            records = await self.store.deliveries_for_batch(request.batch_id)
            ids.extend(record.id for record in records)
        return SyntheticIds(ids[0], ids[1] if len(ids) > 1 else None)

    async def refresh_targets(self) -> RefreshResult:
        """Reload the targets file and list the target Secrets again.

        Raises PreconditionError, changing nothing, when the file is missing
        or invalid.
        """
        try:
            file_targets = load_targets(self.settings.publishing_targets_file)
        except TargetConfigError as exc:
            raise PreconditionError(
                f"{exc}; the targets in effect are unchanged"
            ) from None
        discovery_errors = 0
        if self._discovery is not None:
            discovery_errors = await self._discovery.refresh(file_targets)
        else:
            self.targets.replace(file_targets)
            self.metrics.show_targets(file_targets)
        in_effect = self.targets.all()
        from_file = sum(1 for target in in_effect if target.source == "file")
        logger.info(
            "publishing targets refreshed",
            extra={"targets": len(in_effect), "discovered": len(in_effect) - from_file},
        )
        if self._worker is not None:
            self._worker.wake()
        return RefreshResult(
            targets=len(in_effect),
            enabled=len(self.targets.enabled()),
            from_file=from_file,
            discovered=len(in_effect) - from_file,
            discovery=self._discovery is not None,
            discovery_errors=discovery_errors,
        )

    def list_targets(self) -> publisher_pb2.ListTargetsResponse:
        response = publisher_pb2.ListTargetsResponse(
            metrics_only=self.targets.metrics_only
        )
        for target in self.targets.all():
            response.targets.add(
                name=target.name,
                format=target.format,
                endpoint=target.endpoint,
                enabled=target.enabled,
                source=target.source,
            )
        return response


@dataclass(frozen=True)
class RefreshResult:
    """Target counts after a refresh."""

    targets: int
    enabled: int
    from_file: int
    discovered: int
    discovery: bool
    discovery_errors: int


def build_deliveries(
    request: publisher_pb2.PublishRequest,
    target: Target,
    alerts: Sequence[publisher_pb2.PublishAlert],
) -> list[NewDelivery]:
    """Build the deliveries of `alerts` to `target`; none when `alerts` is empty.

    Each message of the target's format is one delivery carrying its own
    alerts, so a format with one request per alert gets one delivery, with
    its own Idempotency-Key, per alert.
    """
    if not alerts:
        return []
    messages = FORMATS[target.format].build(request.notification, alerts, target)
    trace_context = dict(request.trace_context) or telemetry.inject_context()
    return [
        NewDelivery(
            target=target.name,
            part=part,
            format=target.format,
            group_key=message.order_key or request.notification.group_key,
            idempotency_key=idempotency_key(request.batch_id, target.name, part),
            body=encode_body(message.body),
            alerts=tuple(_delivered_alert(item) for item in message.alerts),
            trace_context=trace_context,
        )
        for part, message in enumerate(messages)
    ]


def _delivered_alert(item: publisher_pb2.PublishAlert) -> DeliveredAlert:
    return DeliveredAlert(
        fingerprint=item.alert.fingerprint,
        status=STATUS_NAMES[item.alert.status],
        state_change_id=item.state_change_id,
        occurrence_key=occurrence_key(item.alert),
    )


def check_publish_request(request: publisher_pb2.PublishRequest) -> None:
    """Raise InvalidInputError naming the first field that can never be valid."""
    if not request.batch_id:
        raise InvalidInputError(
            "batch_id is empty; set a key unique to the batch, such as the work item id"
        )
    if len(request.batch_id) > MAX_BATCH_ID_LENGTH:
        raise InvalidInputError(
            f"batch_id has {len(request.batch_id)} characters; the maximum is "
            f"{MAX_BATCH_ID_LENGTH}"
        )
    for index, item in enumerate(request.alerts):
        where = f"alerts[{index}].alert"
        if not item.HasField("alert"):
            raise InvalidInputError(f"{where} is missing")
        alert = item.alert
        if not alert.fingerprint:
            raise InvalidInputError(f"{where}.fingerprint is empty")
        if alert.status not in STATUS_NAMES:
            raise InvalidInputError(f"{where}.status must be firing or resolved")
        if not alert.labels:
            raise InvalidInputError(f"{where}.labels is empty")
        if not alert.HasField("starts_at"):
            raise InvalidInputError(f"{where}.starts_at is missing")


class PublisherServicer(publisher_pb2_grpc.PublisherServiceServicer):
    """gRPC handlers that map errors to status codes."""

    def __init__(self, service: PublisherService) -> None:
        self.service = service

    async def Publish(
        self,
        request: publisher_pb2.PublishRequest,
        context: grpc.aio.ServicerContext[
            publisher_pb2.PublishRequest, publisher_pb2.PublishResponse
        ],
    ) -> publisher_pb2.PublishResponse:
        try:
            return await self.service.publish(request)
        except Exception as exc:
            await abort_with(context, exc)

    async def PublishBatch(
        self, request: publisher_pb2.PublishBatchRequest, context: Context
    ) -> publisher_pb2.PublishBatchResponse:
        try:
            return await self.service.publish_batch(request)
        except Exception as exc:
            await abort_with(context, exc)

    async def ListTargets(
        self,
        request: publisher_pb2.ListTargetsRequest,
        context: grpc.aio.ServicerContext[
            publisher_pb2.ListTargetsRequest, publisher_pb2.ListTargetsResponse
        ],
    ) -> publisher_pb2.ListTargetsResponse:
        return self.service.list_targets()

    async def ListDeliveries(
        self, request: publisher_pb2.ListDeliveriesRequest, context: Context
    ) -> publisher_pb2.ListDeliveriesResponse:
        try:
            deliveries, token = await operations.list_deliveries(
                self.service.log,
                target=request.target,
                state=operations.list_state(request.state),
                limit=request.limit,
                page_token=request.page_token,
            )
        except Exception as exc:
            await abort(context, exc)
        return publisher_pb2.ListDeliveriesResponse(
            deliveries=deliveries, next_page_token=token
        )

    async def GetDelivery(
        self, request: publisher_pb2.GetDeliveryRequest, context: Context
    ) -> publisher_pb2.GetDeliveryResponse:
        try:
            return await operations.get_delivery(self.service, request.id)
        except Exception as exc:
            await abort(context, exc)

    async def ListDeadLetters(
        self, request: publisher_pb2.ListDeadLettersRequest, context: Context
    ) -> publisher_pb2.ListDeadLettersResponse:
        try:
            dead, token = await operations.list_deliveries(
                self.service.log,
                target=request.target,
                state="dead",
                limit=request.limit,
                page_token=request.page_token,
            )
        except Exception as exc:
            await abort(context, exc)
        return publisher_pb2.ListDeadLettersResponse(
            dead_letters=dead, next_page_token=token
        )

    async def RetryDeadLetter(
        self, request: publisher_pb2.RetryDeadLetterRequest, context: Context
    ) -> publisher_pb2.RetryDeadLetterResponse:
        try:
            delivery = await operations.retry_dead_letter(self.service, request.id)
        except Exception as exc:
            await abort(context, exc)
        return publisher_pb2.RetryDeadLetterResponse(delivery=delivery)

    async def DiscardDeadLetter(
        self, request: publisher_pb2.DiscardDeadLetterRequest, context: Context
    ) -> publisher_pb2.DiscardDeadLetterResponse:
        try:
            delivery = await operations.discard_dead_letter(self.service, request.id)
        except Exception as exc:
            await abort(context, exc)
        return publisher_pb2.DiscardDeadLetterResponse(delivery=delivery)

    async def GetStats(
        self, request: publisher_pb2.GetStatsRequest, context: Context
    ) -> publisher_pb2.GetStatsResponse:
        try:
            return await operations.get_stats(self.service, request)
        except Exception as exc:
            await abort(context, exc)

    async def TestTarget(
        self, request: publisher_pb2.TestTargetRequest, context: Context
    ) -> publisher_pb2.TestTargetResponse:
        try:
            return await operations.send_test_alert(
                self.service, request.target, request.leave_firing
            )
        except Exception as exc:
            await abort(context, exc)

    async def RefreshTargets(
        self, request: publisher_pb2.RefreshTargetsRequest, context: Context
    ) -> publisher_pb2.RefreshTargetsResponse:
        try:
            result = await self.service.refresh_targets()
        except Exception as exc:
            await abort(context, exc)
        return publisher_pb2.RefreshTargetsResponse(
            targets=result.targets,
            enabled=result.enabled,
            from_file=result.from_file,
            discovered=result.discovered,
            metrics_only=result.targets == 0,
            discovery=result.discovery,
            discovery_errors=result.discovery_errors,
        )


async def abort(context: Context, exc: Exception) -> NoReturn:
    """End a call with FAILED_PRECONDITION for a PreconditionError, else as
    `abort_with` maps the error."""
    if isinstance(exc, PreconditionError):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    await abort_with(context, exc)


def create_service(settings: Settings, registry: CollectorRegistry) -> PublisherService:
    """Build the publisher service; `start()` loads targets and connects."""
    return PublisherService(settings, registry)


async def run_migrations(settings: Settings) -> int:
    """Apply the publisher's missing migrations; return how many were applied."""
    db = Database(database_url(settings, "publisher"), pool_size=1)
    await db.connect()
    try:
        return await migrate(db, COMPONENT, MIGRATIONS)
    finally:
        await db.close()
