"""An alert's recent history, read from the history service for the prompt.

`HistoryContextSource.get` calls `HistoryService.GetAlertContext` with a
short deadline and returns None on any failure, so a slow or absent history
service delays a classification by at most that deadline and never fails it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2, history_pb2_grpc
from libs import telemetry, tls
from libs.alerts import timestamp_to_datetime
from libs.config import Settings
from libs.convert import SEVERITY_NAMES, SOURCE_NAMES
from libs.grpcserver import channel_options

logger = logging.getLogger(__name__)

LOG_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True)
class AlertContext:
    """Counts of the last 24 hours and the latest stored verdict of a fingerprint."""

    recent_occurrences: int
    flap_count: int
    last_classification: alert_pb2.Classification | None = None

    @classmethod
    def from_response(cls, reply: history_pb2.GetAlertContextResponse) -> AlertContext:
        last = None
        if reply.HasField("last_classification"):
            last = reply.last_classification
        return cls(reply.recent_occurrences, reply.flap_count, last)

    def prompt_data(self, now: float | None = None) -> dict[str, Any]:
        """Return the history as the model receives it: counts and enum names only.

        The last verdict's reasoning is left out, because it is model-written
        text that may repeat instructions an alert once contained.
        """
        data: dict[str, Any] = {
            "available": True,
            "recent_occurrences_24h": self.recent_occurrences,
            "flap_count_24h": self.flap_count,
            "last_verdict": None,
        }
        last = self.last_classification
        if last is not None:
            verdict: dict[str, Any] = {
                "severity": SEVERITY_NAMES.get(last.severity),
                "source": SOURCE_NAMES.get(last.source),
            }
            if last.HasField("classified_at"):
                moment = timestamp_to_datetime(last.classified_at).timestamp()
                current = time.time() if now is None else now
                verdict["age_hours"] = round(max(0.0, current - moment) / 3600, 1)
            data["last_verdict"] = verdict
        return data


class ContextSource(Protocol):
    """A source of alert history for the classifier."""

    async def get(
        self, fingerprint: str, wait_seconds: float
    ) -> AlertContext | None: ...

    async def close(self) -> None: ...


class ContextMetrics:
    """Outcomes of history lookups."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "alert_history_classifier_context_lookups_total",
            "GetAlertContext calls by result: ok or the gRPC status code name.",
            ["result"],
            registry=registry,
        )


class HistoryContextSource:
    """Reads `GetAlertContext` over gRPC from HISTORY_ADDR."""

    def __init__(self, settings: Settings, metrics: ContextMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._channel: grpc.aio.Channel | None = None
        self._stub: history_pb2_grpc.HistoryServiceStub | None = None
        self._last_log = 0.0

    async def get(self, fingerprint: str, wait_seconds: float) -> AlertContext | None:
        if not fingerprint or wait_seconds <= 0:
            return None
        try:
            reply = await self._get_stub().GetAlertContext(
                history_pb2.GetAlertContextRequest(fingerprint=fingerprint),
                timeout=wait_seconds,
            )
        except grpc.aio.AioRpcError as exc:
            self._metrics.lookups.labels(exc.code().name).inc()
            self._log_failure(fingerprint, exc)
            return None
        self._metrics.lookups.labels("ok").inc()
        return AlertContext.from_response(reply)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    def _get_stub(self) -> history_pb2_grpc.HistoryServiceStub:
        """Open the channel on first use, inside the running event loop."""
        if self._stub is None:
            self._channel = tls.aio_channel(
                self._settings.history_addr,
                self._settings,
                options=channel_options(self._settings),
                interceptors=telemetry.grpc_client_interceptors(),
            )
            self._stub = history_pb2_grpc.HistoryServiceStub(self._channel)
        return self._stub

    def _log_failure(self, fingerprint: str, exc: grpc.aio.AioRpcError) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL_SECONDS:
            return
        self._last_log = now
        logger.warning(
            "cannot read alert history, classifying without it",
            extra={"fingerprint": fingerprint, "error": exc.code().name},
        )
