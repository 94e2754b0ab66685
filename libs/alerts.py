"""Reading Alertmanager webhook bodies (version 4) into protobuf messages.

`parse_notification` rejects with `InvalidInputError`, naming the field, any
body that can never be valid, and tolerates what Alertmanager versions differ
in: no `fingerprint` before 0.19, no `truncatedAlerts` before 0.21,
`notification_reason` from 0.32, `routeLabels` from 0.34, and unknown fields.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from alerthistory.alert.v1 import alert_pb2
from libs.errors import InvalidInputError

FIRING = alert_pb2.ALERT_STATUS_FIRING
RESOLVED = alert_pb2.ALERT_STATUS_RESOLVED
STATUS_NAMES = {FIRING: "firing", RESOLVED: "resolved"}
STATUS_VALUES: dict[str, alert_pb2.AlertStatus] = {
    "firing": FIRING,
    "resolved": RESOLVED,
}

MAX_FINGERPRINT_LENGTH = 128

# RFC 3339 date-time: any number of fraction digits (nanoseconds are kept),
# "Z" or a numeric offset.
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"([Zz]|[+-]\d{2}:\d{2})$"
)

# Go's zero time.Time, which Alertmanager sends as endsAt for "no end yet".
ZERO_TIME_YEAR = 1

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK64 = (1 << 64) - 1
_LABEL_SEPARATOR = 0xFF


def compute_fingerprint(labels: Mapping[str, str]) -> str:
    """Return Alertmanager's fingerprint of a label set, as 16 hex digits.

    This is FNV-1a (64 bit) over the label names in sorted order, each name
    and value followed by the byte 0xff, as in prometheus/common's
    model.LabelSet.Fingerprint.
    """
    digest = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8"):
                digest = ((digest ^ byte) * _FNV_PRIME) & _MASK64
            digest = ((digest ^ _LABEL_SEPARATOR) * _FNV_PRIME) & _MASK64
    return f"{digest:016x}"


def parse_time(value: str, field: str) -> Timestamp | None:
    """Parse an RFC 3339 time into a UTC Timestamp; None for Go's zero time."""
    try:
        parts = _time_parts(value)
    except _TimeError as exc:
        raise InvalidInputError(f"{field} {exc}: {value[:64]!r}") from None
    if parts is None:
        return None
    stamp = Timestamp()
    stamp.seconds, stamp.nanos = parts
    return stamp


class _TimeError(ValueError):
    """A time that is not RFC 3339, or not a valid date and time."""


