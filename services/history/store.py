"""All SQL of the history service: occurrences, state changes, classifications
and the durable work queue.

`services.history.lifecycle` decides what each alert changes; this module
reads the occurrences it needs and writes the outcome. On PostgreSQL,
concurrent transactions on the same occurrence are serialised by the unique
index and a row lock (`SELECT ... FOR UPDATE`), so two identical
notifications stored at once yield exactly one NEW outcome. SQLite
serialises every writer already.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from libs.alerts import STATUS_NAMES, datetime_to_timestamp
from libs.db import Connection, Database, Row, id_in, values_list
from libs.errors import InvalidInputError, NotFoundError
from services.history import queries, records
from services.history.lifecycle import (
    NewStateChange,
    OccurrenceKey,
    OccurrenceState,
    OccurrenceUpdate,
    PreparedAlert,
    check_strings,
    decide,
    plan_changes,
    plan_updates,
    prepare_alert,
    store_response,
)

MAX_LIST_LIMIT = queries.MAX_LIST_LIMIT
MAX_LEASE_ITEMS = 1000
CONTEXT_WINDOW = timedelta(hours=24)

# Rows per multi-row statement: 17 parameters a row stays far below the
# 32,767 parameters PostgreSQL and SQLite 3.32+ accept in one statement.
_ROWS_PER_STATEMENT = 500

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

ChangeIds = dict[tuple[int, str], int]

_NOTIFICATION_COLUMNS = (
    "version, receiver, group_key, external_url, status, notification_reason,"
    " truncated_alerts, group_labels, common_labels, common_annotations,"
    " received_at"
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _chunks(
    items: Sequence[_T], size: int = _ROWS_PER_STATEMENT
) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _notification_params(
    notification: alert_pb2.Notification, received_at: datetime
) -> tuple[Any, ...]:
    return (
        notification.version,
        notification.receiver,
        notification.group_key,
        notification.external_url,
        STATUS_NAMES.get(notification.status, ""),
        notification.notification_reason,
        notification.truncated_alerts,
        dict(notification.group_labels),
        dict(notification.common_labels),
        dict(notification.common_annotations),
        received_at,
    )


_INSERT_OCCURRENCES = (
    "INSERT INTO occurrences (fingerprint, alertname, namespace, severity,"
    " status, labels, annotations, starts_at, ends_at, generator_url,"
    " first_seen_at, last_seen_at, group_key, receiver, truncated_alerts,"
    " external_url, deliveries)"
)
# PostgreSQL types of the columns above, in order. JSONB columns travel as
# text and are cast back.
_OCCURRENCE_TYPES = (
    "text",
    "text",
    "text",
    "text",
    "text",
    "jsonb",
    "jsonb",
    "timestamptz",
    "timestamptz",
    "text",
    "timestamptz",
    "timestamptz",
    "text",
    "text",
    "bigint",
    "text",
    "bigint",
)
_STATE_CHANGE_TYPES = ("bigint", "bigint", "text", "timestamptz", "timestamptz")
# PostgreSQL types of the columns of classifications that
# RecordClassifications writes, in order: state_change_id,
# records.CLASSIFICATION_COLUMNS, recorded_at.
_CLASSIFICATION_TYPES = (
    "bigint",
    "text",
    "float8",
    "text",
    "jsonb",
    "bigint",
    "text",
    "text",
    "text",
    "text",
    "jsonb",
    "text",
    "timestamptz",
    "timestamptz",
)
_WORK_ITEM_TYPES = ("bigint", "jsonb", "jsonb", "timestamptz", "bigint")
# PostgreSQL types of _NOTIFICATION_COLUMNS, in order.
_NOTIFICATION_TYPES = (
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "bigint",
    "jsonb",
    "jsonb",
    "jsonb",
    "timestamptz",
)


def _unnest_select(types: Sequence[str]) -> str:
    """Return a SELECT of one row per array element, $1 to $n, in array order.

    On PostgreSQL one array per column keeps the statement the same for any
    number of rows, so it is parsed and planned as a short statement. A VALUES
    list has a parameter per value and a new text for each row count.
    """
    arrays = ", ".join(
        f"${index}::{'text' if kind == 'jsonb' else kind}[]"
        for index, kind in enumerate(types, start=1)
    )
    columns = ", ".join(f"c{index}" for index in range(len(types)))
    values = ", ".join(
        f"c{index}::jsonb" if kind == "jsonb" else f"c{index}"
        for index, kind in enumerate(types)
    )
    return (
        f" SELECT {values} FROM unnest({arrays})"
        f" WITH ORDINALITY AS v({columns}, position) ORDER BY position"
    )


def _arrays(params: Sequence[Any], types: Sequence[str]) -> list[list[Any]]:
    """Turn row-major `params` into one list per column, JSONB as JSON text."""
    width = len(types)
    arrays: list[list[Any]] = []
    for column, kind in enumerate(types):
        values = list(params[column::width])
        if kind == "jsonb":
            values = [json.dumps(value) for value in values]
        arrays.append(values)
    return arrays


@dataclass(frozen=True)
class StoreItem:
    """One notification to store, as a StoreNotification request carries it."""

    notification: alert_pb2.Notification
    enqueue_work: bool = False
    trace_context: Mapping[str, str] | None = None


@dataclass(frozen=True)
class _Prepared:
    item: StoreItem
    alerts: list[PreparedAlert]


def _prepare(item: StoreItem, received_at: datetime) -> _Prepared:
    """Check a notification's alerts, or raise InvalidInputError."""
    notification = item.notification
    if not notification.alerts:
        raise InvalidInputError("notification.alerts is empty")
    alerts = [
        prepare_alert(alert, index, received_at)
        for index, alert in enumerate(notification.alerts)
    ]
    check_strings(notification, alerts)
    return _Prepared(item, alerts)


