"""Request bodies of each target format, built as Python data.

`FORMATS` maps a format name to its builder. A builder takes the
notification's metadata, the alerts selected for a target and the target.
It returns a list of `Message`s, each sent as its own request: `webhook`,
`alertmanager` and `slack` send one per notification, `pagerduty` and
`rootly` one per alert. Builders never turn a missing value into text: an
absent field becomes an empty string, an empty map, JSON null (webhook
`ends_at` only) or Go's zero time (Alertmanager `endsAt`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from services.publisher.encoding import (
    GO_ZERO_TIME,
    SEVERITY_NAMES,
    SOURCE_NAMES,
    STATUS_NAMES,
    UNSPECIFIED,
    Body,
    Message,
    common_pairs,
    confidence_of,
    encode_body,
    format_timestamp,
    group_status,
    severity_name,
)
from services.publisher.pagerduty import build_pagerduty
from services.publisher.rootly import build_rootly
from services.publisher.slack import build_slack

if TYPE_CHECKING:
    from services.publisher.targets import Target

__all__ = [
    "FORMATS",
    "GO_ZERO_TIME",
    "SEVERITY_NAMES",
    "SOURCE_NAMES",
    "STATUS_NAMES",
    "UNSPECIFIED",
    "Body",
    "Format",
    "Message",
    "build_alertmanager",
    "build_webhook",
    "common_pairs",
    "confidence_of",
    "encode_body",
    "format_timestamp",
    "group_status",
    "severity_name",
]

Builder = Callable[
    [alert_pb2.Notification, Sequence[publisher_pb2.PublishAlert], "Target"],
    list[Message],
]

# Version of the `webhook` body schema, sent as its "version" field.
WEBHOOK_SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class Format:
    """A target format: its name and the function that builds its messages."""

    name: str
    build: Builder


def build_webhook(
    notification: alert_pb2.Notification,
    alerts: Sequence[publisher_pb2.PublishAlert],
    target: Target,
) -> list[Message]:
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
    return [Message(body, tuple(alerts))]


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
) -> list[Message]:
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
    return [Message(body, tuple(alerts))]


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
    "pagerduty": Format("pagerduty", build_pagerduty),
    "slack": Format("slack", build_slack),
    "rootly": Format("rootly", build_rootly),
}
