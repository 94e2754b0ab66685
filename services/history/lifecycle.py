"""The rules that decide what storing one alert changes, without any SQL.

An occurrence is one (fingerprint, startsAt) pair, and a state change is an
occurrence entering a status. Each alert's own status counts, not the
notification's. An alert is NEW when it creates an occurrence or resolves a
firing one. Otherwise it is a REPEAT: a re-delivery, a duplicate from an HA
peer, or a firing alert for an occurrence that already resolved (resolved is
final, so a lagging peer cannot reopen it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from libs.alerts import MAX_FINGERPRINT_LENGTH, STATUS_VALUES
from libs.errors import InvalidInputError
from services.history import records

NEW = history_pb2.STORE_OUTCOME_NEW
REPEAT = history_pb2.STORE_OUTCOME_REPEAT

OccurrenceKey = tuple[str, datetime]


@dataclass
class PreparedAlert:
    """One alert of a notification, checked and with its times settled."""

    fingerprint: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    # None while firing: Alertmanager may send a future endsAt for a firing
    # alert, and that is not an end.
    ends_at: datetime | None
    generator_url: str
    warnings: list[str] = field(default_factory=list)

    @property
    def key(self) -> OccurrenceKey:
        return (self.fingerprint, self.starts_at)

    @property
    def changed_at(self) -> datetime:
        """The time the alert entered its status: its start, or its end."""
        if self.status == "resolved" and self.ends_at is not None:
            return self.ends_at
        return self.starts_at


def prepare_alert(
    alert: alert_pb2.Alert, index: int, received_at: datetime
) -> PreparedAlert:
    """Check one alert and settle its end time, or raise InvalidInputError.

    A resolved alert without endsAt ends when it was received (never before
    it started), and one that ends before it starts ends when it started, so
    no occurrence has a negative duration. Both add a warning.
    """
    where = f"alerts[{index}]"
    if not alert.fingerprint:
        raise InvalidInputError(f"{where}.fingerprint is missing")
    if len(alert.fingerprint) > MAX_FINGERPRINT_LENGTH:
        raise InvalidInputError(
            f"{where}.fingerprint is longer than {MAX_FINGERPRINT_LENGTH} characters"
        )
    if not alert.labels:
        raise InvalidInputError(f"{where}.labels is empty")
    if not alert.HasField("starts_at"):
        raise InvalidInputError(f"{where}.starts_at is missing")
    prepared = PreparedAlert(
        fingerprint=alert.fingerprint,
        status=records.status_text(alert.status, f"{where}.status"),
        labels=dict(alert.labels),
        annotations=dict(alert.annotations),
        starts_at=records.timestamp_to_datetime(alert.starts_at, f"{where}.starts_at"),
        ends_at=None,
        generator_url=alert.generator_url,
    )
    if prepared.status == "resolved":
        _settle_end(prepared, alert, where, received_at)
    return prepared


def _settle_end(
    prepared: PreparedAlert, alert: alert_pb2.Alert, where: str, received_at: datetime
) -> None:
    if not alert.HasField("ends_at"):
        prepared.ends_at = max(received_at, prepared.starts_at)
        prepared.warnings.append(
            "resolved alert has no endsAt; stored the time it was received as its end"
        )
        return
    ends_at = records.timestamp_to_datetime(alert.ends_at, f"{where}.ends_at")
    if ends_at < prepared.starts_at:
        prepared.ends_at = prepared.starts_at
        prepared.warnings.append(
            "endsAt is before startsAt; stored startsAt as the end"
        )
        return
    prepared.ends_at = ends_at


def check_strings(
    notification: alert_pb2.Notification, alerts: list[PreparedAlert]
) -> None:
    """Raise InvalidInputError for a NUL character, which PostgreSQL cannot store."""
    texts = [
        notification.receiver,
        notification.group_key,
        notification.external_url,
        notification.notification_reason,
        notification.version,
        *(alert.generator_url for alert in alerts),
    ]
    maps: list[Mapping[str, str]] = [
        dict(notification.group_labels),
        dict(notification.common_labels),
        dict(notification.common_annotations),
    ]
    for alert in alerts:
        maps.extend((alert.labels, alert.annotations))
    if any("\x00" in text for text in texts) or any(map(_contains_nul, maps)):
        raise InvalidInputError("notification contains a NUL character (\\u0000)")


def _contains_nul(mapping: Mapping[str, str]) -> bool:
    return any("\x00" in key or "\x00" in value for key, value in mapping.items())


@dataclass
class OccurrenceState:
    """One occurrence as a transaction found or inserted it, with pending changes."""

    id: int
    status: str
    # True when this transaction inserted the occurrence.
    inserted: bool
    seen: bool = False
    # The alert whose values the UPDATE writes, or None when nothing changes.
    latest: PreparedAlert | None = None
    deliveries: int = 0
    ends_at: datetime | None = None
    # The notification of `latest`, whose group key and receiver the UPDATE
    # writes.
    notification: alert_pb2.Notification | None = None


@dataclass
class Decision:
    """The outcome of one alert."""

    alert: PreparedAlert
    occurrence: OccurrenceState
    outcome: int
    # The occurrence's status once this alert was applied.
    status: str
    # (occurrence id, status) of the state change to insert, for NEW outcomes.
    change: tuple[int, str] | None


def decide(
    alert: PreparedAlert,
    state: OccurrenceState,
    notification: alert_pb2.Notification,
) -> Decision:
    """Apply one alert of `notification` to its occurrence's state.

    Alerts are applied in order, within a notification and across the
    notifications of one transaction, so a duplicate is a REPEAT the second
    time.
    """
    first_insert = state.inserted and not state.seen
    state.seen = True
    if first_insert:
        return Decision(alert, state, NEW, alert.status, (state.id, alert.status))

    state.latest = alert
    state.notification = notification
    state.deliveries += 1
    if state.status == "firing" and alert.status == "resolved":
        state.status = "resolved"
        state.ends_at = alert.ends_at
        return Decision(alert, state, NEW, "resolved", (state.id, "resolved"))
    if state.status == "resolved" and alert.status == "firing":
        alert.warnings.append(
            "firing alert for an occurrence that already resolved; kept it resolved"
        )
    return Decision(alert, state, REPEAT, state.status, None)


@dataclass(frozen=True)
class OccurrenceUpdate:
    """The new values of one known occurrence."""

    id: int
    status: str
    # None keeps the stored end.
    ends_at: datetime | None
    annotations: dict[str, str]
    # Deliveries to add to the stored count.
    deliveries: int
    # The notification that delivered the latest alert.
    notification: alert_pb2.Notification


@dataclass(frozen=True)
class NewStateChange:
    occurrence_id: int
    status: str
    changed_at: datetime


def plan_updates(
    states: Mapping[OccurrenceKey, OccurrenceState],
) -> list[OccurrenceUpdate]:
    """Return the UPDATE of each occurrence that a later alert touched."""
    return [
        OccurrenceUpdate(
            state.id,
            state.status,
            state.ends_at,
            state.latest.annotations,
            state.deliveries,
            state.notification,
        )
        for state in states.values()
        if state.latest is not None and state.notification is not None
    ]


def plan_changes(decisions: list[Decision]) -> list[NewStateChange]:
    """Return the state changes to insert, in the order of the alerts."""
    return [
        NewStateChange(
            decision.occurrence.id, decision.alert.status, decision.alert.changed_at
        )
        for decision in decisions
        if decision.change is not None
    ]


def store_response(
    decisions: list[Decision],
    change_ids: Mapping[tuple[int, str], int],
    notification_id: int,
    work_item_id: int,
) -> history_pb2.StoreNotificationResponse:
    """Build the StoreNotification response, one StoredAlert per alert in order."""
    response = history_pb2.StoreNotificationResponse(
        notification_id=notification_id, work_item_id=work_item_id
    )
    for decision in decisions:
        change_id = change_ids[decision.change] if decision.change else 0
        response.alerts.append(
            history_pb2.StoredAlert(
                fingerprint=decision.alert.fingerprint,
                occurrence_id=decision.occurrence.id,
                outcome=decision.outcome,  # type: ignore[arg-type]
                status=STATUS_VALUES[decision.status],
                state_change_id=change_id,
                warnings=decision.alert.warnings,
            )
        )
    return response