_StoreResult = history_pb2.StoreNotificationResponse | Exception


def _fill(
    results: list[_StoreResult | None], responses: Sequence[_StoreResult]
) -> list[_StoreResult]:
    """Put `responses`, in order, in the places of `results` that are None."""
    if results.count(None) != len(responses):
        raise RuntimeError(
            f"{len(responses)} results for {results.count(None)} stored notifications"
        )
    remaining = iter(responses)
    return [next(remaining) if result is None else result for result in results]


@dataclass(frozen=True)
class _Write:
    """Everything storing a batch of notifications writes after reading occurrences."""

    batch: Sequence[_Prepared]
    received_at: datetime
    updates: list[OccurrenceUpdate]
    # The state changes of each notification of the batch, in order.
    changes: list[list[NewStateChange]]


@dataclass(frozen=True)
class _Written:
    notification_ids: list[int]
    change_ids: ChangeIds
    work_item_ids: list[int]


class HistoryStore:
    """Reads and writes the history tables of one Database."""

    def __init__(
        self, db: Database, *, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.db = db
        self._clock = clock

    def _id_in(self, column: str, parameter: int) -> str:
        """Return a condition "column is in the id list passed as $parameter"."""
        return id_in(self.db.dialect, column, parameter)

    async def store_notification(
        self,
        notification: alert_pb2.Notification,
        *,
        enqueue_work: bool = False,
        trace_context: Mapping[str, str] | None = None,
    ) -> history_pb2.StoreNotificationResponse:
        """Store every alert of `notification` in one transaction.

        With `enqueue_work`, one work item lists the new state changes, but
        none is written when every alert is a repeat. Raises InvalidInputError
        for a notification that can never be stored.
        """
        [result] = await self.store_notifications(
            [StoreItem(notification, enqueue_work, trace_context)]
        )
        if isinstance(result, Exception):
            raise result
        return result

    async def store_notifications(
        self, items: Sequence[StoreItem]
    ) -> list[history_pb2.StoreNotificationResponse | Exception]:
        """Store several notifications in order, in one transaction when they can.

        Returns one result per item, in order: its response, or the exception
        storing it alone raised. Notifications are applied in order, so a
        repeat in a later item of the same call is a REPEAT as it would be in
        a later call. When the shared transaction fails, each notification is
        stored again in its own transaction, so that one that cannot be
        stored fails alone.
        """
        results: list[_StoreResult | None] = []
        received_at = self._clock()
        batch: list[_Prepared] = []
        for item in items:
            try:
                batch.append(_prepare(item, received_at))
            except InvalidInputError as exc:
                results.append(exc)
                continue
            results.append(None)
        if len(batch) > 1:
            try:
                together = await self._store_prepared(batch, received_at)
            except Exception as exc:
                logger.warning(
                    "storing notifications together failed; storing each alone",
                    extra={"notifications": len(batch), "error": repr(exc)[:200]},
                )
            else:
                return _fill(results, together)
        alone: list[history_pb2.StoreNotificationResponse | Exception] = []
        for prepared in batch:
            try:
                if len(batch) > 1:
                    # Decisions appended warnings to the prepared alerts, so a
                    # retry starts from the request again.
                    prepared = _prepare(prepared.item, received_at)
                alone.extend(await self._store_prepared([prepared], received_at))
            except Exception as exc:
                alone.append(exc)
        return _fill(results, alone)

    async def _store_prepared(
        self, batch: Sequence[_Prepared], received_at: datetime
    ) -> list[history_pb2.StoreNotificationResponse]:
        async with self.db.transaction() as conn:
            states = await self._claim_occurrences(conn, batch, received_at)
            decisions = [
                [
                    decide(alert, states[alert.key], prepared.item.notification)
                    for alert in prepared.alerts
                ]
                for prepared in batch
            ]
            write = _Write(
                batch,
                received_at,
                plan_updates(states),
                [plan_changes(item_decisions) for item_decisions in decisions],
            )
            written = await self._write(conn, write)

        return [
            store_response(
                item_decisions,
                written.change_ids,
                written.notification_ids[index],
                written.work_item_ids[index],
            )
            for index, item_decisions in enumerate(decisions)
        ]

    async def _claim_occurrences(
        self, conn: Connection, batch: Sequence[_Prepared], received_at: datetime
    ) -> dict[OccurrenceKey, OccurrenceState]:
        """Insert the occurrences not stored yet and lock the others.

        Keys are inserted in sorted order so that two transactions inserting
        overlapping sets wait on each other instead of deadlocking.
        """
        first_by_key: dict[OccurrenceKey, tuple[PreparedAlert, _Prepared]] = {}
        for prepared in batch:
            for alert in prepared.alerts:
                first_by_key.setdefault(alert.key, (alert, prepared))
        ordered = [first_by_key[key] for key in sorted(first_by_key)]

        states: dict[OccurrenceKey, OccurrenceState] = {}
        for chunk in _chunks(ordered):
            for row in await self._insert_occurrences(conn, chunk, received_at):
                key = (row["fingerprint"], row["starts_at"])
                states[key] = OccurrenceState(
                    id=row["id"], status=first_by_key[key][0].status, inserted=True
                )

        existing = [key for key in first_by_key if key not in states]
        if existing:
            for row in await self._lock_occurrences(conn, existing):
                key = (row["fingerprint"], row["starts_at"])
                states[key] = OccurrenceState(
                    id=row["id"], status=row["status"], inserted=False
                )
        missing = [key for key in first_by_key if key not in states]
        if missing:
            raise RuntimeError(f"occurrence neither inserted nor found: {missing[0]}")
        return states

    async def _insert_occurrences(
        self,
        conn: Connection,
        alerts: Sequence[tuple[PreparedAlert, _Prepared]],
        received_at: datetime,
    ) -> list[Row]:
        columns = 17
        params: list[Any] = []
        for alert, prepared in alerts:
            notification = prepared.item.notification
            params.extend(
                (
                    alert.fingerprint,
                    alert.labels.get("alertname", ""),
                    alert.labels.get("namespace", ""),
                    alert.labels.get("severity", ""),
                    alert.status,
                    alert.labels,
                    alert.annotations,
                    alert.starts_at,
                    alert.ends_at,
                    alert.generator_url,
                    received_at,
                    received_at,
                    notification.group_key,
                    notification.receiver,
                    notification.truncated_alerts,
                    notification.external_url,
                    1,
                )
            )
        if self.db.dialect == "postgresql":
            return await conn.fetch(
                _INSERT_OCCURRENCES
                + _unnest_select(_OCCURRENCE_TYPES)
                + " ON CONFLICT (fingerprint, starts_at) DO NOTHING"
                " RETURNING id, fingerprint, starts_at",
                *_arrays(params, _OCCURRENCE_TYPES),
            )
        return await conn.fetch(
            _INSERT_OCCURRENCES + f" VALUES {values_list(len(alerts), columns)}"
            " ON CONFLICT (fingerprint, starts_at) DO NOTHING"
            " RETURNING id, fingerprint, starts_at",
            *params,
        )

    async def _lock_occurrences(
        self, conn: Connection, keys: list[OccurrenceKey]
    ) -> list[Row]:
        """Read the stored occurrences of `keys`, on PostgreSQL locking them by id."""
        if self.db.dialect == "postgresql":
            return await conn.fetch(
                "SELECT id, fingerprint, starts_at, status FROM occurrences"
                " WHERE fingerprint = ANY($1::text[])"
                " AND (fingerprint, starts_at) IN"
                " (SELECT * FROM unnest($1::text[], $2::timestamptz[]))"
                " ORDER BY id FOR UPDATE",
                [key[0] for key in keys],
                [key[1] for key in keys],
            )
        rows: list[Row] = []
        for chunk in _chunks(keys):
            conditions = " OR ".join(
                f"(fingerprint = ${2 * i + 1} AND starts_at = ${2 * i + 2})"
                for i in range(len(chunk))
            )
            rows.extend(
                await conn.fetch(
                    "SELECT id, fingerprint, starts_at, status FROM occurrences"
                    f" WHERE {conditions}",
                    *itertools.chain.from_iterable(chunk),
                )
            )
        return rows

    async def _write(self, conn: Connection, write: _Write) -> _Written:
        notification_ids = await self._insert_ordered(
            conn,
            "notifications",
            _NOTIFICATION_COLUMNS,
            [
                _notification_params(prepared.item.notification, write.received_at)
                for prepared in write.batch
            ],
            _NOTIFICATION_TYPES,
        )
        await self._update_occurrences(conn, write)
        change_ids = await self._insert_state_changes(conn, write, notification_ids)

        queued = [
            index
            for index, prepared in enumerate(write.batch)
            if prepared.item.enqueue_work and write.changes[index]
        ]
        work_ids = await self._insert_ordered(
            conn,
            "work_items",
            "notification_id, state_change_ids, trace_context, enqueued_at, attempts",
            [
                (
                    notification_ids[index],
                    sorted(
                        change_ids[(change.occurrence_id, change.status)]
                        for change in write.changes[index]
                    ),
                    dict(write.batch[index].item.trace_context or {}),
                    write.received_at,
                    0,
                )
                for index in queued
            ],
            _WORK_ITEM_TYPES,
        )
        work_item_ids = [0] * len(write.batch)
        for index, work_id in zip(queued, work_ids, strict=True):
            work_item_ids[index] = work_id
        return _Written(notification_ids, change_ids, work_item_ids)

    async def _insert_ordered(
        self,
        conn: Connection,
        table: str,
        columns: str,
        rows: Sequence[tuple[Any, ...]],
        types: Sequence[str] = (),
    ) -> list[int]:
        """Insert `rows` and return their new ids in the order of `rows`.

        Ids come from a sequence (an integer primary key on SQLite), which
        numbers the rows of one statement in the order they are inserted, so
        the sorted ids match the rows whatever order RETURNING lists them in.
        With the columns' PostgreSQL `types`, rows go as one array per column.
        """
        ids: list[int] = []
        for chunk in _chunks(rows, _ROWS_PER_STATEMENT // 2):
            params = [value for row in chunk for value in row]
            if types and self.db.dialect == "postgresql":
                returned = await conn.fetch(
                    f"INSERT INTO {table} ({columns})"
                    + _unnest_select(types)
                    + " RETURNING id",
                    *_arrays(params, types),
                )
                ids.extend(sorted(int(row["id"]) for row in returned))
                continue
            returned = await conn.fetch(
                f"INSERT INTO {table} ({columns})"
                f" VALUES {values_list(len(chunk), len(chunk[0]))} RETURNING id",
                *params,
            )
            ids.extend(sorted(int(row["id"]) for row in returned))
        return ids

    async def _update_occurrences(self, conn: Connection, write: _Write) -> None:
        if not write.updates:
            return
        updates = sorted(write.updates, key=lambda update: update.id)
        if self.db.dialect == "postgresql":
            # One statement for every repeated alert of the batch rather than
            # one per occurrence: each statement costs a round trip and a plan.
            await conn.execute(
                "UPDATE occurrences o SET status = v.status,"
                " ends_at = COALESCE(v.ends_at, o.ends_at),"
                " annotations = v.annotations::jsonb, last_seen_at = $10,"
                " deliveries = o.deliveries + v.deliveries, group_key = v.group_key,"
                " receiver = v.receiver, truncated_alerts = v.truncated_alerts,"
                " external_url = v.external_url"
                " FROM unnest($1::bigint[], $2::text[], $3::timestamptz[],"
                " $4::text[], $5::bigint[], $6::text[], $7::text[], $8::bigint[],"
                " $9::text[]) AS v(id, status, ends_at, annotations, deliveries,"
                " group_key, receiver, truncated_alerts, external_url)"
                " WHERE o.id = v.id",
                [update.id for update in updates],
                [update.status for update in updates],
                [update.ends_at for update in updates],
                [json.dumps(update.annotations) for update in updates],
                [update.deliveries for update in updates],
                [update.notification.group_key for update in updates],
                [update.notification.receiver for update in updates],
                [update.notification.truncated_alerts for update in updates],
                [update.notification.external_url for update in updates],
                write.received_at,
            )
            return
        await conn.executemany(
            "UPDATE occurrences SET status = $2, ends_at = COALESCE($3, ends_at),"
            " annotations = $4, last_seen_at = $5, deliveries = deliveries + $6,"
            " group_key = $7, receiver = $8, truncated_alerts = $9,"
            " external_url = $10"
            " WHERE id = $1",
            [
                (
                    update.id,
                    update.status,
                    update.ends_at,
                    update.annotations,
                    write.received_at,
                    update.deliveries,
                    update.notification.group_key,
                    update.notification.receiver,
                    update.notification.truncated_alerts,
                    update.notification.external_url,
                )
                for update in updates
            ],
        )

    async def _insert_state_changes(
        self, conn: Connection, write: _Write, notification_ids: Sequence[int]
    ) -> ChangeIds:
        rows = [
            (
                change.occurrence_id,
                notification_ids[index],
                change.status,
                change.changed_at,
                write.received_at,
            )
            for index, changes in enumerate(write.changes)
            for change in changes
        ]
        ids: ChangeIds = {}
        for chunk in _chunks(rows):
            params = [value for row in chunk for value in row]
            insert = (
                "INSERT INTO state_changes"
                " (occurrence_id, notification_id, status, changed_at, recorded_at)"
            )
            if self.db.dialect == "postgresql":
                returned = await conn.fetch(
                    insert
                    + _unnest_select(_STATE_CHANGE_TYPES)
                    + " RETURNING id, occurrence_id, status",
                    *_arrays(params, _STATE_CHANGE_TYPES),
                )
            else:
                returned = await conn.fetch(
                    insert + f" VALUES {values_list(len(chunk), 5)}"
                    " RETURNING id, occurrence_id, status",
                    *params,
                )
            for row in returned:
                ids[(row["occurrence_id"], row["status"])] = row["id"]
        return ids

    async def record_classifications(
        self, classification_records: Iterable[history_pb2.ClassificationRecord]
    ) -> int:
        """Store each state change's first classification and count the new ones.

        Raises InvalidInputError, storing nothing, when a record names an
        unknown state change or lacks its classification.
        """
        params: dict[int, tuple[Any, ...]] = {}
        for index, record in enumerate(classification_records):
            where = f"records[{index}].classification"
            if not record.HasField("classification"):
                raise InvalidInputError(f"{where} is missing")
            if record.state_change_id not in params:
                params[record.state_change_id] = (
                    record.state_change_id,
                    *records.classification_params(record.classification, where),
                )
        if not params:
            return 0
        recorded_at = self._clock()

        async with self.db.transaction() as conn:
            await self._check_state_changes(conn, list(params))
            stored = 0
            for chunk in _chunks(list(params.values())):
                stored += await self._insert_classifications(conn, chunk, recorded_at)
        return stored

    async def _check_state_changes(self, conn: Connection, ids: list[int]) -> None:
        rows = await conn.fetch(
            f"SELECT id FROM state_changes WHERE {self._id_in('id', 1)}", ids
        )
        unknown = sorted(set(ids) - {row["id"] for row in rows})
        if unknown:
            listed = ", ".join(str(i) for i in unknown[:10])
            raise InvalidInputError(
                f"state_change_id not found: {listed}; record classifications only "
                "for state changes that StoreNotification returned"
            )

    async def _insert_classifications(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]], recorded_at: datetime
    ) -> int:
        columns = len(records.CLASSIFICATION_COLUMNS) + 2
        params: list[Any] = []
        for row in rows:
            params.extend((*row, recorded_at))
        insert = (
            "INSERT INTO classifications (state_change_id, "
            + ", ".join(records.CLASSIFICATION_COLUMNS)
            + ", recorded_at)"
        )
        conflict = (
            " ON CONFLICT (state_change_id) DO NOTHING"
            " RETURNING state_change_id, severity, confidence"
        )
        if self.db.dialect == "postgresql":
            inserted = await conn.fetch(
                insert + _unnest_select(_CLASSIFICATION_TYPES) + conflict,
                *_arrays(params, _CLASSIFICATION_TYPES),
            )
        else:
            inserted = await conn.fetch(
                insert + f" VALUES {values_list(len(rows), columns)}" + conflict,
                *params,
            )
        await self._update_latest_classifications(conn, inserted)
        return len(inserted)

    async def _update_latest_classifications(
        self, conn: Connection, inserted: Sequence[Row]
    ) -> None:
        """Copy new classifications to their occurrences when they are the latest.

        The latest is the classification of the state change with the highest
        id, whatever order the classifications arrive in.
        """
        if not inserted:
            return
        if self.db.dialect == "postgresql":
            # Lock the occurrences in id order, the order StoreNotification
            # locks them in, so that concurrent calls wait instead of deadlocking.
            await conn.fetch(
                "SELECT id FROM occurrences WHERE id IN (SELECT occurrence_id"
                f" FROM state_changes WHERE {self._id_in('id', 1)})"
                " ORDER BY id FOR UPDATE",
                [row["state_change_id"] for row in inserted],
            )
            # One statement for the whole batch: the newest new classification
            # of each occurrence, if it is newer than the stored one.
            await conn.execute(
                "UPDATE occurrences o SET latest_change_id = v.change_id,"
                " latest_severity = v.severity, latest_confidence = v.confidence"
                " FROM (SELECT DISTINCT ON (s.occurrence_id) s.occurrence_id,"
                " c.change_id, c.severity, c.confidence"
                " FROM unnest($1::bigint[], $2::text[], $3::float8[])"
                " AS c(change_id, severity, confidence)"
                " JOIN state_changes s ON s.id = c.change_id"
                " ORDER BY s.occurrence_id, c.change_id DESC) v"
                " WHERE o.id = v.occurrence_id"
                " AND (o.latest_change_id IS NULL OR o.latest_change_id < v.change_id)",
                [row["state_change_id"] for row in inserted],
                [row["severity"] for row in inserted],
                [row["confidence"] for row in inserted],
            )
            return
        await conn.executemany(
            "UPDATE occurrences SET latest_change_id = $1, latest_severity = $2,"
            " latest_confidence = $3"
            " WHERE id = (SELECT occurrence_id FROM state_changes WHERE id = $1)"
            " AND (latest_change_id IS NULL OR latest_change_id < $1)",
            [
                (row["state_change_id"], row["severity"], row["confidence"])
                for row in sorted(inserted, key=lambda row: row["state_change_id"])
            ],
        )

    async def lease_work(
        self, owner: str, max_items: int, lease_seconds: int
    ) -> list[history_pb2.WorkItem]:
        """Lease up to `max_items` pending work items, oldest first.

        An item is pending while it is not completed and no lease on it is
        live. On PostgreSQL, SKIP LOCKED lets concurrent callers take
        disjoint items without waiting on each other.
        """
        if not 1 <= max_items <= MAX_LEASE_ITEMS:
            raise InvalidInputError(
                f"max_items must be from 1 to {MAX_LEASE_ITEMS}, not {max_items}"
            )
        if lease_seconds < 1:
            raise InvalidInputError(
                f"lease_seconds must be at least 1, not {lease_seconds}"
            )
        now = self._clock()

        async with self.db.transaction() as conn:
            leased = await conn.fetch(
                "UPDATE work_items SET leased_until = $1, lease_owner = $2,"
                " attempts = attempts + 1"
                " WHERE id IN (SELECT id FROM work_items"
                " WHERE completed_at IS NULL"
                " AND (leased_until IS NULL OR leased_until <= $3)"
                f" ORDER BY id LIMIT $4{self.db.skip_locked})"
                " RETURNING id, notification_id, state_change_ids, trace_context,"
                " enqueued_at, attempts",
                now + timedelta(seconds=lease_seconds),
                owner,
                now,
                max_items,
            )
            if not leased:
                return []
            notifications = await self._notifications_by_id(
                conn, [row["notification_id"] for row in leased]
            )
            alerts = await self._work_alerts(
                conn, [i for row in leased for i in row["state_change_ids"]]
            )
        return [
            _work_item(row, notifications, alerts)
            for row in sorted(leased, key=lambda row: row["id"])
        ]

    async def _notifications_by_id(
        self, conn: Connection, ids: list[int]
    ) -> dict[int, alert_pb2.Notification]:
        rows = await conn.fetch(
            f"SELECT * FROM notifications WHERE {self._id_in('id', 1)}", ids
        )
        return {row["id"]: records.notification_from_row(row) for row in rows}

    async def _work_alerts(
        self, conn: Connection, state_change_ids: list[int]
    ) -> dict[int, history_pb2.WorkAlert]:
        rows = await conn.fetch(
            "SELECT s.id, s.occurrence_id, s.status, o.fingerprint, o.labels,"
            " o.annotations, o.starts_at, o.ends_at, o.generator_url, "
            + _classification_select()
            + " FROM state_changes s"
            " JOIN occurrences o ON o.id = s.occurrence_id"
            " LEFT JOIN classifications c ON c.state_change_id = s.id"
            f" WHERE {self._id_in('s.id', 1)}",
            state_change_ids,
        )
        return {row["id"]: records.work_alert_from_row(row) for row in rows}

    async def complete_work(self, ids: Iterable[int]) -> int:
        """Mark work items completed and return how many were still pending."""
        id_list = sorted(set(ids))
        if not id_list:
            return 0
        return await self.db.execute(
            "UPDATE work_items SET completed_at = $2"
            f" WHERE {self._id_in('id', 1)} AND completed_at IS NULL",
            id_list,
            self._clock(),
        )

    async def release_work(self, ids: Iterable[int], owner: str) -> int:
        """Hand leased items back to the queue, as if `owner` never leased them.

        Only items that `owner` still holds are released, and their count is
        returned.
        """
        id_list = sorted(set(ids))
        if not id_list:
            return 0
        return await self.db.execute(
            "UPDATE work_items SET leased_until = NULL, lease_owner = NULL,"
            " attempts = attempts - 1"
            f" WHERE {self._id_in('id', 1)} AND lease_owner = $2"
            " AND completed_at IS NULL",
            id_list,
            owner,
        )

    async def list_occurrences(
        self,
        *,
        limit: int,
        cursor: str = "",
        alertname: str = "",
        status: int = 0,
        fingerprint: str = "",
        selected: queries.OccurrenceFilter | None = None,
    ) -> tuple[list[history_pb2.Occurrence], str]:
        """Return one page of occurrences, newest start first, and the next cursor.

        `selected` carries every filter; without it the keyword filters
        apply. Each occurrence carries its state changes and their
        classifications. The next cursor is empty on the last page.
        """
        if selected is None:
            selected = queries.OccurrenceFilter(
                alertname=alertname,
                status=records.status_text(status, "status") if status else "",
                fingerprint=fingerprint,
            )
        return await queries.list_occurrences(
            self.db, selected, limit=limit, cursor=cursor
        )

    async def get_occurrence(self, occurrence_id: int) -> history_pb2.Occurrence:
        """Return one occurrence with its state changes and their classifications."""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM occurrences WHERE id = $1", occurrence_id
            )
            if row is None:
                raise NotFoundError(f"occurrence {occurrence_id} not found")
            changes = await conn.fetch(
                "SELECT s.id, s.status, s.changed_at, "
                + _classification_select()
                + " FROM state_changes s"
                " LEFT JOIN classifications c ON c.state_change_id = s.id"
                " WHERE s.occurrence_id = $1 ORDER BY s.id",
                occurrence_id,
            )
        occurrence = records.occurrence_from_row(row)
        occurrence.state_changes.extend(
            records.state_change_from_row(change) for change in changes
        )
        queries.set_latest_classification(occurrence)
        return occurrence

    async def get_alert_context(
        self, fingerprint: str
    ) -> history_pb2.GetAlertContextResponse:
        """Summarise the last 24 hours of one fingerprint.

        An occurrence counts when it started or was last received in the
        window, and a state change counts when its `changed_at` is in it.
        """
        if not fingerprint:
            raise InvalidInputError("fingerprint is missing")
        since = self._clock() - CONTEXT_WINDOW
        async with self.db.transaction() as conn:
            occurrences = await conn.fetchval(
                "SELECT count(*) FROM occurrences WHERE fingerprint = $1"
                " AND (starts_at >= $2 OR last_seen_at >= $2)",
                fingerprint,
                since,
            )
            changes = await conn.fetchval(
                "SELECT count(*) FROM state_changes s"
                " JOIN occurrences o ON o.id = s.occurrence_id"
                " WHERE o.fingerprint = $1 AND s.changed_at >= $2",
                fingerprint,
                since,
            )
            latest = await conn.fetchrow(
                "SELECT " + _classification_select() + " FROM classifications c"
                " JOIN state_changes s ON s.id = c.state_change_id"
                " JOIN occurrences o ON o.id = s.occurrence_id"
                " WHERE o.fingerprint = $1 ORDER BY c.id DESC LIMIT 1",
                fingerprint,
            )
        response = history_pb2.GetAlertContextResponse(
            recent_occurrences=int(occurrences), flap_count=int(changes)
        )
        if latest is not None:
            response.last_classification.CopyFrom(
                records.classification_from_row(latest, "c_")
            )
        return response


def _classification_select() -> str:
    return ", ".join(
        f"c.{column} AS c_{column}" for column in records.CLASSIFICATION_COLUMNS
    )


def _work_item(
    row: Row,
    notifications: Mapping[int, alert_pb2.Notification],
    alerts: Mapping[int, history_pb2.WorkAlert],
) -> history_pb2.WorkItem:
    item = history_pb2.WorkItem(
        id=row["id"],
        notification=notifications[row["notification_id"]],
        attempts=row["attempts"],
        trace_context=row["trace_context"],
        enqueued_at=datetime_to_timestamp(row["enqueued_at"]),
    )
    item.alerts.extend(alerts[i] for i in row["state_change_ids"] if i in alerts)
    return item
