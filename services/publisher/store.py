"""Delivery records in PostgreSQL or SQLite; every SQL statement of the publisher.

A delivery is one request body for one target. It is recorded before any
attempt, taken by a worker under a lease, and ends `succeeded` or `dead`.
Deliveries of one target and one Alertmanager group are taken in the order
they were recorded, one at a time, so a resolve never overtakes its trigger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from libs.db import Connection, Database, Row

DeliveryState = Literal["pending", "succeeded", "dead"]


@dataclass(frozen=True)
class DeliveredAlert:
    """One alert state that a delivery carries."""

    fingerprint: str
    status: str
    state_change_id: int


@dataclass(frozen=True)
class NewDelivery:
    """A delivery to record: the exact body to send to one target."""

    target: str
    part: int
    format: str
    group_key: str
    idempotency_key: str
    body: str
    alerts: tuple[DeliveredAlert, ...]


@dataclass(frozen=True)
class ClaimedDelivery:
    """A pending delivery this worker holds the lease on."""

    id: int
    batch_id: str
    target: str
    part: int
    format: str
    idempotency_key: str
    body: str
    # Attempts finished before this one.
    attempts: int


@dataclass(frozen=True)
class AttemptResult:
    """The result of one request: its response, or the error without one."""

    attempted_at: datetime
    duration_seconds: float
    status_code: int | None
    error: str | None
    response_body: str | None


@dataclass(frozen=True)
class Outcome:
    """The state a delivery moves to after an attempt."""

    state: DeliveryState
    next_attempt_at: datetime
    error: str | None = None


@dataclass(frozen=True)
class DeliveryRecord:
    """A delivery as stored."""

    id: int
    batch_id: str
    target: str
    part: int
    format: str
    group_key: str
    idempotency_key: str
    body: str
    alert_count: int
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    last_response_body: str | None
    created_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class AttemptRecord:
    """One stored attempt of a delivery."""

    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    response_body: str | None
    duration_seconds: float


# The earliest pending delivery of its target and group: only that one may be
# attempted, so deliveries of one group reach the target in order.
_IS_GROUP_HEAD = (
    " NOT EXISTS (SELECT 1 FROM publisher_deliveries e"
    " WHERE e.state = 'pending' AND e.target = d.target"
    " AND e.group_key = d.group_key AND e.id < d.id)"
)

_DELIVERY_COLUMNS = (
    "id, batch_id, target, part, format, group_key, idempotency_key, body,"
    " alert_count, state, attempts, next_attempt_at, last_status_code,"
    " last_error, last_response_body, created_at, completed_at"
)


class DeliveryStore:
    """Reads and writes delivery records."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_batch(
        self,
        batch_id: str,
        alert_count: int,
        deliveries: Sequence[NewDelivery],
        now: datetime,
    ) -> bool:
        """Record a batch and its deliveries in one transaction.

        Returns False, recording nothing, when the batch_id was recorded
        before.
        """
        async with self.db.transaction() as conn:
            inserted = await conn.execute(
                "INSERT INTO publisher_batches (batch_id, alert_count, received_at)"
                " VALUES ($1, $2, $3) ON CONFLICT (batch_id) DO NOTHING",
                batch_id,
                alert_count,
                now,
            )
            if inserted != 1:
                return False
            for delivery in deliveries:
                await _insert_delivery(conn, batch_id, delivery, now)
            return True

    async def claim(
        self,
        target: str,
        limit: int,
        owner: str,
        now: datetime,
        lease_until: datetime,
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries of `target` to `owner`.

        On PostgreSQL, FOR UPDATE SKIP LOCKED keeps two replicas from taking
        the same delivery; an expired lease makes a delivery due again.
        """
        query = (
            "UPDATE publisher_deliveries SET lease_owner = $1,"
            " lease_expires_at = $2, updated_at = $3"
            " WHERE id IN ("
            "  SELECT d.id FROM publisher_deliveries d"
            "  WHERE d.target = $4 AND d.state = 'pending'"
            "  AND d.next_attempt_at <= $3"
            "  AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= $3)"
            f"  AND {_IS_GROUP_HEAD}"
            "  ORDER BY d.next_attempt_at, d.id"
            f"  LIMIT $5{self.db.skip_locked})"
            " RETURNING id, batch_id, target, part, format, idempotency_key,"
            " body, attempts"
        )
        async with self.db.transaction() as conn:
            rows = await conn.fetch(query, owner, lease_until, now, target, limit)
        claimed = [
            ClaimedDelivery(
                id=int(row["id"]),
                batch_id=row["batch_id"],
                target=row["target"],
                part=int(row["part"]),
                format=row["format"],
                idempotency_key=row["idempotency_key"],
                body=row["body"],
                attempts=int(row["attempts"]),
            )
            for row in rows
        ]
        return sorted(claimed, key=lambda delivery: delivery.id)

    async def due_times(self) -> dict[str, datetime]:
        """Return, per target, when its next delivery may be attempted.

        Only the head delivery of each group counts, and a leased delivery is
        due when its lease expires.
        """
        rows = await self.db.fetch(
            "SELECT d.target,"
            " MIN(CASE WHEN d.lease_expires_at > d.next_attempt_at"
            " THEN d.lease_expires_at ELSE d.next_attempt_at END) AS due"
            " FROM publisher_deliveries d"
            f" WHERE d.state = 'pending' AND {_IS_GROUP_HEAD}"
            " GROUP BY d.target"
        )
        return {row["target"]: _as_datetime(row["due"]) for row in rows}

    async def finish_attempt(
        self,
        delivery: ClaimedDelivery,
        owner: str,
        result: AttemptResult,
        outcome: Outcome,
        now: datetime,
    ) -> bool:
        """Store an attempt and the delivery's new state in one transaction.

        Returns False, storing nothing, when `owner` no longer holds the
        lease, because the lease expired and another worker took it over.
        """
        attempt = delivery.attempts + 1
        completed_at = now if outcome.state != "pending" else None
        async with self.db.transaction() as conn:
            changed = await conn.execute(
                "UPDATE publisher_deliveries SET attempts = $1, state = $2,"
                " next_attempt_at = $3, lease_owner = NULL,"
                " lease_expires_at = NULL, last_status_code = $4,"
                " last_error = $5, last_response_body = $6, updated_at = $7,"
                " completed_at = $8"
                " WHERE id = $9 AND lease_owner = $10 AND attempts = $11"
                " AND state = 'pending'",
                attempt,
                outcome.state,
                outcome.next_attempt_at,
                result.status_code,
                outcome.error,
                result.response_body,
                now,
                completed_at,
                delivery.id,
                owner,
                delivery.attempts,
            )
            if changed != 1:
                return False
            await conn.execute(
                "INSERT INTO publisher_delivery_attempts"
                " (delivery_id, attempt, attempted_at, status_code, error,"
                " response_body, duration_seconds)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                delivery.id,
                attempt,
                result.attempted_at,
                result.status_code,
                result.error,
                result.response_body,
                result.duration_seconds,
            )
            return True

    async def release(self, delivery_ids: Sequence[int], owner: str) -> None:
        """Give up `owner`'s leases so any worker may take the deliveries now."""
        async with self.db.transaction() as conn:
            for delivery_id in delivery_ids:
                await conn.execute(
                    "UPDATE publisher_deliveries SET lease_owner = NULL,"
                    " lease_expires_at = NULL"
                    " WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
                    delivery_id,
                    owner,
                )

    async def pending_counts(self) -> dict[str, int]:
        """Return the number of pending deliveries per target."""
        rows = await self.db.fetch(
            "SELECT target, COUNT(*) AS pending FROM publisher_deliveries"
            " WHERE state = 'pending' GROUP BY target"
        )
        return {row["target"]: int(row["pending"]) for row in rows}

    async def deliveries_for_batch(self, batch_id: str) -> list[DeliveryRecord]:
        rows = await self.db.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM publisher_deliveries"
            " WHERE batch_id = $1 ORDER BY target, part",
            batch_id,
        )
        return [_delivery_record(row) for row in rows]

    async def get(self, delivery_id: int) -> DeliveryRecord | None:
        row = await self.db.fetchrow(
            f"SELECT {_DELIVERY_COLUMNS} FROM publisher_deliveries WHERE id = $1",
            delivery_id,
        )
        return None if row is None else _delivery_record(row)

    async def attempts(self, delivery_id: int) -> list[AttemptRecord]:
        rows = await self.db.fetch(
            "SELECT attempt, attempted_at, status_code, error, response_body,"
            " duration_seconds FROM publisher_delivery_attempts"
            " WHERE delivery_id = $1 ORDER BY attempt",
            delivery_id,
        )
        return [
            AttemptRecord(
                attempt=int(row["attempt"]),
                attempted_at=_as_datetime(row["attempted_at"]),
                status_code=row["status_code"],
                error=row["error"],
                response_body=row["response_body"],
                duration_seconds=float(row["duration_seconds"]),
            )
            for row in rows
        ]


