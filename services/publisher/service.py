"""The publisher gRPC service: records deliveries and runs the delivery worker.

For every enabled target, Publish builds the body of the alerts that pass
its filter. It records one delivery per (batch_id, target) in one
transaction before anything is sent, and the worker sends them afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
from prometheus_client import CollectorRegistry

from alerthistory.publisher.v1 import publisher_pb2, publisher_pb2_grpc
from libs.config import Settings
from libs.db import Database, database_url, migrate
from libs.errors import InvalidInputError
from libs.grpcserver import abort_with
from services.publisher.delivery import DeliveryWorker, idempotency_key
from services.publisher.filters import FilterResult, apply_filter
from services.publisher.formats import FORMATS, STATUS_NAMES, encode_body
from services.publisher.metrics import PublisherMetrics
from services.publisher.migrations import COMPONENT, MIGRATIONS
from services.publisher.store import DeliveredAlert, DeliveryStore, NewDelivery
from services.publisher.targets import Target, TargetSet, load_targets

logger = logging.getLogger(__name__)

SERVICE_NAME = publisher_pb2.DESCRIPTOR.services_by_name["PublisherService"].full_name
MAX_BATCH_ID_LENGTH = 200


class PublisherService:
    """The publisher as `libs.grpcserver` runs it."""

    name = "publisher"
    service_names = [SERVICE_NAME]

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.metrics = PublisherMetrics(registry)
        self.targets = TargetSet()
        self._db: Database | None = None
        self._store: DeliveryStore | None = None
        self._worker: DeliveryWorker | None = None

    @property
    def store(self) -> DeliveryStore:
        assert self._store is not None, "PublisherService.start() was not called"
        return self._store

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

        Raises TargetConfigError for an invalid targets file and
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
        await self._warn_about_stranded_deliveries()

        self._worker = DeliveryWorker(
            self._store, self.targets, self.settings, self.metrics
        )
        await self._worker.start()

    async def close(self) -> None:
        """Stop the worker, releasing its leases, then close the database."""
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

    async def publish(
        self, request: publisher_pb2.PublishRequest
    ) -> publisher_pb2.PublishResponse:
        """Record the batch's deliveries, then wake the worker."""
        check_publish_request(request)
        if self.targets.metrics_only:
            return publisher_pb2.PublishResponse(metrics_only=True)

        planned: list[tuple[Target, FilterResult]] = [
            (target, apply_filter(target.filter, request.alerts))
            for target in self.targets.enabled()
        ]
        deliveries = [
            delivery
            for target, result in planned
            for delivery in build_deliveries(request, target, result.passed)
        ]
        created = await self.store.record_batch(
            request.batch_id, len(request.alerts), deliveries, datetime.now(UTC)
        )
        response = publisher_pb2.PublishResponse()
        if not created:
            # Report what the first call recorded, even if targets changed since.
            recorded: dict[str, int] = {}
            for record in await self.store.deliveries_for_batch(request.batch_id):
                count = recorded.get(record.target, 0)
                recorded[record.target] = max(count, record.alert_count)
            for name, alerts in recorded.items():
                response.targets.add(target=name, alerts=alerts, created=False)
            return response

        self._count_filtered(planned)
        self.worker.wake()
        for target, result in planned:
            if result.passed:
                response.targets.add(
                    target=target.name, alerts=len(result.passed), created=True
                )
        return response

    def _count_filtered(self, planned: Sequence[tuple[Target, FilterResult]]) -> None:
        for target, result in planned:
            for reason in result.dropped:
                self.metrics.filtered.labels(target.name, reason).inc()

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


def build_deliveries(
    request: publisher_pb2.PublishRequest,
    target: Target,
    alerts: Sequence[publisher_pb2.PublishAlert],
) -> list[NewDelivery]:
    """Build the deliveries of `alerts` to `target`; none when `alerts` is empty."""
    if not alerts:
        return []
    bodies = FORMATS[target.format].build(request.notification, alerts, target)
    carried = tuple(
        DeliveredAlert(
            fingerprint=item.alert.fingerprint,
            status=STATUS_NAMES[item.alert.status],
            state_change_id=item.state_change_id,
        )
        for item in alerts
    )
    return [
        NewDelivery(
            target=target.name,
            part=part,
            format=target.format,
            group_key=request.notification.group_key,
            idempotency_key=idempotency_key(request.batch_id, target.name, part),
            body=encode_body(body),
            alerts=carried,
        )
        for part, body in enumerate(bodies)
    ]


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

    async def ListTargets(
        self,
        request: publisher_pb2.ListTargetsRequest,
        context: grpc.aio.ServicerContext[
            publisher_pb2.ListTargetsRequest, publisher_pb2.ListTargetsResponse
        ],
    ) -> publisher_pb2.ListTargetsResponse:
        return self.service.list_targets()


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
