"""Conversions between history rows and protobuf messages.

Statuses and enums are stored as lower-case text ("firing", "critical",
"model") so that the tables read well in SQL, and the maps below turn them
back into enum values.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf.descriptor import EnumDescriptor

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from libs.alerts import STATUS_NAMES, STATUS_VALUES, datetime_to_timestamp
from libs.alerts import timestamp_to_datetime as _timestamp_to_datetime
from libs.db import Row
from libs.errors import InvalidInputError


def _enum_texts(descriptor: EnumDescriptor, prefix: str) -> dict[int, str]:
    return {
        value.number: value.name.removeprefix(prefix).lower()
        for value in descriptor.values
    }


STATUS_TEXT: dict[int, str] = {int(value): text for value, text in STATUS_NAMES.items()}
SEVERITY_TEXT = _enum_texts(alert_pb2.Severity.DESCRIPTOR, "SEVERITY_")
SEVERITY_VALUE = {text: number for number, text in SEVERITY_TEXT.items()}
SOURCE_TEXT = _enum_texts(alert_pb2.VerdictSource.DESCRIPTOR, "VERDICT_SOURCE_")
SOURCE_VALUE = {text: number for number, text in SOURCE_TEXT.items()}


def enum_text(texts: Mapping[int, str], value: int, field: str) -> str:
    """Return the stored text of an enum value, or raise for one this build lacks."""
    text = texts.get(value)
    if text is None:
        raise InvalidInputError(f"{field} has the unknown value {value}")
    return text


def status_text(value: int, field: str) -> str:
    """Return "firing" or "resolved", or raise InvalidInputError for other values."""
    text = STATUS_TEXT.get(value)
    if text is None:
        raise InvalidInputError(f"{field} must be firing or resolved, not {value}")
    return text


def timestamp_to_datetime(stamp: Any, field: str) -> datetime:
    """Convert a Timestamp to UTC, or raise InvalidInputError outside years 1-9999."""
    try:
        return _timestamp_to_datetime(stamp)
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidInputError(f"{field} is out of range: {stamp.seconds} s") from exc


def classification_params(
    classification: alert_pb2.Classification, field: str
) -> tuple[Any, ...]:
    """Return the classification's column values, in `CLASSIFICATION_COLUMNS` order."""
    processing_nanos = None
    if classification.HasField("processing_time"):
        processing_nanos = classification.processing_time.ToNanoseconds()
    classified_at = None
    if classification.HasField("classified_at"):
        classified_at = timestamp_to_datetime(
            classification.classified_at, f"{field}.classified_at"
        )
    return (
        enum_text(SEVERITY_TEXT, classification.severity, f"{field}.severity"),
        classification.confidence,
        classification.reasoning,
        list(classification.recommendations),
        processing_nanos,
        enum_text(SOURCE_TEXT, classification.source, f"{field}.source"),
        classification.model,
        classification.fallback_reason,
        enum_text(
            SEVERITY_TEXT, classification.model_severity, f"{field}.model_severity"
        ),
        list(classification.flags),
        classification.refusal,
        classified_at,
    )


CLASSIFICATION_COLUMNS = (
    "severity",
    "confidence",
    "reasoning",
    "recommendations",
    "processing_time_nanos",
    "source",
    "model",
    "fallback_reason",
    "model_severity",
    "flags",
    "refusal",
    "classified_at",
)


def classification_from_row(row: Row, prefix: str = "") -> alert_pb2.Classification:
    """Build a Classification from columns named `prefix` + column name."""
    classification = alert_pb2.Classification(
        severity=SEVERITY_VALUE.get(row[f"{prefix}severity"], 0),  # type: ignore[arg-type]
        confidence=float(row[f"{prefix}confidence"]),
        reasoning=row[f"{prefix}reasoning"],
        recommendations=row[f"{prefix}recommendations"],
        source=SOURCE_VALUE.get(row[f"{prefix}source"], 0),  # type: ignore[arg-type]
        model=row[f"{prefix}model"],
        fallback_reason=row[f"{prefix}fallback_reason"],
        model_severity=SEVERITY_VALUE.get(row[f"{prefix}model_severity"], 0),  # type: ignore[arg-type]
        flags=row[f"{prefix}flags"],
        refusal=row[f"{prefix}refusal"],
    )
    nanos = row[f"{prefix}processing_time_nanos"]
    if nanos is not None:
        classification.processing_time.FromNanoseconds(nanos)
    if row[f"{prefix}classified_at"] is not None:
        classification.classified_at.CopyFrom(
            datetime_to_timestamp(row[f"{prefix}classified_at"])
        )
    return classification


