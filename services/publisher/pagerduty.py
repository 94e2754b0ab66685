"""The `pagerduty` format: one PagerDuty Events API v2 event per alert.

PagerDuty's developer documentation ("Send an Alert Event" and "Events API
v2 Overview") limits `dedup_key` to 255 characters and `payload.summary` to
1,024, allows the severities critical, error, warning and info, and limits
an event to 512 KB, taken here as 512,000 bytes. This module keeps every
event inside those limits without losing the alert. The summary is cut but
its full text stays in `custom_details`, and `custom_details` is cut field
by field before the event could grow past 512,000 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from services.publisher.encoding import (
    ELLIPSIS,
    SOURCE_NAMES,
    UNSPECIFIED,
    Body,
    Message,
    confidence_of,
    encoded_size,
    format_timestamp,
    severity_name,
)

if TYPE_CHECKING:
    from services.publisher.targets import Target

MAX_DEDUP_KEY_LENGTH = 255
MAX_SUMMARY_LENGTH = 1024
MAX_EVENT_BYTES = 512_000
DEDUP_KEY_PREFIX = "alert-history"
CLIENT_NAME = "alert-history"

# The verdict's severity as a PagerDuty severity. Noise goes out as info only
# with `noise_policy: info`; the default policy filters it out before this.
# A verdict without a severity pages as "error" rather than being dropped.
PAGERDUTY_SEVERITIES = {
    "critical": "critical",
    "warning": "warning",
    "info": "info",
    "noise": "info",
    UNSPECIFIED: "error",
}
# Label names tried in order for `payload.source`, the affected system.
SOURCE_LABELS = ("instance", "host", "node", "pod", "service", "job", "namespace")
# Annotations that make up the summary, in order of preference.
SUMMARY_ANNOTATIONS = ("summary", "message", "description")
# Loop bound of the trimming: each pass cuts one field.
MAX_TRIM_PASSES = 64


def dedup_key(alert: alert_pb2.Alert) -> str:
    """Return the dedup_key of the alert's occurrence, at most 255 characters.

    The fingerprint and start time are the same for an occurrence's trigger
    and resolve. The gateway computes the fingerprint from the labels when
    Alertmanager leaves it out, so every alert has one. A key over the limit
    is replaced by a SHA-256 hash of itself.
    """
    key = f"{DEDUP_KEY_PREFIX}/{alert.fingerprint}/{format_timestamp(alert.starts_at)}"
    if len(key) <= MAX_DEDUP_KEY_LENGTH:
        return key
    return f"{DEDUP_KEY_PREFIX}/sha256/{sha256(key.encode()).hexdigest()}"


def summary_text(alert: alert_pb2.Alert) -> str:
    """Return the alert's one-line description: alertname and its summary."""
    name = alert.labels.get("alertname", "") or f"alert {alert.fingerprint}"
    for annotation in SUMMARY_ANNOTATIONS:
        text = alert.annotations.get(annotation, "").strip()
        if text:
            return f"{name}: {text}"
    return name


def build_pagerduty(
    notification: alert_pb2.Notification,
    alerts: Sequence[publisher_pb2.PublishAlert],
    target: Target,
) -> list[Message]:
    """Build one trigger or resolve event per alert.

    Events of one alert are ordered by its fingerprint, so an occurrence's
    resolve never overtakes its trigger while different alerts are sent in
    parallel.
    """
    routing_key = target.routing_key or ""
    return [
        Message(
            body=_event(notification, item, routing_key),
            alerts=(item,),
            order_key=f"alert:{item.alert.fingerprint}",
        )
        for item in alerts
    ]


def _event(
    notification: alert_pb2.Notification,
    item: publisher_pb2.PublishAlert,
    routing_key: str,
) -> Body:
    alert = item.alert
    if alert.status == alert_pb2.ALERT_STATUS_RESOLVED:
        return {
            "routing_key": routing_key,
            "dedup_key": dedup_key(alert),
            "event_action": "resolve",
        }
    event = _trigger(notification, item, routing_key)
    fit_event(event)
    return event


