"""Protobuf messages as JSON-ready dictionaries for the HTTP API."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from libs.alerts import STATUS_NAMES, format_time, timestamp_to_datetime

SEVERITY_NAMES = {
    alert_pb2.SEVERITY_CRITICAL: "critical",
    alert_pb2.SEVERITY_WARNING: "warning",
    alert_pb2.SEVERITY_INFO: "info",
    alert_pb2.SEVERITY_NOISE: "noise",
}
SOURCE_NAMES = {
    alert_pb2.VERDICT_SOURCE_MODEL: "model",
    alert_pb2.VERDICT_SOURCE_CACHE: "cache",
    alert_pb2.VERDICT_SOURCE_RULES: "rules",
    alert_pb2.VERDICT_SOURCE_LAST_KNOWN: "last_known",
}


def time_text(message: Any, field: str) -> str | None:
    """RFC 3339 text of a Timestamp field, or None when it is unset."""
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return format_time(timestamp_to_datetime(stamp))


def classification(verdict: alert_pb2.Classification) -> dict[str, Any]:
    return {
        "severity": SEVERITY_NAMES.get(verdict.severity),
        "confidence": round(verdict.confidence, 4),
        "reasoning": verdict.reasoning,
        "recommendations": list(verdict.recommendations),
        "source": SOURCE_NAMES.get(verdict.source),
        "model": verdict.model or None,
        "fallback_reason": verdict.fallback_reason or None,
        "model_severity": SEVERITY_NAMES.get(verdict.model_severity),
        "flags": list(verdict.flags),
        "refusal": verdict.refusal or None,
        "processing_seconds": round(
            verdict.processing_time.ToTimedelta().total_seconds(), 4
        ),
        "classified_at": time_text(verdict, "classified_at"),
        "tokens": verdict.tokens,
    }


def occurrence(item: history_pb2.Occurrence) -> dict[str, Any]:
    duration = None
    if item.HasField("ends_at"):
        duration = (
            timestamp_to_datetime(item.ends_at) - timestamp_to_datetime(item.starts_at)
        ).total_seconds()
    return {
        "id": item.id,
        "fingerprint": item.fingerprint,
        "status": STATUS_NAMES.get(item.status, "unknown"),
        "labels": dict(item.labels),
        "annotations": dict(item.annotations),
        "starts_at": time_text(item, "starts_at"),
        "ends_at": time_text(item, "ends_at"),
        "duration_seconds": duration,
        "generator_url": item.generator_url,
        "first_seen_at": time_text(item, "first_seen_at"),
        "last_seen_at": time_text(item, "last_seen_at"),
        "group_key": item.group_key,
        "receiver": item.receiver,
        "truncated_alerts": item.truncated_alerts,
        "external_url": item.external_url,
        "deliveries": item.deliveries,
        "state_changes": [
            {
                "id": change.id,
                "status": STATUS_NAMES.get(change.status, "unknown"),
                "changed_at": time_text(change, "changed_at"),
                "classification": (
                    classification(change.classification)
                    if change.HasField("classification")
                    else None
                ),
            }
            for change in item.state_changes
        ],
    }
