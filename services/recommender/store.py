"""The recommendations table: one row per (alertname, namespace).

A generation saves its proposals in one transaction. A new pair is
inserted as pending. A stored pair whose recommended configuration and
problems are unchanged keeps its status, and only its figures are
refreshed. A stored pair whose recommendation changed is overwritten and is
pending again, even when an operator had applied or rejected the earlier one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from alerthistory.history.v1 import history_pb2
from alerthistory.recommender.v1 import recommender_pb2
from libs.alerts import datetime_to_timestamp
from libs.db import Connection, Database, Row
from libs.errors import InvalidInputError, NotFoundError
from services.recommender.detect import PROBLEM_NAMES

MAX_LIST_LIMIT = 1000

STATUS_TEXT: dict[int, str] = {
    recommender_pb2.RECOMMENDATION_STATUS_PENDING: "pending",
    recommender_pb2.RECOMMENDATION_STATUS_APPLIED: "applied",
    recommender_pb2.RECOMMENDATION_STATUS_REJECTED: "rejected",
}
SOURCE_TEXT: dict[int, str] = {
    recommender_pb2.CONFIG_SOURCE_INFERRED: "inferred",
    recommender_pb2.CONFIG_SOURCE_PROMETHEUS: "prometheus",
    recommender_pb2.CONFIG_SOURCE_ALERTMANAGER: "alertmanager",
}
ORIGIN_TEXT: dict[int, str] = {
    recommender_pb2.ORIGIN_MODEL: "model",
    recommender_pb2.ORIGIN_RULES: "rules",
}
CONFIG_FIELDS = tuple(
    field.name for field in recommender_pb2.AlertConfig.DESCRIPTOR.fields
)
_PROBLEM_VALUES = {text: value for value, text in PROBLEM_NAMES.items()}
_INVALID_CURSOR = (
    "cursor is invalid: pass the next_cursor of the previous page, "
    "or an empty cursor for the first page"
)


def _value_of(texts: dict[int, str], text: str) -> int:
    return next((value for value, known in texts.items() if known == text), 0)


def config_dict(config: recommender_pb2.AlertConfig) -> dict[str, str]:
    return {name: getattr(config, name) for name in CONFIG_FIELDS}


@dataclass
class Proposal:
    """A recommendation as one generation wrote it, before it is stored."""

    alert_name: str
    namespace: str
    problems: list[int]
    reasons: list[str]
    current: recommender_pb2.AlertConfig
    recommended: recommender_pb2.AlertConfig
    confidence: float
    config_source: int
    rule_config_source: int
    route_config_source: int
    origin: int
    model: str
    fallback_reason: str
    reasoning: str
    impact_estimate: str
    snippet: str
    statistics: history_pb2.AlertStatistics
    window_since: datetime
    window_until: datetime

    def content(self, now: datetime) -> dict[str, Any]:
        """Return the column values, status and ids aside."""
        return {
            "problems": [PROBLEM_NAMES[problem] for problem in self.problems],
            "reasons": list(self.reasons),
            "current_config": config_dict(self.current),
            "recommended_config": config_dict(self.recommended),
            "confidence": self.confidence,
            "config_source": SOURCE_TEXT[self.config_source],
            "rule_config_source": SOURCE_TEXT[self.rule_config_source],
            "route_config_source": SOURCE_TEXT[self.route_config_source],
            "origin": ORIGIN_TEXT[self.origin],
            "model": self.model,
            "fallback_reason": self.fallback_reason,
            "reasoning": self.reasoning,
            "impact_estimate": self.impact_estimate,
            "snippet": self.snippet,
            "statistics": json_format.MessageToDict(
                self.statistics, preserving_proto_field_name=True
            ),
            "window_since": self.window_since,
            "window_until": self.window_until,
            "updated_at": now,
        }


@dataclass
class SaveCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def encode_cursor(recommendation_id: int) -> str:
    return base64.urlsafe_b64encode(
        json.dumps(["recommendation", recommendation_id]).encode()
    ).decode()


def decode_cursor(cursor: str) -> int:
    try:
        tag, recommendation_id = json.loads(base64.urlsafe_b64decode(cursor))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInputError(_INVALID_CURSOR) from exc
    if tag != "recommendation" or not isinstance(recommendation_id, int):
        raise InvalidInputError(_INVALID_CURSOR)
    return recommendation_id


class RecommendationStore:
    """Reads and writes the recommendations of one Database."""

    def __init__(
        self, db: Database, *, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.db = db
        self._clock = clock

    async def save(self, proposals: Sequence[Proposal]) -> SaveCounts:
        """Store the proposals of one generation in one transaction."""
        counts = SaveCounts()
        now = self._clock()
        async with self.db.transaction() as conn:
            for proposal in proposals:
                outcome = await self._save_one(conn, proposal, now)
                setattr(counts, outcome, getattr(counts, outcome) + 1)
        return counts

    async def _save_one(
        self, conn: Connection, proposal: Proposal, now: datetime
    ) -> str:
        content = proposal.content(now)
        columns = ["alert_name", "namespace", "status", "created_at", *content]
        values = [proposal.alert_name, proposal.namespace, "pending", now]
        values.extend(content.values())
        placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        inserted = await conn.fetchval(
            f"INSERT INTO recommendations ({', '.join(columns)})"
            f" VALUES ({placeholders})"
            " ON CONFLICT (alert_name, namespace) DO NOTHING RETURNING id",
            *values,
        )
        if inserted is not None:
            return "created"

        stored = await conn.fetchrow(
            "SELECT id, problems, recommended_config FROM recommendations"
            " WHERE alert_name = $1 AND namespace = $2",
            proposal.alert_name,
            proposal.namespace,
        )
        assert stored is not None, "the conflicting row disappeared"
        same = (
            stored["recommended_config"] == content["recommended_config"]
            and stored["problems"] == content["problems"]
        )
        assignments = [f"{name} = ${i}" for i, name in enumerate(content, start=2)]
        if not same:
            assignments.append("status = 'pending'")
        await conn.execute(
            f"UPDATE recommendations SET {', '.join(assignments)} WHERE id = $1",
            stored["id"],
            *content.values(),
        )
        return "unchanged" if same else "updated"

    async def list(
        self,
        *,
        limit: int,
        cursor: str = "",
        alert_name: str = "",
        namespace: str = "",
        status: int = 0,
    ) -> tuple[list[recommender_pb2.Recommendation], str]:
        """Return one page of recommendations, newest id first, and the next cursor."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInputError(
                f"limit must be from 1 to {MAX_LIST_LIMIT}, not {limit}"
            )
        conditions: list[str] = []
        params: list[Any] = []
        if cursor:
            params.append(decode_cursor(cursor))
            conditions.append(f"id < ${len(params)}")
        for column, value in (
            ("alert_name", alert_name),
            ("namespace", namespace),
            ("status", status_text(status) if status else ""),
        ):
            if value:
                params.append(value)
                conditions.append(f"{column} = ${len(params)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self.db.fetch(
            f"SELECT * FROM recommendations{where}"
            f" ORDER BY id DESC LIMIT ${len(params) + 1}",
            *params,
            limit + 1,
        )
        page = [recommendation_from_row(row) for row in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else ""
        return page, next_cursor

    async def set_status(
        self, recommendation_id: int, status: int
    ) -> recommender_pb2.Recommendation:
        """Set the status of one recommendation and return it."""
        text = status_text(status)
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE recommendations SET status = $2, updated_at = $3 WHERE id = $1",
                recommendation_id,
                text,
                self._clock(),
            )
            row = await conn.fetchrow(
                "SELECT * FROM recommendations WHERE id = $1", recommendation_id
            )
        if row is None:
            raise NotFoundError(f"recommendation {recommendation_id} not found")
        return recommendation_from_row(row)