# Alertmanager re-sends the same start times with every repeat of a group,
# and every firing alert carries the same zero end time.
@functools.lru_cache(maxsize=4096)
def _time_parts(value: str) -> tuple[int, int] | None:
    """Return (seconds, nanos) since the epoch of an RFC 3339 time, or None."""
    match = _RFC3339.match(value)
    if match is None:
        raise _TimeError("is not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7) or "", match.group(8)
    if year == ZERO_TIME_YEAR:
        return None
    try:
        tz = _parse_offset(offset)
        moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        raise _TimeError("is not a valid time") from None
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return int(moment.astimezone(UTC).timestamp()), nanos


def _parse_offset(offset: str) -> timezone:
    if offset in ("Z", "z"):
        return UTC
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_notification(body: Any) -> alert_pb2.Notification:
    """Check a decoded webhook body and convert it to a Notification."""
    if not isinstance(body, dict):
        raise InvalidInputError("body must be a JSON object")
    version = body.get("version")
    if version is None:
        raise InvalidInputError(
            'version is missing: expected "4", the Alertmanager webhook format'
        )
    if version != "4":
        described = version if isinstance(version, str) else f"{version} (not a string)"
        raise InvalidInputError(
            f'unsupported webhook version {described}: expected the string "4", '
            "the Alertmanager webhook format"
        )
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise InvalidInputError("alerts must be a list of alert objects")
    if not alerts:
        raise InvalidInputError("alerts is empty")

    truncated = body.get("truncatedAlerts", 0)
    if truncated is None:
        truncated = 0
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise InvalidInputError("truncatedAlerts must be a whole number of at least 0")

    notification = alert_pb2.Notification(
        version=version,
        receiver=_optional_string(body, "receiver"),
        group_key=_optional_string(body, "groupKey"),
        external_url=_optional_string(body, "externalURL"),
        notification_reason=_optional_string(body, "notification_reason"),
        truncated_alerts=truncated,
    )
    status = body.get("status")
    if status is not None:
        notification.status = _parse_status(status, "status")
    for key, target in (
        ("groupLabels", notification.group_labels),
        ("commonLabels", notification.common_labels),
        ("commonAnnotations", notification.common_annotations),
    ):
        target.update(_string_map(body.get(key), key))

    for index, raw in enumerate(alerts):
        notification.alerts.append(parse_alert(raw, f"alerts[{index}]"))
    return notification


def parse_alert(raw: Any, where: str = "alert") -> alert_pb2.Alert:
    """Check one alert object and convert it to an Alert."""
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where} must be a JSON object")
    labels = _string_map(raw.get("labels"), f"{where}.labels")
    if not labels:
        raise InvalidInputError(f"{where}.labels is missing or empty")
    if "status" not in raw:
        raise InvalidInputError(f"{where}.status is missing")
    alert = alert_pb2.Alert(
        status=_parse_status(raw["status"], f"{where}.status"),
        generator_url=_optional_string(raw, "generatorURL", where),
    )
    alert.labels.update(labels)
    alert.annotations.update(
        _string_map(raw.get("annotations"), f"{where}.annotations")
    )

    starts_raw = raw.get("startsAt")
    if not isinstance(starts_raw, str):
        raise InvalidInputError(f"{where}.startsAt is missing")
    starts_at = parse_time(starts_raw, f"{where}.startsAt")
    if starts_at is None:
        raise InvalidInputError(f"{where}.startsAt is the zero time")
    alert.starts_at.CopyFrom(starts_at)
    ends_raw = raw.get("endsAt")
    if ends_raw is not None:
        if not isinstance(ends_raw, str):
            raise InvalidInputError(f"{where}.endsAt must be a string")
        ends_at = parse_time(ends_raw, f"{where}.endsAt")
        if ends_at is not None:
            alert.ends_at.CopyFrom(ends_at)

    fingerprint = raw.get("fingerprint")
    if fingerprint in (None, ""):
        alert.fingerprint = compute_fingerprint(labels)
    elif isinstance(fingerprint, str) and len(fingerprint) <= MAX_FINGERPRINT_LENGTH:
        alert.fingerprint = fingerprint
    else:
        raise InvalidInputError(
            f"{where}.fingerprint must be a string of at most "
            f"{MAX_FINGERPRINT_LENGTH} characters"
        )
    return alert


def _parse_status(value: Any, field: str) -> alert_pb2.AlertStatus:
    if value not in STATUS_VALUES:
        raise InvalidInputError(f'{field} must be "firing" or "resolved"')
    return STATUS_VALUES[value]


def _optional_string(body: dict[str, Any], key: str, where: str = "") -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        name = f"{where}.{key}" if where else key
        raise InvalidInputError(f"{name} must be a string")
    return value


def _string_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{field} must be an object of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidInputError(f"{field}.{key} must be a string")
    return value


def timestamp_to_datetime(stamp: Timestamp) -> datetime:
    """Convert a Timestamp to an aware UTC datetime (microsecond precision)."""
    return datetime.fromtimestamp(stamp.seconds, UTC) + timedelta(
        microseconds=stamp.nanos // 1000
    )


def datetime_to_timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def format_time(moment: datetime | None) -> str | None:
    """Format a datetime as RFC 3339 in UTC with a Z, or None."""
    if moment is None:
        return None
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def alert_name(labels: Mapping[str, str]) -> str:
    """Return a non-empty display name for an alert, even one without alertname."""
    name = labels.get("alertname", "").strip()
    if name:
        return name
    for key in ("service", "job", "instance"):
        if labels.get(key, "").strip():
            return f"unnamed alert ({key}={labels[key]})"
    return "unnamed alert"