def occurrence_from_row(row: Row) -> history_pb2.Occurrence:
    """Build an Occurrence, without state changes, from an occurrences row."""
    occurrence = history_pb2.Occurrence(
        id=row["id"],
        fingerprint=row["fingerprint"],
        status=STATUS_VALUES[row["status"]],
        labels=row["labels"],
        annotations=row["annotations"],
        starts_at=datetime_to_timestamp(row["starts_at"]),
        generator_url=row["generator_url"],
        first_seen_at=datetime_to_timestamp(row["first_seen_at"]),
        last_seen_at=datetime_to_timestamp(row["last_seen_at"]),
        group_key=row["group_key"],
        receiver=row["receiver"],
        truncated_alerts=row["truncated_alerts"],
        external_url=row["external_url"],
        deliveries=row["deliveries"],
    )
    if row["ends_at"] is not None:
        occurrence.ends_at.CopyFrom(datetime_to_timestamp(row["ends_at"]))
    return occurrence


def state_change_from_row(row: Row) -> history_pb2.StateChange:
    """Build a StateChange from a state_changes row joined with its classification.

    The classification columns carry a `c_` prefix and are NULL when none
    was recorded.
    """
    change = history_pb2.StateChange(
        id=row["id"],
        status=STATUS_VALUES[row["status"]],
        changed_at=datetime_to_timestamp(row["changed_at"]),
    )
    if row["c_severity"] is not None:
        change.classification.CopyFrom(classification_from_row(row, "c_"))
    return change


def notification_from_row(row: Row) -> alert_pb2.Notification:
    """Build a Notification without alerts from a notifications row."""
    return alert_pb2.Notification(
        version=row["version"],
        receiver=row["receiver"],
        status=STATUS_VALUES.get(row["status"], 0),  # type: ignore[arg-type]
        group_key=row["group_key"],
        group_labels=row["group_labels"],
        common_labels=row["common_labels"],
        common_annotations=row["common_annotations"],
        external_url=row["external_url"],
        truncated_alerts=row["truncated_alerts"],
        notification_reason=row["notification_reason"],
    )


def work_alert_from_row(row: Row) -> history_pb2.WorkAlert:
    """Build a WorkAlert from a state change joined with its occurrence.

    The alert takes the state change's status. A firing state change has no
    end time, even when the occurrence has resolved since.
    """
    alert = alert_pb2.Alert(
        fingerprint=row["fingerprint"],
        status=STATUS_VALUES[row["status"]],
        labels=row["labels"],
        annotations=row["annotations"],
        starts_at=datetime_to_timestamp(row["starts_at"]),
        generator_url=row["generator_url"],
    )
    if row["status"] == "resolved" and row["ends_at"] is not None:
        alert.ends_at.CopyFrom(datetime_to_timestamp(row["ends_at"]))
    work_alert = history_pb2.WorkAlert(
        occurrence_id=row["occurrence_id"],
        state_change_id=row["id"],
        alert=alert,
    )
    if row["c_severity"] is not None:
        work_alert.classification.CopyFrom(classification_from_row(row, "c_"))
    return work_alert


def encode_cursor(starts_at: datetime, occurrence_id: int) -> str:
    """Return an opaque cursor naming the last row of a page."""
    key = json.dumps([starts_at.isoformat(), occurrence_id])
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Return the (starts_at, id) key a cursor names, or raise InvalidInputError."""
    try:
        starts_text, occurrence_id = json.loads(base64.urlsafe_b64decode(cursor))
        starts_at = datetime.fromisoformat(starts_text)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInputError(
            "cursor is invalid: pass the next_cursor of the previous page, "
            "or an empty cursor for the first page"
        ) from exc
    if not isinstance(occurrence_id, int) or starts_at.tzinfo is None:
        raise InvalidInputError(
            "cursor is invalid: pass the next_cursor of the previous page, "
            "or an empty cursor for the first page"
        )
    return starts_at, occurrence_id