def status_text(status: int) -> str:
    """Return the stored text of a status, or raise InvalidInputError."""
    text = STATUS_TEXT.get(status)
    if text is None:
        raise InvalidInputError(
            f"status must be pending, applied or rejected, not {status}"
        )
    return text


def recommendation_from_row(row: Row) -> recommender_pb2.Recommendation:
    """Build a Recommendation from a recommendations row."""
    statistics = history_pb2.AlertStatistics()
    json_format.ParseDict(row["statistics"], statistics, ignore_unknown_fields=True)
    recommendation = recommender_pb2.Recommendation(
        id=row["id"],
        alert_name=row["alert_name"],
        namespace=row["namespace"],
        problems=[_PROBLEM_VALUES.get(name, 0) for name in row["problems"]],  # type: ignore[misc]
        reasons=row["reasons"],
        current=recommender_pb2.AlertConfig(**_known_fields(row["current_config"])),
        recommended=recommender_pb2.AlertConfig(
            **_known_fields(row["recommended_config"])
        ),
        confidence=float(row["confidence"]),
        status=_value_of(STATUS_TEXT, row["status"]),  # type: ignore[arg-type]
        config_source=_value_of(SOURCE_TEXT, row["config_source"]),  # type: ignore[arg-type]
        rule_config_source=_value_of(SOURCE_TEXT, row["rule_config_source"]),  # type: ignore[arg-type]
        route_config_source=_value_of(SOURCE_TEXT, row["route_config_source"]),  # type: ignore[arg-type]
        origin=_value_of(ORIGIN_TEXT, row["origin"]),  # type: ignore[arg-type]
        model=row["model"],
        fallback_reason=row["fallback_reason"],
        reasoning=row["reasoning"],
        impact_estimate=row["impact_estimate"],
        snippet=row["snippet"],
        statistics=statistics,
    )
    for name in ("window_since", "window_until", "created_at", "updated_at"):
        getattr(recommendation, name).CopyFrom(datetime_to_timestamp(row[name]))
    return recommendation


def _known_fields(stored: dict[str, str]) -> dict[str, str]:
    return {name: str(stored[name]) for name in CONFIG_FIELDS if name in stored}