async def _insert_delivery(
    conn: Connection, batch_id: str, delivery: NewDelivery, now: datetime
) -> None:
    delivery_id = await conn.fetchval(
        "INSERT INTO publisher_deliveries"
        " (batch_id, target, part, format, group_key, idempotency_key, body,"
        " alert_count, state, attempts, next_attempt_at, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $9, $9)"
        " RETURNING id",
        batch_id,
        delivery.target,
        delivery.part,
        delivery.format,
        delivery.group_key,
        delivery.idempotency_key,
        delivery.body,
        len(delivery.alerts),
        now,
    )
    await conn.executemany(
        "INSERT INTO publisher_delivery_alerts"
        " (delivery_id, fingerprint, status, state_change_id)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (delivery_id, fingerprint) DO NOTHING",
        [
            (delivery_id, alert.fingerprint, alert.status, alert.state_change_id)
            for alert in delivery.alerts
        ],
    )


def _delivery_record(row: Row) -> DeliveryRecord:
    completed_at = row["completed_at"]
    return DeliveryRecord(
        id=int(row["id"]),
        batch_id=row["batch_id"],
        target=row["target"],
        part=int(row["part"]),
        format=row["format"],
        group_key=row["group_key"],
        idempotency_key=row["idempotency_key"],
        body=row["body"],
        alert_count=int(row["alert_count"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        next_attempt_at=_as_datetime(row["next_attempt_at"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        last_response_body=row["last_response_body"],
        created_at=_as_datetime(row["created_at"]),
        completed_at=None if completed_at is None else _as_datetime(completed_at),
    )


def _as_datetime(value: Any) -> datetime:
    """Accept a datetime or, from SQLite expressions without a declared type,
    the text form the SQLite adapter writes."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
