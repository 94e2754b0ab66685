"""Helpers every target format shares: names, times, text cutting and JSON.

A format builds `Message`s: one request body each, with the alerts it
carries and the key that orders it among the target's other deliveries.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2

Body = dict[str, Any]

# Go's zero time.Time as Go (and so Alertmanager) writes it in JSON.
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
ELLIPSIS = "…"

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
class Message:
    """One request body and the alert states it carries.

    Deliveries to one target that share an `order_key` are sent one at a
    time in the order they were recorded. None orders by the notification's
    group key.
    """

    body: Body
    alerts: tuple[publisher_pb2.PublishAlert, ...]
    order_key: str | None = None


def severity_name(severity: int) -> str:
    return SEVERITY_NAMES.get(severity, UNSPECIFIED)


def status_name(alert: alert_pb2.Alert) -> str:
    return STATUS_NAMES.get(alert.status, UNSPECIFIED)


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


def occurrence_key(alert: alert_pb2.Alert) -> str:
    """Return the key of the alert's occurrence: its fingerprint and start.

    The history service calls one (fingerprint, startsAt) pair an occurrence,
    and each occurrence fires and resolves at most once.
    """
    return f"{alert.fingerprint}@{format_timestamp(alert.starts_at)}"


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


def encoded_size(body: Body) -> int:
    """Return the size in bytes of the body as `encode_body` writes it in UTF-8."""
    return len(encode_body(body).encode("utf-8"))


def cut_text(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` characters, ending in an ellipsis when cut.

    Python strings index by code point, so no character is split. A cut that
    would leave a combining mark without its base character moves back to
    before that base character.
    """
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    end = limit - len(ELLIPSIS)
    while 0 < end < len(text) and unicodedata.combining(text[end]):
        end -= 1
    return text[:end] + ELLIPSIS
