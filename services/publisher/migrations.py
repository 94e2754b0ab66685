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
)
