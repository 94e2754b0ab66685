"""Schema of the publisher's delivery store (component "publisher")."""

from __future__ import annotations

from libs.db import Migration

COMPONENT = "publisher"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="deliveries, delivery attempts and delivered alerts",
        statements=(
            # Every Publish call, so a repeated batch_id is recognised even
            # when no target received anything.
            "CREATE TABLE publisher_batches ("
            " batch_id TEXT PRIMARY KEY,"
            " alert_count INTEGER NOT NULL,"
            " received_at TIMESTAMPTZ NOT NULL)",
            # One request body to one target. `part` numbers the bodies of a
            # format that splits one batch into several requests. `body` is
            # the exact JSON text sent on every attempt.
            "CREATE TABLE publisher_deliveries ("
            " id {id},"
            " batch_id TEXT NOT NULL,"
            " target TEXT NOT NULL,"
            " part INTEGER NOT NULL,"
            " format TEXT NOT NULL,"
            " group_key TEXT NOT NULL,"
            " idempotency_key TEXT NOT NULL,"
            " body TEXT NOT NULL,"
            " alert_count INTEGER NOT NULL,"
            " state TEXT NOT NULL,"
            " attempts INTEGER NOT NULL,"
            " next_attempt_at TIMESTAMPTZ NOT NULL,"
            " lease_owner TEXT,"
            " lease_expires_at TIMESTAMPTZ,"
            " last_status_code INTEGER,"
            " last_error TEXT,"
            " last_response_body TEXT,"
            " created_at TIMESTAMPTZ NOT NULL,"
            " updated_at TIMESTAMPTZ NOT NULL,"
            " completed_at TIMESTAMPTZ,"
            " CONSTRAINT publisher_deliveries_batch_target_part"
            " UNIQUE (batch_id, target, part),"
            " CONSTRAINT publisher_deliveries_state"
            " CHECK (state IN ('pending', 'succeeded', 'dead')))",
            "CREATE INDEX publisher_deliveries_queue"
            " ON publisher_deliveries (state, target, group_key, id)",
            "CREATE INDEX publisher_deliveries_due"
            " ON publisher_deliveries (state, next_attempt_at)",
            "CREATE TABLE publisher_delivery_attempts ("
            " id {id},"
            " delivery_id BIGINT NOT NULL"
            " REFERENCES publisher_deliveries (id) ON DELETE CASCADE,"
            " attempt INTEGER NOT NULL,"
            " attempted_at TIMESTAMPTZ NOT NULL,"
            " status_code INTEGER,"
            " error TEXT,"
            " response_body TEXT,"
            " duration_seconds DOUBLE PRECISION NOT NULL,"
            " CONSTRAINT publisher_delivery_attempts_number"
            " UNIQUE (delivery_id, attempt))",
            # Which alert states each delivery carried, to find the targets
            # that received an alert by its fingerprint.
            "CREATE TABLE publisher_delivery_alerts ("
            " delivery_id BIGINT NOT NULL"
            " REFERENCES publisher_deliveries (id) ON DELETE CASCADE,"
            " fingerprint TEXT NOT NULL,"
            " status TEXT NOT NULL,"
            " state_change_id BIGINT NOT NULL,"
            " PRIMARY KEY (delivery_id, fingerprint))",
            "CREATE INDEX publisher_delivery_alerts_fingerprint"
            " ON publisher_delivery_alerts (fingerprint)",
        ),
    ),
    Migration(
        version=2,
        description="trace context of each delivery",
        statements=(
            # W3C trace context of the Publish call, so that each attempt's
            # span joins the trace of the webhook. NULL on older rows.
            "ALTER TABLE publisher_deliveries ADD COLUMN trace_context JSONB",
        ),
    ),
    Migration(
        version=3,
        description="delivered alert states by occurrence, dead-letter handling",
        statements=(
            # The occurrence (fingerprint and start) and target of each alert
            # state a delivery carries. The unique index lets one occurrence
            # state reach one target in one delivery only, whatever batch
            # carries it again, and finds the targets of an occurrence's
            # trigger when it resolves. Rows recorded before this migration
            # have no occurrence_key and match nothing.
            "ALTER TABLE publisher_delivery_alerts ADD COLUMN target TEXT",
            "ALTER TABLE publisher_delivery_alerts ADD COLUMN occurrence_key TEXT",
            "UPDATE publisher_delivery_alerts SET target ="
            " (SELECT d.target FROM publisher_deliveries d"
            " WHERE d.id = publisher_delivery_alerts.delivery_id)",
            "CREATE UNIQUE INDEX publisher_delivery_alerts_occurrence"
            " ON publisher_delivery_alerts (occurrence_key, status, target)"
            " WHERE occurrence_key IS NOT NULL",
            # A discarded dead letter keeps state 'dead' and its attempts.
            "ALTER TABLE publisher_deliveries ADD COLUMN discarded_at TIMESTAMPTZ",
            # Attempts made before the latest manual retry of a dead letter;
            # the attempt limit counts from there.
            "ALTER TABLE publisher_deliveries"
            " ADD COLUMN attempt_offset INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX publisher_deliveries_created"
            " ON publisher_deliveries (created_at)",
            "CREATE INDEX publisher_delivery_attempts_time"
            " ON publisher_delivery_attempts (attempted_at)",
        ),
    ),
    Migration(
        version=4,
        description="pending deliveries of a target in id order",
        statements=(
            # Claims read a target's oldest pending deliveries.
            "CREATE INDEX publisher_deliveries_pending"
            " ON publisher_deliveries (target, id) WHERE state = 'pending'",
        ),
    ),
    Migration(
        version=5,
        description="finished deliveries by completion time, for retention",
        statements=(
            "CREATE INDEX publisher_deliveries_completed"
            " ON publisher_deliveries (completed_at)"
            " WHERE completed_at IS NOT NULL",
        ),
    ),
)
