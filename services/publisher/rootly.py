"""The `rootly` format: one JSON alert per alert for Rootly's generic alert
webhook.

Rootly's generic webhook alert source creates one Rootly alert per request
and reads the fields it is configured to map (title, description, status,
external id) from the JSON body. The external id is the alert's
fingerprint, so a resolve matches the Rootly alert its trigger created;
that only works with one request per alert. The target's `headers` carry
the credentials, as `Authorization: Bearer <secret>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from services.publisher.encoding import (
    SOURCE_NAMES,
    UNSPECIFIED,
    Body,
    Message,
    confidence_of,
    format_timestamp,
    severity_name,
    status_name,
)
from services.publisher.pagerduty import summary_text

if TYPE_CHECKING:
    from services.publisher.targets import Target

SOURCE = "alert-history"


def build_rootly(
    notification: alert_pb2.Notification,
    alerts: Sequence[publisher_pb2.PublishAlert],
    target: Target,
) -> list[Message]:
    """Build one alert body per alert, ordered per fingerprint."""
    return [
        Message(
            body=_alert_body(notification, item),
            alerts=(item,),
            order_key=f"alert:{item.alert.fingerprint}",
        )
        for item in alerts
    ]


def _alert_body(
    notification: alert_pb2.Notification, item: publisher_pb2.PublishAlert
) -> Body:
    alert = item.alert
    classification = item.classification
    # NOTE: Rootly documents no size limit for generic webhook bodies, so
    # nothing here is cut; a rejected body is dead-lettered with the reply.
    return {
        "title": summary_text(alert),
        "description": alert.annotations.get("description", ""),
        "status": status_name(alert),
        "severity": severity_name(classification.severity),
        "external_id": alert.fingerprint,
        "source": SOURCE,
        "labels": dict(sorted(alert.labels.items())),
        "annotations": dict(sorted(alert.annotations.items())),
        "started_at": format_timestamp(alert.starts_at),
        "ended_at": format_timestamp(alert.ends_at)
        if alert.HasField("ends_at")
        else None,
        "generator_url": alert.generator_url,
        "external_url": notification.external_url,
        "group_key": notification.group_key,
        "truncated_alerts": notification.truncated_alerts,
        "classification": {
            "severity": severity_name(classification.severity),
            "confidence": confidence_of(classification),
            "reasoning": classification.reasoning,
            "source": SOURCE_NAMES.get(classification.source, UNSPECIFIED),
        },
    }