def _trigger(
    notification: alert_pb2.Notification,
    item: publisher_pb2.PublishAlert,
    routing_key: str,
) -> Body:
    alert = item.alert
    summary = summary_text(alert)
    payload: Body = {
        "summary": cut_summary(summary),
        "source": _source(alert, notification),
        "severity": PAGERDUTY_SEVERITIES[severity_name(item.classification.severity)],
        "timestamp": format_timestamp(alert.starts_at),
        "custom_details": _custom_details(notification, item, summary),
    }
    for field, label in (("component", "service"), ("group", "namespace")):
        if alert.labels.get(label):
            payload[field] = alert.labels[label]
    if alert.labels.get("alertname"):
        payload["class"] = alert.labels["alertname"]

    event: Body = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(alert),
        "payload": payload,
        "client": CLIENT_NAME,
    }
    if notification.external_url:
        event["client_url"] = notification.external_url
    if alert.generator_url:
        event["links"] = [{"href": alert.generator_url, "text": "Source"}]
    return event


def cut_summary(summary: str) -> str:
    """Cut to 1,024 characters on a character boundary, ending in an ellipsis."""
    if len(summary) <= MAX_SUMMARY_LENGTH:
        return summary
    return summary[: MAX_SUMMARY_LENGTH - len(ELLIPSIS)] + ELLIPSIS


def _source(alert: alert_pb2.Alert, notification: alert_pb2.Notification) -> str:
    for label in SOURCE_LABELS:
        if alert.labels.get(label):
            return alert.labels[label]
    return notification.receiver or CLIENT_NAME


def _custom_details(
    notification: alert_pb2.Notification,
    item: publisher_pb2.PublishAlert,
    summary: str,
) -> Body:
    alert = item.alert
    classification = item.classification
    details: Body = {
        "summary": summary,
        "description": alert.annotations.get("description", ""),
        "fingerprint": alert.fingerprint,
        "labels": dict(sorted(alert.labels.items())),
        # summary and description are above already.
        "annotations": {
            name: value
            for name, value in sorted(alert.annotations.items())
            if name not in ("summary", "description")
        },
        "classification": {
            "severity": severity_name(classification.severity),
            "confidence": confidence_of(classification),
            "reasoning": classification.reasoning,
            "source": SOURCE_NAMES.get(classification.source, UNSPECIFIED),
            "flags": list(classification.flags),
        },
        "group_key": notification.group_key,
        "receiver": notification.receiver,
    }
    if notification.truncated_alerts:
        details["truncated_alerts"] = notification.truncated_alerts
    return details


def fit_event(event: Body) -> None:
    """Cut `custom_details` until the encoded event is at most 512,000 bytes.

    Each pass cuts the longest string in custom_details (nested maps
    included) by at least the excess, so every pass shrinks the event. The
    cut value ends with a marker giving the characters removed, and
    `custom_details.cut_fields` lists what was cut. If that is not enough,
    custom_details is replaced by a marker. The summary is never touched.
    """
    excess = encoded_size(event) - MAX_EVENT_BYTES
    if excess <= 0:
        return
    details: Body = event["payload"]["custom_details"]
    cut_fields: list[str] = []
    details["cut_fields"] = cut_fields
    for _ in range(MAX_TRIM_PASSES):
        excess = encoded_size(event) - MAX_EVENT_BYTES
        if excess <= 0:
            return
        if not _cut_longest(details, excess, cut_fields):
            break
    if encoded_size(event) > MAX_EVENT_BYTES:
        event["payload"]["custom_details"] = {
            "cut": "custom_details removed: the event was larger than "
            f"{MAX_EVENT_BYTES} bytes; the alert history keeps the full alert",
            "fingerprint": details.get("fingerprint", ""),
        }


def _cut_longest(details: Body, excess: int, cut_fields: list[str]) -> bool:
    """Cut the longest string of `details` by `excess` characters and more."""
    found = _longest_string(details, ())
    if found is None:
        return False
    path, value = found
    marker = " [cut: {} characters removed]"
    # Every character is at least one byte and the marker is ASCII, so
    # removing `excess` characters plus the marker's length removes at least
    # `excess` bytes.
    keep = max(len(value) - excess - len(marker.format(len(value))), 0)
    if keep == 0 and len(value) <= len(marker.format(len(value))):
        return False
    container: Any = details
    for key in path[:-1]:
        container = container[key]
    container[path[-1]] = value[:keep] + marker.format(len(value) - keep)
    name = ".".join(path)
    if name not in cut_fields:
        cut_fields.append(name)
    return True


def _longest_string(
    value: Any, path: tuple[str, ...]
) -> tuple[tuple[str, ...], str] | None:
    if isinstance(value, str):
        return path, value
    if not isinstance(value, dict):
        return None
    best: tuple[tuple[str, ...], str] | None = None
    for key, item in value.items():
        if key == "cut_fields":
            continue
        found = _longest_string(item, (*path, str(key)))
        if found is not None and (best is None or len(found[1]) > len(best[1])):
            best = found
    return best
