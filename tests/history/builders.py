"""Builders of stored history for the query, report and retention tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from libs.alerts import format_time, parse_notification
from services.history.store import HistoryStore

BASE = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
ZERO_TIME = "0001-01-01T00:00:00Z"

SEVERITIES = {
    "critical": alert_pb2.SEVERITY_CRITICAL,
    "warning": alert_pb2.SEVERITY_WARNING,
    "info": alert_pb2.SEVERITY_INFO,
    "noise": alert_pb2.SEVERITY_NOISE,
}


def at(minutes: float) -> datetime:
    """Return BASE plus `minutes`."""
    return BASE + timedelta(minutes=minutes)


def alert(
    fingerprint: str,
    *,
    starts_at: datetime,
    ends_at: datetime | None = None,
    alertname: str = "DiskFull",
    namespace: str = "prod",
    severity: str = "warning",
) -> dict[str, Any]:
    """Return a webhook alert, resolved when `ends_at` is given."""
    return {
        "status": "resolved" if ends_at is not None else "firing",
        "labels": {
            "alertname": alertname,
            "namespace": namespace,
            "severity": severity,
            "instance": fingerprint,
        },
        "annotations": {},
        "startsAt": format_time(starts_at),
        "endsAt": format_time(ends_at) if ends_at is not None else ZERO_TIME,
        "generatorURL": "http://prometheus.example:9090/graph",
        "fingerprint": fingerprint,
    }


async def notify(
    history: HistoryStore, *alerts: dict[str, Any], enqueue_work: bool = False
) -> history_pb2.StoreNotificationResponse:
    """Store one notification carrying `alerts`."""
    body = {
        "version": "4",
        "groupKey": "{}:{}",
        "status": "firing",
        "receiver": "ai-proxy",
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }
    return await history.store_notification(
        parse_notification(body), enqueue_work=enqueue_work
    )


async def cycle(
    history: HistoryStore,
    fingerprint: str,
    starts_at: datetime,
    ends_at: datetime | None = None,
    *,
    alertname: str = "DiskFull",
    namespace: str = "prod",
    severity: str = "warning",
) -> tuple[int, int]:
    """Store an occurrence firing, then resolved when `ends_at` is given.

    Returns the ids of the firing and the resolved state change (0 when it
    stays firing).
    """
    fired = await notify(
        history,
        alert(
            fingerprint,
            starts_at=starts_at,
            alertname=alertname,
            namespace=namespace,
            severity=severity,
        ),
    )
    firing_id = fired.alerts[0].state_change_id
    if ends_at is None:
        return firing_id, 0
    resolved = await notify(
        history,
        alert(
            fingerprint,
            starts_at=starts_at,
            ends_at=ends_at,
            alertname=alertname,
            namespace=namespace,
            severity=severity,
        ),
    )
    return firing_id, resolved.alerts[0].state_change_id


async def classify(
    history: HistoryStore, state_change_id: int, severity: str, confidence: float
) -> None:
    """Record a classification of one state change."""
    await history.record_classifications(
        [
            history_pb2.ClassificationRecord(
                state_change_id=state_change_id,
                classification=alert_pb2.Classification(
                    severity=SEVERITIES[severity],
                    confidence=confidence,
                    reasoning=f"judged {severity}",
                    source=alert_pb2.VERDICT_SOURCE_RULES,
                ),
            )
        ]
    )


async def filter_dataset(store: HistoryStore) -> None:
    """Store five occurrences, f1 to f5, whose filters differ one by one.

    f2's resolved state change is classified before its firing one, so its
    latest classification (warning, 0.95) arrives first.
    """
    f1, _ = await cycle(store, "f1", at(0), alertname="DiskFull", severity="critical")
    await classify(store, f1, "critical", 0.9)
    f2_firing, f2_resolved = await cycle(
        store, "f2", at(10), at(15), alertname="DiskFull", namespace="dev"
    )
    await classify(store, f2_resolved, "warning", 0.95)
    await classify(store, f2_firing, "noise", 0.4)
    await cycle(store, "f3", at(20), alertname="CpuHigh")
    f4, _ = await cycle(
        store,
        "f4",
        at(30),
        at(40),
        alertname="CpuHigh",
        namespace="dev",
        severity="info",
    )
    await classify(store, f4, "info", 0.7)
    f5, _ = await cycle(
        store, "f5", at(-120), at(-100), alertname="MemoryLow", namespace="staging"
    )
    await classify(store, f5, "noise", 0.99)


async def report_dataset(store: HistoryStore) -> None:
    """Store a known window, 10:00 to 12:00, and one occurrence before it.

    Flappy/prod: f1 fires and resolves three times (60, 120, 180 s) and f2
    once (600 s). Steady/prod: s1 fires once and stays firing.
    """
    for minutes, seconds in ((0, 60), (10, 120), (20, 180)):
        await cycle(
            store, "f1", at(minutes), at(minutes + seconds / 60), alertname="Flappy"
        )
    await cycle(store, "f2", at(30), at(40), alertname="Flappy")
    await cycle(store, "s1", at(50), alertname="Steady")
    await cycle(store, "old", at(-60), at(-30), alertname="Flappy")
