"""Schema of the recommender service, applied with `libs.db.migrate`."""

from __future__ import annotations

from libs.db import Migration

COMPONENT = "recommender"

_RECOMMENDATIONS = """
CREATE TABLE recommendations (
    id {id},
    alert_name TEXT NOT NULL,
    namespace TEXT NOT NULL,
    problems JSONB NOT NULL,
    reasons JSONB NOT NULL,
    current_config JSONB NOT NULL,
    recommended_config JSONB NOT NULL,
    confidence DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    config_source TEXT NOT NULL,
    rule_config_source TEXT NOT NULL,
    route_config_source TEXT NOT NULL,
    origin TEXT NOT NULL,
    model TEXT NOT NULL,
    fallback_reason TEXT NOT NULL,
    reasoning TEXT NOT NULL,
    impact_estimate TEXT NOT NULL,
    snippet TEXT NOT NULL,
    statistics JSONB NOT NULL,
    window_since TIMESTAMPTZ NOT NULL,
    window_until TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
)
"""

MIGRATIONS: list[Migration] = [
    Migration(
        version=1,
        description="recommendations, one per alertname and namespace",
        statements=(
            _RECOMMENDATIONS,
            "CREATE UNIQUE INDEX recommendations_alert"
            " ON recommendations (alert_name, namespace)",
            "CREATE INDEX recommendations_status ON recommendations (status, id)",
        ),
    ),
]
