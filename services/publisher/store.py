"""Delivery records in PostgreSQL or SQLite; every SQL statement of the publisher.

A delivery is one request body for one target. It is recorded before any
attempt, taken by a worker under a lease, and ends `succeeded` or `dead`.
Deliveries of one target and one order key are taken in the order they were
recorded, one at a time, so a resolve never overtakes its trigger. The
order key is the `group_key` column: the Alertmanager group key, or the
alert for formats with one request per alert.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from libs.db import Connection, Database, Row, values_list
from libs.errors import UnavailableError

DeliveryState = Literal["pending", "succeeded", "dead"]
# (occurrence key, status) -> names of the targets that have a delivery of it.
DeliveredStates = dict[tuple[str, str], frozenset[str]]
# Builds a batch's deliveries once the states delivered before are known.
# The mapping it receives changes after the call returns, so it must not keep it.
Planner = Callable[[DeliveredStates], Sequence["NewDelivery"]]
# Transactions retried when a concurrent Publish recorded the same alert
# state for a target first (PostgreSQL only; SQLite serialises writers).
RECORD_TRANSACTION_ATTEMPTS = 3
# Oldest pending deliveries of a target that one claim looks at.
# NOTE: when the CLAIM_WINDOW oldest pending deliveries of a target all wait
# for a retry, newer groups of that target wait too, until one is due.
CLAIM_WINDOW = 256
# Rows per multi-row INSERT: at 3, 14 and 6 parameters a row, far below the
# roughly 32,000 parameters PostgreSQL and SQLite 3.32+ accept in one statement.
_BATCH_ROWS_PER_STATEMENT = 500
_DELIVERY_ROWS_PER_STATEMENT = 200
_ALERT_ROWS_PER_STATEMENT = 500

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedBatch:
    """A batch to record: its id, size, the states it carries and its planner."""

    batch_id: str
    alert_count: int
    occurrence_keys: Sequence[str]
    plan: Planner


# Occurrence keys per IN (...) list.
KEYS_PER_QUERY = 500


@dataclass(frozen=True)
class DeliveredAlert:
    """One alert state that a delivery carries."""

    fingerprint: str
    status: str
    state_change_id: int
    # Fingerprint and start of the occurrence (`encoding.occurrence_key`).
    occurrence_key: str


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
    # W3C trace context that each attempt's span continues.
    trace_context: Mapping[str, str] = field(default_factory=dict)


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
    trace_context: Mapping[str, str] = field(default_factory=dict)
    # Attempts made before the latest manual retry; the limit counts after.
    attempt_offset: int = 0


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
    discarded_at: datetime | None = None
    attempt_offset: int = 0


@dataclass(frozen=True)
class AttemptRecord:
    """One stored attempt of a delivery."""

    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    response_body: str | None
    duration_seconds: float


# Pending deliveries numbered within their target and group, 1 for the
# earliest: only that head may be attempted, so deliveries of one group reach
# the target in order. The window runs in one ordered pass over the index
# (state, target, group_key, id). A join or NOT EXISTS against the same table
# let PostgreSQL, without statistics on a new table, pick a nested loop that
# grew with the square of the pending deliveries.
_NUMBERED_PENDING = (
    "SELECT id, target, next_attempt_at, lease_expires_at,"
    " ROW_NUMBER() OVER (PARTITION BY target, group_key ORDER BY id) AS position"
    " FROM publisher_deliveries WHERE state = 'pending' {target_filter}"
)

_CLAIMED_COLUMNS = (
    "id, batch_id, target, part, format, idempotency_key, body, attempts,"
    " trace_context, attempt_offset"
)

DELIVERY_COLUMNS = (
    "id, batch_id, target, part, format, group_key, idempotency_key, body,"
    " alert_count, state, attempts, next_attempt_at, last_status_code,"
    " last_error, last_response_body, created_at, completed_at, discarded_at,"
    " attempt_offset"
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
        """Record a batch and the given deliveries in one transaction.

        Returns False, recording nothing, when the batch_id was recorded
        before.
        """
        return await self.record_planned_batch(
            batch_id, alert_count, (), lambda _: deliveries, now
        )

    async def record_planned_batch(
        self,
        batch_id: str,
        alert_count: int,
        occurrence_keys: Sequence[str],
        plan: Planner,
        now: datetime,
    ) -> bool:
        """Record a batch and the deliveries `plan` builds, in one transaction.

        `plan` receives which targets already have a delivery of each state
        of `occurrence_keys`, read in the same transaction, so it can leave
        those out and follow triggers with their resolves. Returns False,
        recording nothing, when the batch_id was recorded before. Raises
        UnavailableError when concurrent calls kept recording the same
        states first.
        """
        batch = PlannedBatch(batch_id, alert_count, occurrence_keys, plan)
        for attempt in range(1, RECORD_TRANSACTION_ATTEMPTS + 1):
            try:
                async with self.db.transaction() as conn:
                    [created] = await _record_all(conn, [batch], now)
                    return created
            except (asyncpg.UniqueViolationError, sqlite3.IntegrityError) as exc:
                if attempt == RECORD_TRANSACTION_ATTEMPTS:
                    raise UnavailableError(
                        f"cannot record batch {batch_id!r}: concurrent batches "
                        "keep recording the same alert states; retry"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def record_planned_batches(
        self, batches: Sequence[PlannedBatch], now: datetime
    ) -> list[bool | Exception]:
        """Record several batches in order, in one transaction when they can.

        Returns, per batch, what record_planned_batch would return or the
        exception it would raise. A later batch's plan receives the
        deliveries of the earlier ones. When the shared transaction fails, each batch
        is recorded in its own, so that one failure stays with its batch.
        """
        if len(batches) > 1:
            try:
                async with self.db.transaction() as conn:
                    together: list[bool | Exception] = list(
                        await _record_all(conn, batches, now)
                    )
                return together
            except Exception as exc:
                logger.warning(
                    "recording batches together failed; recording each alone",
                    extra={"batches": len(batches), "error": repr(exc)[:200]},
                )
        alone: list[bool | Exception] = []
        for batch in batches:
            try:
                alone.append(
                    await self.record_planned_batch(
                        batch.batch_id,
                        batch.alert_count,
                        batch.occurrence_keys,
                        batch.plan,
                        now,
                    )
                )
            except Exception as exc:
                alone.append(exc)
        return alone

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
        # Group heads among the target's oldest CLAIM_WINDOW pending
        # deliveries: a delivery that is first of its group there is first of
        # its group overall, because the earlier deliveries of its group have
        # smaller ids. Reading a window, not every pending delivery, keeps a
        # claim's cost flat while a backlog grows.
        heads = (
            "SELECT id FROM (SELECT id, next_attempt_at, lease_expires_at,"
            " ROW_NUMBER() OVER (PARTITION BY group_key ORDER BY id) AS position"
            " FROM (SELECT id, group_key, next_attempt_at, lease_expires_at"
            " FROM publisher_deliveries WHERE state = 'pending' AND target = $1"
            " ORDER BY id LIMIT $4) oldest) numbered"
            " WHERE position = 1 AND next_attempt_at <= $2"
            " AND (lease_expires_at IS NULL OR lease_expires_at <= $2)"
            " ORDER BY next_attempt_at, id LIMIT $3"
        )
        if self.db.dialect == "postgresql":
            # Reading the heads and leasing them in one statement saves the
            # round trips of a transaction. SKIP LOCKED passes over a head
            # that another replica is leasing at the same moment.
            rows = await self.db.fetch(
                "UPDATE publisher_deliveries SET lease_owner = $5,"
                " lease_expires_at = $6, updated_at = $2"
                " WHERE id IN (SELECT id FROM publisher_deliveries"
                f" WHERE id IN ({heads})"
                " AND state = 'pending' AND next_attempt_at <= $2"
                " AND (lease_expires_at IS NULL OR lease_expires_at <= $2)"
                " FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_CLAIMED_COLUMNS}",
                target,
                now,
                limit,
                CLAIM_WINDOW,
                owner,
                lease_until,
            )
        else:
            rows = await self._claim_in_transaction(
                heads, target, limit, owner, now, lease_until
            )
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
                trace_context=row["trace_context"] or {},
                attempt_offset=int(row["attempt_offset"]),
            )
            for row in rows
        ]
        return sorted(claimed, key=lambda delivery: delivery.id)

    async def _claim_in_transaction(
        self,
        heads: str,
        target: str,
        limit: int,
        owner: str,
        now: datetime,
        lease_until: datetime,
    ) -> list[Row]:
        async with self.db.transaction() as conn:
            head_ids = [
                int(row["id"])
                for row in await conn.fetch(heads, target, now, limit, CLAIM_WINDOW)
            ]
            if not head_ids:
                return []
            return await conn.fetch(
                _lease_query(len(head_ids), self.db.skip_locked),
                owner,
                lease_until,
                now,
                *head_ids,
            )

    async def due_times(self) -> dict[str, datetime]:
        """Return, per target, when its next delivery may be attempted.

        Only the head delivery of each group counts, and a leased delivery is
        due when its lease expires.
        """
        rows = await self.db.fetch(
            "SELECT target,"
            " MIN(CASE WHEN lease_expires_at > next_attempt_at"
            " THEN lease_expires_at ELSE next_attempt_at END) AS due"
            f" FROM ({_NUMBERED_PENDING.format(target_filter='')}) numbered"
            " WHERE position = 1 GROUP BY target"
        )
        return {row["target"]: as_datetime(row["due"]) for row in rows}

    async def finish_attempts(
        self, finished: Sequence[FinishedAttempt], owner: str, now: datetime
    ) -> list[bool]:
        """Store several attempts and their deliveries' new states together.

        Returns, for each attempt, whether it was stored: False for a delivery
        whose lease `owner` no longer holds. The deliveries must be distinct.
        """
        if not finished:
            return []
        if len({item.delivery.id for item in finished}) != len(finished):
            raise ValueError(
                "finish_attempts got a delivery twice: store each attempt once"
            )
        if self.db.dialect == "postgresql":
            # One statement is one transaction: an attempt row is written
            # only for a delivery whose update found the lease still held.
            rows = await self.db.fetch(
                "WITH finished AS (SELECT * FROM unnest($1::bigint[],"
                " $2::int[], $3::int[], $4::text[], $5::timestamptz[],"
                " $6::int[], $7::text[], $8::text[], $9::timestamptz[],"
                " $10::timestamptz[], $11::text[], $12::float8[])"
                " AS f(id, previous, attempt, state, next_attempt_at,"
                " status_code, last_error, response_body, completed_at,"
                " attempted_at, error, duration_seconds)),"
                " updated AS (UPDATE publisher_deliveries d"
                " SET attempts = f.attempt, state = f.state,"
                " next_attempt_at = f.next_attempt_at, lease_owner = NULL,"
                " lease_expires_at = NULL, last_status_code = f.status_code,"
                " last_error = f.last_error, last_response_body = f.response_body,"
                " updated_at = $13, completed_at = f.completed_at"
                " FROM finished f WHERE d.id = f.id AND d.lease_owner = $14"
                " AND d.attempts = f.previous AND d.state = 'pending'"
                " RETURNING d.id)"
                " INSERT INTO publisher_delivery_attempts"
                " (delivery_id, attempt, attempted_at, status_code, error,"
                " response_body, duration_seconds)"
                " SELECT f.id, f.attempt, f.attempted_at, f.status_code, f.error,"
                " f.response_body, f.duration_seconds"
                " FROM finished f JOIN updated u ON u.id = f.id"
                " RETURNING delivery_id",
                *_finished_arrays(finished, now),
                now,
                owner,
            )
            stored = {int(row["delivery_id"]) for row in rows}
            return [item.delivery.id in stored for item in finished]
        async with self.db.transaction() as conn:
            return [
                await _finish_in_transaction(conn, item, owner, now)
                for item in finished
            ]

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
            f"SELECT {DELIVERY_COLUMNS} FROM publisher_deliveries"
            " WHERE batch_id = $1 ORDER BY target, part",
            batch_id,
        )
        return [delivery_record(row) for row in rows]

    async def get(self, delivery_id: int) -> DeliveryRecord | None:
        row = await self.db.fetchrow(
            f"SELECT {DELIVERY_COLUMNS} FROM publisher_deliveries WHERE id = $1",
            delivery_id,
        )
        return None if row is None else delivery_record(row)

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
                attempted_at=as_datetime(row["attempted_at"]),
                status_code=row["status_code"],
                error=row["error"],
                response_body=row["response_body"],
                duration_seconds=float(row["duration_seconds"]),
            )
            for row in rows
        ]


def _lease_query(count: int, skip_locked: str) -> str:
    """Lease the listed deliveries that are still pending and due.

    A head read before this statement may have been taken by another replica
    meanwhile: SKIP LOCKED passes over a row it holds, and the conditions
    leave out a row it has leased or finished.
    """
    placeholders = ", ".join(f"${index + 4}" for index in range(count))
    return (
        "UPDATE publisher_deliveries SET lease_owner = $1,"
        " lease_expires_at = $2, updated_at = $3"
        " WHERE id IN ("
        f"  SELECT id FROM publisher_deliveries WHERE id IN ({placeholders})"
        "  AND state = 'pending' AND next_attempt_at <= $3"
        "  AND (lease_expires_at IS NULL OR lease_expires_at <= $3)"
        f" {skip_locked})"
        f" RETURNING {_CLAIMED_COLUMNS}"
    )


async def _record_all(
    conn: Connection, batches: Sequence[PlannedBatch], now: datetime
) -> list[bool]:
    """Record `batches` in order on `conn`, with a few statements for all.

    Returns, per batch, False when its batch_id was recorded before (or
    earlier in `batches`). Each batch's plan receives the deliveries that the
    earlier batches planned, as if each had been recorded on its own.
    """
    first_index: dict[str, int] = {}
    for index, batch in enumerate(batches):
        first_index.setdefault(batch.batch_id, index)
    new_ids = await _insert_batches(
        conn, [batches[index] for index in first_index.values()], now
    )
    created = [
        first_index[batch.batch_id] == index and batch.batch_id in new_ids
        for index, batch in enumerate(batches)
    ]

    keys = [
        key
        for batch, is_new in zip(batches, created, strict=True)
        if is_new
        for key in batch.occurrence_keys
    ]
    found = await _delivered_targets(conn, keys)
    delivered = {key: frozenset(targets) for key, targets in found.items()}
    planned: list[tuple[str, NewDelivery]] = []
    for batch, is_new in zip(batches, created, strict=True):
        if not is_new:
            continue
        for delivery in batch.plan(delivered):
            planned.append((batch.batch_id, delivery))
            for alert in delivery.alerts:
                if alert.occurrence_key:
                    state = (alert.occurrence_key, alert.status)
                    targets = delivered.get(state, frozenset())
                    delivered[state] = targets | {delivery.target}
    await _insert_deliveries(conn, planned, now)
    return created


async def _insert_batches(
    conn: Connection, batches: Sequence[PlannedBatch], now: datetime
) -> set[str]:
    """Insert batch rows and return the batch ids that were not stored yet."""
    inserted: set[str] = set()
    for start in range(0, len(batches), _BATCH_ROWS_PER_STATEMENT):
        chunk = batches[start : start + _BATCH_ROWS_PER_STATEMENT]
        rows = await conn.fetch(
            "INSERT INTO publisher_batches (batch_id, alert_count, received_at)"
            f" VALUES {values_list(len(chunk), 3)}"
            " ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
            *(
                value
                for batch in chunk
                for value in (batch.batch_id, batch.alert_count, now)
            ),
        )
        inserted.update(row["batch_id"] for row in rows)
    return inserted


async def _insert_deliveries(
    conn: Connection, planned: Sequence[tuple[str, NewDelivery]], now: datetime
) -> None:
    """Insert deliveries and the alert states each carries."""
    alert_rows: list[tuple[Any, ...]] = []
    for start in range(0, len(planned), _DELIVERY_ROWS_PER_STATEMENT):
        chunk = planned[start : start + _DELIVERY_ROWS_PER_STATEMENT]
        params: list[Any] = []
        for batch_id, delivery in chunk:
            params.extend(
                (
                    batch_id,
                    delivery.target,
                    delivery.part,
                    delivery.format,
                    delivery.group_key,
                    delivery.idempotency_key,
                    delivery.body,
                    len(delivery.alerts),
                    "pending",
                    0,
                    now,
                    now,
                    now,
                    dict(delivery.trace_context),
                )
            )
        rows = await conn.fetch(
            "INSERT INTO publisher_deliveries"
            " (batch_id, target, part, format, group_key, idempotency_key, body,"
            " alert_count, state, attempts, next_attempt_at, created_at,"
            " updated_at, trace_context)"
            f" VALUES {values_list(len(chunk), 14)} RETURNING id",
            *params,
        )
        # A sequence numbers the rows of one statement in insertion order, so
        # the sorted ids match the rows whatever order RETURNING lists them in.
        ids = sorted(int(row["id"]) for row in rows)
        for delivery_id, (_, delivery) in zip(ids, chunk, strict=True):
            alert_rows.extend(
                (
                    delivery_id,
                    alert.fingerprint,
                    alert.status,
                    alert.state_change_id,
                    delivery.target,
                    alert.occurrence_key,
                )
                for alert in delivery.alerts
            )
    for start in range(0, len(alert_rows), _ALERT_ROWS_PER_STATEMENT):
        chunk_rows = alert_rows[start : start + _ALERT_ROWS_PER_STATEMENT]
        await conn.execute(
            "INSERT INTO publisher_delivery_alerts"
            " (delivery_id, fingerprint, status, state_change_id, target,"
            " occurrence_key)"
            f" VALUES {values_list(len(chunk_rows), 6)}"
            " ON CONFLICT (delivery_id, fingerprint) DO NOTHING",
            *(value for row in chunk_rows for value in row),
        )


async def _delivered_targets(
    conn: Connection, occurrence_keys: Sequence[str]
) -> dict[tuple[str, str], set[str]]:
    """Return the targets that have a delivery of each state of the keys."""
    found: dict[tuple[str, str], set[str]] = {}
    unique = sorted(set(occurrence_keys))
    for start in range(0, len(unique), KEYS_PER_QUERY):
        chunk = unique[start : start + KEYS_PER_QUERY]
        placeholders = ", ".join(f"${index + 1}" for index in range(len(chunk)))
        rows = await conn.fetch(
            "SELECT occurrence_key, status, target FROM publisher_delivery_alerts"
            f" WHERE occurrence_key IN ({placeholders})",
            *chunk,
        )
        for row in rows:
            key = (row["occurrence_key"], row["status"])
            found.setdefault(key, set()).add(row["target"])
    return found


def delivery_record(row: Row) -> DeliveryRecord:
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
        next_attempt_at=as_datetime(row["next_attempt_at"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        last_response_body=row["last_response_body"],
        created_at=as_datetime(row["created_at"]),
        completed_at=None if completed_at is None else as_datetime(completed_at),
        discarded_at=optional_datetime(row["discarded_at"]),
        attempt_offset=int(row["attempt_offset"]),
    )


def optional_datetime(value: Any) -> datetime | None:
    return None if value is None else as_datetime(value)


def as_datetime(value: Any) -> datetime:
    """Accept a datetime or, from SQLite expressions without a declared type,
    the text form the SQLite adapter writes."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class FinishedAttempt:
    """An attempt to store with the state its delivery moves to."""

    delivery: ClaimedDelivery
    result: AttemptResult
    outcome: Outcome


