"""Schema of the history service, applied with `libs.db.migrate`.

The same DDL runs on PostgreSQL and SQLite. `{id}` becomes each backend's
auto-incrementing key, and partial indexes use a `WHERE` both accept.
"""

from __future__ import annotations

from libs.db import Migration

COMPONENT = "history"

_NOTIFICATIONS = """
CREATE TABLE notifications (
    id {id},
    version TEXT NOT NULL,
    receiver TEXT NOT NULL,
    group_key TEXT NOT NULL,
    external_url TEXT NOT NULL,
    status TEXT NOT NULL,
    notification_reason TEXT NOT NULL,
    truncated_alerts BIGINT NOT NULL,
    group_labels JSONB NOT NULL,
    common_labels JSONB NOT NULL,
    common_annotations JSONB NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
)
"""

_OCCURRENCES = """
CREATE TABLE occurrences (
    id {id},
    fingerprint TEXT NOT NULL,
    alertname TEXT NOT NULL,
    namespace TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    labels JSONB NOT NULL,
    annotations JSONB NOT NULL,
    starts_at TIMESTAMPTZ NOT NULL,
    ends_at TIMESTAMPTZ,
    generator_url TEXT NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    group_key TEXT NOT NULL,
    receiver TEXT NOT NULL,
    truncated_alerts BIGINT NOT NULL,
    external_url TEXT NOT NULL,
    deliveries BIGINT NOT NULL
)
"""

_STATE_CHANGES = """
CREATE TABLE state_changes (
    id {id},
    occurrence_id BIGINT NOT NULL REFERENCES occurrences (id),
    notification_id BIGINT NOT NULL REFERENCES notifications (id),
    status TEXT NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL
)
"""

_CLASSIFICATIONS = """
CREATE TABLE classifications (
    id {id},
    state_change_id BIGINT NOT NULL UNIQUE REFERENCES state_changes (id),
    severity TEXT NOT NULL,
    confidence DOUBLE PRECISION NOT NULL,
    reasoning TEXT NOT NULL,
    recommendations JSONB NOT NULL,
    processing_time_nanos BIGINT,
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    fallback_reason TEXT NOT NULL,
    model_severity TEXT NOT NULL,
    flags JSONB NOT NULL,
    refusal TEXT NOT NULL,
    classified_at TIMESTAMPTZ,
    recorded_at TIMESTAMPTZ NOT NULL
)
"""

_WORK_ITEMS = """
CREATE TABLE work_items (
    id {id},
    notification_id BIGINT NOT NULL REFERENCES notifications (id),
    state_change_ids JSONB NOT NULL,
    trace_context JSONB NOT NULL,
    enqueued_at TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL,
    leased_until TIMESTAMPTZ,
    lease_owner TEXT,
    completed_at TIMESTAMPTZ
)
"""

MIGRATIONS: list[Migration] = [
    Migration(
        version=1,
        description="notifications, occurrences, state changes, "
        "classifications and the work queue",
        statements=(
            _NOTIFICATIONS,
            _OCCURRENCES,
            "CREATE UNIQUE INDEX occurrences_fingerprint_starts_at"
            " ON occurrences (fingerprint, starts_at)",
            "CREATE INDEX occurrences_starts_at ON occurrences (starts_at, id)",
            "CREATE INDEX occurrences_alertname"
            " ON occurrences (alertname, starts_at, id)",
            _STATE_CHANGES,
            "CREATE INDEX state_changes_occurrence ON state_changes (occurrence_id)",
            _CLASSIFICATIONS,
            _WORK_ITEMS,
            # Keeps the search for the next pending item off completed rows.
            "CREATE INDEX work_items_pending ON work_items (id)"
            " WHERE completed_at IS NULL",
        ),
    ),
    Migration(
        version=2,
        description="latest classification on occurrences, indexes for the "
        "history filters, the reports and retention",
        statements=(
            # The latest classification of each occurrence, kept up to date by
            # RecordClassifications, so that filters on it need no join.
            "ALTER TABLE occurrences ADD COLUMN latest_change_id BIGINT",
            "ALTER TABLE occurrences ADD COLUMN latest_severity TEXT",
            "ALTER TABLE occurrences ADD COLUMN latest_confidence DOUBLE PRECISION",
            "UPDATE occurrences SET latest_change_id = (SELECT max(c.state_change_id)"
            " FROM classifications c JOIN state_changes s ON s.id = c.state_change_id"
            " WHERE s.occurrence_id = occurrences.id)",
            "UPDATE occurrences SET"
            " latest_severity = (SELECT c.severity FROM classifications c"
            " WHERE c.state_change_id = occurrences.latest_change_id),"
            " latest_confidence = (SELECT c.confidence FROM classifications c"
            " WHERE c.state_change_id = occurrences.latest_change_id)"
            " WHERE latest_change_id IS NOT NULL",
            # Each filter of ListOccurrences has an index that returns rows in
            # page order (starts_at, id), so a page reads about `limit` rows.
            "CREATE INDEX occurrences_namespace"
            " ON occurrences (namespace, starts_at, id)",
            "CREATE INDEX occurrences_severity"
            " ON occurrences (severity, starts_at, id)",
            "CREATE INDEX occurrences_latest_severity"
            " ON occurrences (latest_severity, starts_at, id)",
            "CREATE INDEX occurrences_firing ON occurrences (starts_at, id)"
            " WHERE status = 'firing'",
            "CREATE INDEX state_changes_changed_at ON state_changes (changed_at)",
            # Retention deletes a notification only when nothing refers to it.
            "CREATE INDEX state_changes_notification"
            " ON state_changes (notification_id)",
            "CREATE INDEX work_items_notification ON work_items (notification_id)",
            "CREATE INDEX work_items_completed ON work_items (completed_at)"
            " WHERE completed_at IS NOT NULL",
            "CREATE INDEX notifications_received_at ON notifications (received_at)",
        ),
    ),
]
