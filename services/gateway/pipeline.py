"""The work that follows an accepted webhook: classify, record, publish.

The history service queues one work item per notification with new state
changes, in the transaction that stores them. Every gateway runs a
`Pipeline` that leases items from that queue, so work survives a gateway
crash: an item whose gateway died comes back when its lease runs out and
another gateway finishes it. Each step is idempotent (a state change keeps
its first classification, and Publish is keyed by the work item id), so a
repeated item classifies and publishes nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, Counter, Histogram

from alerthistory.alert.v1 import alert_pb2
from alerthistory.classifier.v1 import classifier_pb2
from alerthistory.history.v1 import history_pb2
from alerthistory.publisher.v1 import publisher_pb2
from libs import telemetry
from libs.batching import split_by_size
from libs.clients import ServiceClients
from libs.config import Settings
from services.classifier.classifier import SEVERITY_VALUES
from services.classifier.injection import has_instruction_like_text
from services.classifier.rules import classify_by_rules
from services.gateway.mode import Mode

logger = logging.getLogger(__name__)

# Deadlines of the internal calls, in seconds, beyond the classification
# budget for the classifier.
LEASE_DEADLINE = 5.0
RECORD_DEADLINE = 5.0
PUBLISH_DEADLINE = 5.0
# Added to PUBLISH_DEADLINE per request of a PublishBatch call.
PUBLISH_BATCH_DEADLINE_PER_REQUEST = 0.1
# Requests per PublishBatch call; the publisher accepts at most 500.
PUBLISH_BATCH_MAX_REQUESTS = 500
# grpc.StatusCode values are (number, name) pairs; PublishResult has the number.
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
CLASSIFY_MARGIN = 2.0

# Attempts after which an item that keeps failing is logged as an error on
# every further attempt. It is never dropped.
ATTEMPTS_BEFORE_ERROR = 5


class PipelineMetrics:
    """Counters and timings of processed work items."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.items = Counter(
            "alert_history_pipeline_work_items_total",
            "Work items processed by this gateway, by result.",
            ["result"],
            registry=registry,
        )
        self.seconds = Histogram(
            "alert_history_pipeline_work_item_seconds",
            "Time from leasing a work item to its completion.",
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.queue_delay = Histogram(
            "alert_history_pipeline_queue_delay_seconds",
            "Time a work item waited in the queue before it was leased.",
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
        )


class Pipeline:
    """Leases queued work items and carries each through classify and publish."""

    def __init__(
        self,
        settings: Settings,
        clients: ServiceClients,
        mode: Callable[[], Awaitable[Mode]],
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.mode = mode
        self.metrics = PipelineMetrics(registry)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="pipeline")

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Stop leasing and give in-flight batches `grace` seconds to finish.

        Items still running after that keep their lease until it runs out,
        then another gateway takes them over.
        """
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        for task in self._tasks:
            task.cancel()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                leased = await self._lease_batch()
            except grpc.aio.AioRpcError as exc:
                logger.warning("cannot lease work", extra={"error": exc.code().name})
                leased = 0
            if leased == 0 and not self._stopping:
                await self._wait_for_wake()

    async def _wait_for_wake(self) -> None:
        try:
            await asyncio.wait_for(
                self._wake.wait(), timeout=self.settings.pipeline_poll_seconds
            )
        except TimeoutError:
            pass
        self._wake.clear()

    async def _lease_batch(self) -> int:
        if len(self._tasks) >= self.settings.pipeline_concurrency:
            await self._wait_for_wake()
            return 0
        response = await self.clients.history.LeaseWork(
            history_pb2.LeaseWorkRequest(
                owner=self.owner,
                max_items=self.settings.pipeline_batch_size,
                lease_seconds=self.settings.work_lease_seconds,
            ),
            timeout=LEASE_DEADLINE,
        )
        if response.items:
            task = asyncio.create_task(self._process_batch(list(response.items)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(response.items)

    async def _process_batch(self, items: list[history_pb2.WorkItem]) -> None:
        """Classify and record a batch together, then publish each item."""
        started = time.perf_counter()
        now = time.time()
        for item in items:
            waited = now - item.enqueued_at.ToMicroseconds() / 1e6
            self.metrics.queue_delay.observe(max(waited, 0.0))

        # A batch serves several webhooks: its span continues the first one's
        # trace, and each item's publishing continues its own.
        with telemetry.span_from_context(
            items[0].trace_context,
            "classify work batch",
            attributes={"work_items": len(items)},
        ):
            try:
                verdicts = await self._classify_missing(items)
                await self._record(verdicts)
            except grpc.aio.AioRpcError as exc:
                for item in items:
                    self._log_failure(item, exc.code().name, exc.details() or "")
                self.metrics.items.labels("failed").inc(len(items))
                return

        outcomes = await self._publish_items(items, verdicts)
        done = [item.id for item, ok in zip(items, outcomes, strict=True) if ok]
        if done:
            try:
                await self.clients.history.CompleteWork(
                    history_pb2.CompleteWorkRequest(ids=done), timeout=RECORD_DEADLINE
                )
            except grpc.aio.AioRpcError as exc:
                # Published but not marked done: the items come back when their
                # lease runs out and Publish, keyed by item, records nothing new.
                logger.warning(
                    "cannot complete work items",
                    extra={"work_items": len(done), "error": exc.code().name},
                )
                self.metrics.items.labels("failed").inc(len(done))
                return

        self.metrics.items.labels("done").inc(len(done))
        self.metrics.items.labels("failed").inc(len(items) - len(done))
        elapsed = time.perf_counter() - started
        for _ in done:
            self.metrics.seconds.observe(elapsed)

    def _log_failure(self, item: history_pb2.WorkItem, code: str, details: str) -> None:
        level = (
            logging.ERROR if item.attempts >= ATTEMPTS_BEFORE_ERROR else logging.WARNING
        )
        logger.log(
            level,
            "work item failed; it is retried when its lease runs out",
            extra={
                "work_item": item.id,
                "attempts": item.attempts,
                "group_key": item.notification.group_key,
                "error": f"{code}: {details[:200]}",
            },
        )

    async def _record(self, verdicts: dict[int, alert_pb2.Classification]) -> None:
        records = [
            history_pb2.ClassificationRecord(
                state_change_id=state_change_id, classification=verdict
            )
            for state_change_id, verdict in verdicts.items()
        ]
        for chunk in split_by_size(records, self.settings.grpc_max_message_bytes):
            await self.clients.history.RecordClassifications(
                history_pb2.RecordClassificationsRequest(records=chunk),
                timeout=RECORD_DEADLINE,
            )

    async def _publish_items(
        self,
        items: list[history_pb2.WorkItem],
        verdicts: dict[int, alert_pb2.Classification],
    ) -> list[bool]:
        """Publish the items in PublishBatch calls; return which succeeded.

        A single item goes in one Publish call, because a batch of one saves
        nothing. Also falls back to one Publish call per item when the
        publisher does not implement PublishBatch, as an older replica during
        a rolling update.
        """
        if len(items) == 1:
            return [await self._publish_traced(items[0], verdicts)]

        with ExitStack() as spans:
            requests: list[tuple[int, publisher_pb2.PublishRequest]] = []
            for index, item in enumerate(items):
                # Each item's span stays open until the batch call returns,
                # and its requests carry it, so deliveries continue it.
                spans.enter_context(self._item_span(item))
                for request in self.publish_requests(item, verdicts):
                    requests.append((index, request))
            failed = await self._publish_requests(items, requests)
        if failed is None:
            return list(
                await asyncio.gather(
                    *(self._publish_traced(item, verdicts) for item in items)
                )
            )
        for index, item in enumerate(items):
            if index not in failed:
                logger.debug(
                    "work item published",
                    extra={
                        "work_item": item.id,
                        "group_key": item.notification.group_key,
                    },
                )
        return [index not in failed for index in range(len(items))]

    async def _publish_requests(
        self,
        items: list[history_pb2.WorkItem],
        requests: list[tuple[int, publisher_pb2.PublishRequest]],
    ) -> set[int] | None:
        """Send the requests in PublishBatch calls and return the indexes of
        the items with a failed request, or None when PublishBatch is not
        implemented."""
        failed: set[int] = set()
        chunks = split_by_size(
            [request for _, request in requests],
            self.settings.grpc_max_message_bytes,
            PUBLISH_BATCH_MAX_REQUESTS,
        )
        offset = 0
        for chunk in chunks:
            owners = [index for index, _ in requests[offset : offset + len(chunk)]]
            offset += len(chunk)
            try:
                codes = await self._publish_batch(chunk)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return None
                codes = [(exc.code().name, exc.details() or "")] * len(chunk)
            for index, code in zip(owners, codes, strict=True):
                if code is not None and index not in failed:
                    failed.add(index)
                    self._log_failure(items[index], *code)
        return failed

    def _item_span(self, item: history_pb2.WorkItem) -> AbstractContextManager[Any]:
        return telemetry.span_from_context(
            item.trace_context,
            "publish work item",
            attributes={
                "work_item": item.id,
                "attempts": item.attempts,
                "group_key": item.notification.group_key,
                "receiver": item.notification.receiver,
            },
        )

    async def _publish_batch(
        self, requests: list[publisher_pb2.PublishRequest]
    ) -> list[tuple[str, str] | None]:
        """Send one PublishBatch call; return each request's error, or None."""
        response = await self.clients.publisher.PublishBatch(
            publisher_pb2.PublishBatchRequest(requests=requests),
            timeout=PUBLISH_DEADLINE
            + PUBLISH_BATCH_DEADLINE_PER_REQUEST * len(requests),
        )
        return [
            None
            if result.code == 0
            else (STATUS_NAMES.get(result.code, str(result.code)), result.message)
            for result in response.results
        ]

    async def _publish_traced(
        self,
        item: history_pb2.WorkItem,
        verdicts: dict[int, alert_pb2.Classification],
    ) -> bool:
        """Publish one item in a span that continues its webhook's trace."""
        with self._item_span(item):
            try:
                await self.publish(item, verdicts)
            except grpc.aio.AioRpcError as exc:
                self._log_failure(item, exc.code().name, exc.details() or "")
                return False
            except Exception as exc:
                logger.exception(
                    "work item failed", extra={"work_item": item.id, "error": str(exc)}
                )
                return False
        return True

    async def publish(
        self,
        item: history_pb2.WorkItem,
        verdicts: dict[int, alert_pb2.Classification],
    ) -> None:
        """Publish one item's state changes with their verdicts."""
        for request in self.publish_requests(item, verdicts):
            await self.clients.publisher.Publish(request, timeout=PUBLISH_DEADLINE)
        logger.debug(
            "work item published",
            extra={"work_item": item.id, "group_key": item.notification.group_key},
        )

    def publish_requests(
        self,
        item: history_pb2.WorkItem,
        verdicts: dict[int, alert_pb2.Classification],
    ) -> list[publisher_pb2.PublishRequest]:
        """Build the Publish requests of one item, keyed by its id."""
        requests = []
        publish_alerts = [
            publisher_pb2.PublishAlert(
                alert=work_alert.alert,
                classification=verdicts.get(
                    work_alert.state_change_id, work_alert.classification
                ),
                occurrence_id=work_alert.occurrence_id,
                state_change_id=work_alert.state_change_id,
            )
            for work_alert in item.alerts
        ]
        chunks = split_by_size(publish_alerts, self.settings.grpc_max_message_bytes)
        for index, chunk in enumerate(chunks):
            # NOTE: a notification too large for one gRPC message is published
            # as several requests per target, one per chunk.
            batch_id = f"work-{item.id}" if index == 0 else f"work-{item.id}-{index}"
            request = publisher_pb2.PublishRequest(
                batch_id=batch_id, notification=item.notification, alerts=chunk
            )
            request.trace_context.update(
                telemetry.inject_context() or item.trace_context
            )
            requests.append(request)
        return requests

    async def _classify_missing(
        self, items: list[history_pb2.WorkItem]
    ) -> dict[int, alert_pb2.Classification]:
        pending = [
            work_alert
            for item in items
            for work_alert in item.alerts
            if not work_alert.HasField("classification")
        ]
        if not pending:
            return {}
        mode = await self.mode()
        budget = Duration()
        budget.FromNanoseconds(int(self.settings.pipeline_budget_seconds * 1e9))
        request_mode = (
            classifier_pb2.ENRICHMENT_MODE_TRANSPARENT
            if mode == "transparent"
            else classifier_pb2.ENRICHMENT_MODE_ENRICHED
        )
        verdicts: dict[int, alert_pb2.Classification] = {}
        alerts = [a.alert for a in pending]
        chunks = split_by_size(
            alerts,
            self.settings.grpc_max_message_bytes,
            self.settings.classifier_max_batch,
        )
        offset = 0
        for chunk in chunks:
            classifications = await self._classify_chunk(chunk, request_mode, budget)
            for work_alert, verdict in zip(
                pending[offset : offset + len(chunk)], classifications, strict=True
            ):
                verdicts[work_alert.state_change_id] = verdict
            offset += len(chunk)
        return verdicts

    async def _classify_chunk(
        self,
        chunk: list[alert_pb2.Alert],
        mode: classifier_pb2.EnrichmentMode,
        budget: Duration,
    ) -> list[alert_pb2.Classification]:
        try:
            response = await self.clients.classifier.BatchClassify(
                classifier_pb2.BatchClassifyRequest(
                    alerts=chunk, mode=mode, budget=budget
                ),
                timeout=self.settings.pipeline_budget_seconds + CLASSIFY_MARGIN,
            )
        except grpc.aio.AioRpcError as exc:
            level = (
                logging.ERROR
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                else logging.WARNING
            )
            logger.log(
                level,
                "classifier failed; publishing with the rules' verdict",
                extra={"alerts": len(chunk), "error": exc.code().name},
            )
            return [local_rules_verdict(alert) for alert in chunk]
        return list(response.classifications)


def local_rules_verdict(alert: alert_pb2.Alert) -> alert_pb2.Classification:
    """Classify with the deterministic rules in this process.

    Used when the classifier service cannot be reached, so that a page is
    published on time rather than held until the classifier is back.
    """
    labels, annotations = dict(alert.labels), dict(alert.annotations)
    verdict = classify_by_rules(labels, annotations, generator_url=alert.generator_url)
    flags = (
        ["instruction_like_text"]
        if has_instruction_like_text(labels, annotations)
        else []
    )
    classified_at = Timestamp()
    classified_at.GetCurrentTime()
    return alert_pb2.Classification(
        severity=SEVERITY_VALUES[verdict.severity],
        confidence=verdict.confidence,
        reasoning=verdict.reasoning,
        source=alert_pb2.VERDICT_SOURCE_RULES,
        fallback_reason="classifier_unavailable",
        flags=flags,
        classified_at=classified_at,
    )
