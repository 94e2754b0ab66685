"""Request bodies of each target format, built as Python data.

`FORMATS` maps a format name to its builder. A builder takes the
notification's metadata, the alerts that passed a target's filter and the
target. It returns a list of JSON bodies, each sent as its own request, so a
format whose receiver takes one event per request can return several.
Builders never turn a missing value into text: an absent field becomes an
empty string, an empty map, JSON null (webhook `ends_at` only) or Go's zero
time (Alertmanager `endsAt`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2

if TYPE_CHECKING:
    from services.publisher.targets import Target

Body = dict[str, Any]
Builder = Callable[
    [alert_pb2.Notification, Sequence[publisher_pb2.PublishAlert], "Target"],
    list[Body],
]

# Version of the `webhook` body schema, sent as its "version" field.
WEBHOOK_SCHEMA_VERSION = "1"
# Go's zero time.Time as Go (and so Alertmanager) writes it in JSON.
GO_ZERO_TIME = "0001-01-01T00:00:00Z"

SEVERITY_NAMES: dict[int, str] = {
    alert_pb2.SEVERITY_CRITICAL: "critical",
    alert_pb2.SEVERITY_WARNING: "warning",
    alert_pb2.SEVERITY_INFO: "info",
    alert_pb2.SEVERITY_NOISE: "noise",
}
SOURCE_NAMES: dict[int, str] = {
    alert_pb2.VERDICT_SOURCE_MODEL: "model",
    alert_pb2.VERDICT_SOURCE_CACHE: "cache",
    alert_pb2.VERDICT_SOURCE_RULES: "rules",
    alert_pb2.VERDICT_SOURCE_LAST_KNOWN: "last_known",
}
STATUS_NAMES: dict[int, str] = {
    alert_pb2.ALERT_STATUS_FIRING: "firing",
    alert_pb2.ALERT_STATUS_RESOLVED: "resolved",
}
UNSPECIFIED = "unspecified"


@dataclass(frozen=True)
class Format:
    """A target format: its name and the function that builds its bodies."""

    name: str
    build: Builder


def severity_name(severity: int) -> str:
    return SEVERITY_NAMES.get(severity, UNSPECIFIED)


def confidence_of(classification: alert_pb2.Classification) -> float:
    """Return the confidence clamped to 0..1; NaN becomes 0 so JSON stays valid."""
    value = classification.confidence
    if not math.isfinite(value):
        return 0.0
    return min(max(value, 0.0), 1.0)


def format_timestamp(stamp: Timestamp) -> str:
    """Format as RFC 3339 in UTC the way Go's time.RFC3339Nano does.

    The fraction keeps up to nine digits without trailing zeros and is left
    out when zero, as in "2024-05-01T10:00:00.5Z".
    """
    moment = datetime.fromtimestamp(stamp.seconds, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if stamp.nanos:
        text += "." + f"{stamp.nanos:09d}".rstrip("0")
    return text + "Z"


def group_status(alerts: Iterable[alert_pb2.Alert]) -> str:
    """Return "firing" when any alert fires, else "resolved", as Alertmanager does."""
    if any(alert.status == alert_pb2.ALERT_STATUS_FIRING for alert in alerts):
        return "firing"
    return "resolved"


def common_pairs(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Return the name/value pairs present in every map, as Alertmanager's
    commonLabels and commonAnnotations are computed."""
    if not maps:
        return {}
    first, *rest = maps
    return {
        name: value
        for name, value in sorted(first.items())
        if all(other.get(name) == value for other in rest)
    }


def encode_body(body: Body) -> str:
    """Serialise a body as compact JSON; NaN and infinity raise ValueError."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def build_webhook(
    notification: alert_pb2.Notification,
    alerts: Sequence[publisher_pb2.PublishAlert],
    target: Target,
) -> list[Body]:
    """Build the `webhook` body: notification metadata and classified alerts."""
    body: Body = {
        "version": WEBHOOK_SCHEMA_VERSION,
        "receiver": notification.receiver,
        "status": group_status(item.alert for item in alerts),
        "group_key": notification.group_key,
        "group_labels": dict(sorted(notification.group_labels.items())),
        "common_labels": common_pairs([item.alert.labels for item in alerts]),
        "external_url": notification.external_url,
        "truncated_alerts": notification.truncated_alerts,
        "alerts": [_webhook_alert(item) for item in alerts],
    }
    return [body]


def _webhook_alert(item: publisher_pb2.PublishAlert) -> Body:
    alert = item.alert
    classification = item.classification
    return {
        "fingerprint": alert.fingerprint,
        "status": STATUS_NAMES.get(alert.status, UNSPECIFIED),
        "labels": dict(sorted(alert.labels.items())),
        "annotations": dict(sorted(alert.annotations.items())),
        "starts_at": format_timestamp(alert.starts_at),
        "ends_at": format_timestamp(alert.ends_at)
        if alert.HasField("ends_at")
        else None,
        "generator_url": alert.generator_url,
        "classification": {
            "severity": severity_name(classification.severity),
            "confidence": confidence_of(classification),
            "reasoning": classification.reasoning,
            "source": SOURCE_NAMES.get(classification.source, UNSPECIFIED),
            "flags": list(classification.flags),
        },
    }


def build_alertmanager(
    notification: alert_pb2.Notification,
    alerts: Sequence[publisher_pb2.PublishAlert],
    target: Target,
) -> list[Body]:
    """Build an Alertmanager webhook body (version 4) of the filtered alerts.

    Each alert gets the labels llm_severity and llm_confidence and, when the
    verdict has reasoning, the annotation llm_reasoning. These replace any
    label or annotation of the same name. commonLabels and commonAnnotations
    are computed over the alerts in this body, as Alertmanager computes them
    over the alerts it sends.
    """
    converted = [_alertmanager_alert(item) for item in alerts]
    body: Body = {
        "receiver": notification.receiver,
        "status": group_status(item.alert for item in alerts),
        "alerts": converted,
        "groupLabels": dict(sorted(notification.group_labels.items())),
        "commonLabels": common_pairs([alert["labels"] for alert in converted]),
        "commonAnnotations": common_pairs(
            [alert["annotations"] for alert in converted]
        ),
        "externalURL": notification.external_url,
        "version": "4",
        "groupKey": notification.group_key,
        "truncatedAlerts": notification.truncated_alerts,
    }
    if notification.notification_reason:
        body["notification_reason"] = notification.notification_reason
    return [body]


def _alertmanager_alert(item: publisher_pb2.PublishAlert) -> Body:
    alert = item.alert
    classification = item.classification
    labels = dict(alert.labels)
    labels["llm_severity"] = severity_name(classification.severity)
    labels["llm_confidence"] = f"{confidence_of(classification):.2f}"
    annotations = dict(alert.annotations)
    if classification.reasoning:
        annotations["llm_reasoning"] = classification.reasoning
    ends_at = format_timestamp(alert.ends_at) if alert.HasField("ends_at") else None
    return {
        "status": STATUS_NAMES.get(alert.status, UNSPECIFIED),
        "labels": dict(sorted(labels.items())),
        "annotations": dict(sorted(annotations.items())),
        "startsAt": format_timestamp(alert.starts_at),
        "endsAt": ends_at or GO_ZERO_TIME,
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint,
    }


FORMATS: dict[str, Format] = {
    "webhook": Format("webhook", build_webhook),
    "alertmanager": Format("alertmanager", build_alertmanager),
}

# Formats a target may name that have no builder yet; loading rejects them.
PLANNED_FORMATS = frozenset({"pagerduty", "slack", "rootly"})