def _finished_arrays(
    finished: Sequence[FinishedAttempt], now: datetime
) -> tuple[list[Any], ...]:
    """Return the columns of `finished` as the arrays finish_attempts unnests."""
    return tuple(
        list(column)
        for column in zip(
            *(
                (
                    item.delivery.id,
                    item.delivery.attempts,
                    item.delivery.attempts + 1,
                    item.outcome.state,
                    item.outcome.next_attempt_at,
                    item.result.status_code,
                    item.outcome.error,
                    item.result.response_body,
                    now if item.outcome.state != "pending" else None,
                    item.result.attempted_at,
                    item.result.error,
                    item.result.duration_seconds,
                )
                for item in finished
            ),
            strict=True,
        )
    )


async def _finish_in_transaction(
    conn: Connection, item: FinishedAttempt, owner: str, now: datetime
) -> bool:
    """Store one attempt, inside the caller's transaction (SQLite)."""
    delivery, result, outcome = item.delivery, item.result, item.outcome
    changed = await conn.execute(
        "UPDATE publisher_deliveries SET attempts = $1, state = $2,"
        " next_attempt_at = $3, lease_owner = NULL,"
        " lease_expires_at = NULL, last_status_code = $4,"
        " last_error = $5, last_response_body = $6, updated_at = $7,"
        " completed_at = $8"
        " WHERE id = $9 AND lease_owner = $10 AND attempts = $11"
        " AND state = 'pending'",
        delivery.attempts + 1,
        outcome.state,
        outcome.next_attempt_at,
        result.status_code,
        outcome.error,
        result.response_body,
        now,
        now if outcome.state != "pending" else None,
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
        delivery.attempts + 1,
        result.attempted_at,
        result.status_code,
        result.error,
        result.response_body,
        result.duration_seconds,
    )
    return True
