"""Builders of publish requests, targets files and running publishers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from libs.alerts import parse_notification
from libs.config import Settings
from libs.db import Database, migrate
from services.publisher.migrations import COMPONENT, MIGRATIONS
from services.publisher.service import PublisherService, create_service
from services.publisher.store import DeliveryRecord, DeliveryStore
from tests.conftest import FIXTURES
from tests.fakes.receiver import Receiver

SEVERITIES = {
    "critical": alert_pb2.SEVERITY_CRITICAL,
    "warning": alert_pb2.SEVERITY_WARNING,
    "info": alert_pb2.SEVERITY_INFO,
    "noise": alert_pb2.SEVERITY_NOISE,
}


def classification(
    severity: str = "critical",
    confidence: float = 0.9,
    reasoning: str = "Disk almost full on a database node.",
) -> alert_pb2.Classification:
    return alert_pb2.Classification(
        severity=SEVERITIES[severity],
        confidence=confidence,
        reasoning=reasoning,
        source=alert_pb2.VERDICT_SOURCE_RULES,
        flags=["severity_floor"],
    )


def publish_alert(
    labels: dict[str, str] | None = None,
    *,
    severity: str = "critical",
    confidence: float = 0.9,
    reasoning: str = "Disk almost full on a database node.",
    status: alert_pb2.AlertStatus = alert_pb2.ALERT_STATUS_FIRING,
    fingerprint: str = "0123456789abcdef",
) -> publisher_pb2.PublishAlert:
    alert = alert_pb2.Alert(
        fingerprint=fingerprint,
        status=status,
        generator_url="http://prometheus.example:9090/graph",
    )
    alert.labels.update(
        labels if labels is not None else {"alertname": "DiskFull", "namespace": "db"}
    )
    alert.annotations["summary"] = "Disk almost full"
    alert.starts_at.FromSeconds(1_714_557_600)
    return publisher_pb2.PublishAlert(
        alert=alert,
        classification=classification(severity, confidence, reasoning),
        occurrence_id=1,
        state_change_id=7,
    )


def publish_request(
    batch_id: str,
    alerts: list[publisher_pb2.PublishAlert] | None = None,
    group_key: str = '{}:{alertname="DiskFull"}',
) -> publisher_pb2.PublishRequest:
    notification = alert_pb2.Notification(
        version="4",
        receiver="ai-proxy",
        status=alert_pb2.ALERT_STATUS_FIRING,
        group_key=group_key,
        external_url="http://alertmanager.example:9093",
    )
    notification.group_labels["alertname"] = "DiskFull"
    return publisher_pb2.PublishRequest(
        batch_id=batch_id,
        notification=notification,
        alerts=alerts if alerts is not None else [publish_alert()],
    )


def fixture_request(
    path: str, verdicts: list[alert_pb2.Classification], batch_id: str = "fixture"
) -> publisher_pb2.PublishRequest:
    """A request built from a webhook fixture, one verdict per alert."""
    notification = parse_notification(json.loads((FIXTURES / path).read_text()))
    alerts = list(notification.alerts)
    del notification.alerts[:]
    return publisher_pb2.PublishRequest(
        batch_id=batch_id,
        notification=notification,
        alerts=[
            publisher_pb2.PublishAlert(alert=alert, classification=verdict)
            for alert, verdict in zip(alerts, verdicts, strict=True)
        ],
    )


def write_targets(directory: Path, targets: list[dict[str, Any]]) -> Path:
    path = directory / "targets.yaml"
    path.write_text(yaml.safe_dump(targets), encoding="utf-8")
    return path


def make_settings(
    database_url: str, targets_file: Path | None, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "publishing_targets_file": targets_file,
        "delivery_initial_backoff_seconds": 0.05,
        "delivery_max_backoff_seconds": 0.2,
        "delivery_timeout_seconds": 5.0,
        "delivery_max_attempts": 5,
        "shutdown_grace_seconds": 0.0,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@asynccontextmanager
async def running_publisher(
    settings: Settings, registry: CollectorRegistry | None = None
) -> AsyncIterator[PublisherService]:
    service = create_service(settings, registry or CollectorRegistry())
    await service.start()
    try:
        yield service
    finally:
        await service.close()


async def wait_for_delivery(
    service: PublisherService,
    batch_id: str,
    condition: Callable[[DeliveryRecord], bool],
    wait_seconds: float = 10.0,
) -> DeliveryRecord:
    """Poll until the batch's only delivery meets `condition`."""
    deadline = time.monotonic() + wait_seconds
    while True:
        records = await service.store.deliveries_for_batch(batch_id)
        if len(records) == 1 and condition(records[0]):
            return records[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery of {batch_id} still {records!r}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as server:
        yield server


@pytest.fixture
async def store(any_database_url: str) -> AsyncIterator[DeliveryStore]:
    """A delivery store on a migrated database of either dialect."""
    db = Database(any_database_url)
    await db.connect()
    await migrate(db, COMPONENT, MIGRATIONS)
    try:
        yield DeliveryStore(db)
    finally:
        await db.close()
