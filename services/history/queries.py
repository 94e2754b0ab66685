"""Read queries of the history: filtered pages, timelines, reports, statistics.

Pages are ordered by (starts_at, id), newest first, and continue from an
opaque keyset cursor, so a page boundary stays put while rows are inserted.
Every filter has an index that returns rows in that order (see
`migrations.py`), so a page reads about `limit` rows however large the
table is. Reports aggregate one window; percentiles interpolate linearly
between the two nearest values, like PostgreSQL's `percentile_cont`, which
computes them there, while on SQLite Python computes them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from alerthistory.history.v1 import history_pb2
from libs.alerts import datetime_to_timestamp
from libs.db import Connection, Database, Dialect, Row, id_in
from libs.errors import InvalidInputError, NotFoundError
from services.history import records

MAX_LIST_LIMIT = 1000
DEFAULT_FLAP_MIN_STATE_CHANGES = 4
DEFAULT_FLAP_MIN_OCCURRENCES = 3

_INVALID_CURSOR = (
    "cursor is invalid: pass the next_cursor of the previous page, "
    "or an empty cursor for the first page"
)


def check_limit(limit: int) -> None:
    """Raise InvalidInputError unless `limit` is from 1 to MAX_LIST_LIMIT."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInputError(
            f"limit must be from 1 to {MAX_LIST_LIMIT}, not {limit}"
        )


def seconds_between(dialect: Dialect, start: str, end: str) -> str:
    """Return an SQL expression for the seconds from `start` to `end`.

    SQLite's julianday has sub-millisecond rounding errors, so its result is
    rounded to milliseconds.
    """
    if dialect == "postgresql":
        return f"EXTRACT(EPOCH FROM ({end} - {start}))::double precision"
    return f"ROUND((julianday({end}) - julianday({start})) * 86400.0, 3)"


def classification_select() -> str:
    return ", ".join(
        f"c.{column} AS c_{column}" for column in records.CLASSIFICATION_COLUMNS
    )


def as_datetime(value: Any) -> datetime | None:
    """Return a database time as an aware datetime; SQLite aggregates give text."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Return the `fraction` percentile of sorted values, as percentile_cont does."""
    if not ordered:
        return 0.0
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = math.ceil(position)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@dataclass(frozen=True)
class OccurrenceFilter:
    """The conditions of one page of occurrences; empty values filter nothing.

    `status` and `classified_severity` hold the stored texts ("firing",
    "noise").
    """

    alertname: str = ""
    status: str = ""
    fingerprint: str = ""
    namespace: str = ""
    severity_label: str = ""
    classified_severity: str = ""
    min_confidence: float = 0.0
    since: datetime | None = None
    until: datetime | None = None


def filter_from_request(
    request: history_pb2.ListOccurrencesRequest,
) -> OccurrenceFilter:
    """Check the filters of a ListOccurrences request, or raise InvalidInputError."""
    if not 0.0 <= request.min_confidence <= 1.0:
        raise InvalidInputError(
            f"min_confidence must be from 0 to 1, not {request.min_confidence}"
        )
    since = _optional_time(request, "since")
    until = _optional_time(request, "until")
    if since is not None and until is not None and since >= until:
        raise InvalidInputError("since must be before until")
    classified = ""
    if request.classified_severity:
        classified = records.enum_text(
            records.SEVERITY_TEXT, request.classified_severity, "classified_severity"
        )
    return OccurrenceFilter(
        alertname=request.alertname,
        status=records.status_text(request.status, "status") if request.status else "",
        fingerprint=request.fingerprint,
        namespace=request.namespace,
        severity_label=request.severity_label,
        classified_severity=classified,
        min_confidence=request.min_confidence,
        since=since,
        until=until,
    )


def _optional_time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    return records.timestamp_to_datetime(getattr(message, name), name)


def _required_time(message: Any, name: str) -> datetime:
    if not message.HasField(name):
        raise InvalidInputError(f"{name} is missing")
    return records.timestamp_to_datetime(getattr(message, name), name)


def window_from_request(message: Any) -> tuple[datetime, datetime]:
    """Return the (since, until) window of a report request, or raise."""
    since = _required_time(message, "since")
    until = _required_time(message, "until")
    if since >= until:
        raise InvalidInputError("since must be before until")
    return since, until


@dataclass
class _Conditions:
    """WHERE conditions with their parameters, numbered as they are added."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, template: str, *values: Any) -> None:
        """Add a condition whose `{}` placeholders take the next parameters."""
        numbers = [f"${len(self.params) + i + 1}" for i in range(len(values))]
        self.clauses.append(template.format(*numbers))
        self.params.extend(values)

    def where(self) -> str:
        return f" WHERE {' AND '.join(self.clauses)}" if self.clauses else ""


def _page_conditions(selected: OccurrenceFilter, cursor: str) -> _Conditions:
    conditions = _Conditions()
    until = selected.until
    if cursor:
        starts_at, last_id = records.decode_cursor(cursor)
        # PostgreSQL does not merge a row comparison and a plain bound on
        # starts_at into one start position: given both, a backward scan may
        # start at the cursor and skip every row down to `until`. Only the
        # tighter of the two upper bounds is kept.
        if until is None or starts_at < until:
            conditions.add("(starts_at, id) < ({}, {})", starts_at, last_id)
            until = None
    if selected.status:
        # A literal, not a parameter, so that PostgreSQL can use the partial
        # index on firing occurrences in a prepared statement's generic plan.
        conditions.clauses.append(
            "status = 'firing'"
            if selected.status == "firing"
            else "status = 'resolved'"
        )
    for column, value in (
        ("alertname", selected.alertname),
        ("fingerprint", selected.fingerprint),
        ("namespace", selected.namespace),
        ("severity", selected.severity_label),
        ("latest_severity", selected.classified_severity),
    ):
        if value:
            conditions.add(f"{column} = {{}}", value)
    if selected.min_confidence > 0:
        conditions.add("latest_confidence >= {}", selected.min_confidence)
    if selected.since is not None:
        conditions.add("starts_at >= {}", selected.since)
    if until is not None:
        conditions.add("starts_at < {}", until)
    return conditions


def page_sql(
    selected: OccurrenceFilter, cursor: str, rows: int
) -> tuple[str, list[Any]]:
    """Return the SELECT of up to `rows` occurrences after `cursor`, and its values."""
    conditions = _page_conditions(selected, cursor)
    sql = (
        f"SELECT * FROM occurrences{conditions.where()}"
        f" ORDER BY starts_at DESC, id DESC LIMIT ${len(conditions.params) + 1}"
    )
    return sql, [*conditions.params, rows]


async def list_occurrences(
    db: Database, selected: OccurrenceFilter, *, limit: int, cursor: str = ""
) -> tuple[list[history_pb2.Occurrence], str]:
    """Return one page of occurrences, newest start first, and the next cursor.

    Each occurrence carries its state changes, their classifications and its
    latest classification. The next cursor is empty on the last page.
    """
    check_limit(limit)
    sql, params = page_sql(selected, cursor, limit + 1)
    rows = await db.fetch(sql, *params)

    page = [records.occurrence_from_row(row) for row in rows[:limit]]
    await attach_state_changes(db, page)
    next_cursor = ""
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = records.encode_cursor(last["starts_at"], last["id"])
    return page, next_cursor


async def attach_state_changes(
    db: Database, occurrences: list[history_pb2.Occurrence]
) -> None:
    """Fill each occurrence's state changes and latest classification."""
    if not occurrences:
        return
    rows = await db.fetch(
        "SELECT s.id, s.occurrence_id, s.status, s.changed_at, "
        + classification_select()
        + " FROM state_changes s"
        " LEFT JOIN classifications c ON c.state_change_id = s.id"
        f" WHERE {id_in(db.dialect, 's.occurrence_id', 1)} ORDER BY s.id",
        [occurrence.id for occurrence in occurrences],
    )
    by_id = {occurrence.id: occurrence for occurrence in occurrences}
    for row in rows:
        by_id[row["occurrence_id"]].state_changes.append(
            records.state_change_from_row(row)
        )
    for occurrence in occurrences:
        set_latest_classification(occurrence)


def set_latest_classification(occurrence: history_pb2.Occurrence) -> None:
    """Copy the classification of the newest classified state change, if any."""
    for change in reversed(occurrence.state_changes):
        if change.HasField("classification"):
            occurrence.latest_classification.CopyFrom(change.classification)
            return


async def get_timeline(
    db: Database, fingerprint: str, *, limit: int, cursor: str = ""
) -> history_pb2.GetTimelineResponse:
    """Return one page of a fingerprint's occurrences with its totals.

    Raises NotFoundError when no occurrence of the fingerprint is stored.
    """
    if not fingerprint:
        raise InvalidInputError("fingerprint is missing")
    check_limit(limit)
    async with db.transaction() as conn:
        occurrences = int(
            await conn.fetchval(
                "SELECT count(*) FROM occurrences WHERE fingerprint = $1", fingerprint
            )
        )
        changes = int(
            await conn.fetchval(
                "SELECT count(*) FROM state_changes s"
                " JOIN occurrences o ON o.id = s.occurrence_id"
                " WHERE o.fingerprint = $1",
                fingerprint,
            )
        )
    if occurrences == 0:
        raise NotFoundError(f"no occurrence of fingerprint {fingerprint} is stored")
    page, next_cursor = await list_occurrences(
        db, OccurrenceFilter(fingerprint=fingerprint), limit=limit, cursor=cursor
    )
    return history_pb2.GetTimelineResponse(
        occurrences=page,
        next_cursor=next_cursor,
        total_occurrences=occurrences,
        total_state_changes=changes,
    )


async def top_alerts(
    db: Database, request: history_pb2.GetTopAlertsRequest
) -> list[history_pb2.TopAlert]:
    """Rank (alertname, namespace) pairs by occurrences or state changes."""
    since, until = window_from_request(request)
    check_limit(request.limit)
    async with db.transaction() as conn:
        await tune_for_aggregates(conn)
        occurrence_rows = await conn.fetch(
            "SELECT alertname, namespace, count(*) AS occurrences,"
            " count(DISTINCT fingerprint) AS fingerprints,"
            " sum(deliveries) AS deliveries"
            " FROM occurrences WHERE starts_at >= $1 AND starts_at < $2"
            " GROUP BY alertname, namespace",
            since,
            until,
        )
        change_rows = await conn.fetch(
            "SELECT o.alertname, o.namespace, count(*) AS state_changes"
            " FROM state_changes s JOIN occurrences o ON o.id = s.occurrence_id"
            " WHERE s.changed_at >= $1 AND s.changed_at < $2"
            " GROUP BY o.alertname, o.namespace",
            since,
            until,
        )

    alerts: dict[tuple[str, str], history_pb2.TopAlert] = {}
    for row in occurrence_rows:
        alerts[(row["alertname"], row["namespace"])] = history_pb2.TopAlert(
            alertname=row["alertname"],
            namespace=row["namespace"],
            occurrences=row["occurrences"],
            fingerprints=row["fingerprints"],
            deliveries=int(row["deliveries"]),
        )
    for row in change_rows:
        key = (row["alertname"], row["namespace"])
        entry = alerts.setdefault(
            key, history_pb2.TopAlert(alertname=key[0], namespace=key[1])
        )
        entry.state_changes = row["state_changes"]

    by_changes = request.order_by == history_pb2.TOP_ALERTS_ORDER_STATE_CHANGES
    ranked = sorted(
        alerts.values(),
        key=lambda a: (
            -(a.state_changes if by_changes else a.occurrences),
            -(a.occurrences if by_changes else a.state_changes),
            a.alertname,
            a.namespace,
        ),
    )
    return ranked[: request.limit]


async def flapping_alerts(
    db: Database, request: history_pb2.GetFlappingAlertsRequest
) -> list[history_pb2.FlappingAlert]:
    """List fingerprints with at least min_state_changes state changes in a window."""
    since, until = window_from_request(request)
    check_limit(request.limit)
    if request.min_state_changes < 0:
        raise InvalidInputError(
            f"min_state_changes must be 0 or more, not {request.min_state_changes}"
        )
    threshold = request.min_state_changes or DEFAULT_FLAP_MIN_STATE_CHANGES
    async with db.transaction() as conn:
        await tune_for_aggregates(conn)
        rows = await conn.fetch(
            "SELECT o.fingerprint, min(o.alertname) AS alertname,"
            " min(o.namespace) AS namespace, count(*) AS state_changes,"
            " count(DISTINCT s.occurrence_id) AS occurrences,"
            " min(s.changed_at) AS first_change_at, max(s.changed_at) AS last_change_at"
            " FROM state_changes s JOIN occurrences o ON o.id = s.occurrence_id"
            " WHERE s.changed_at >= $1 AND s.changed_at < $2"
            " GROUP BY o.fingerprint HAVING count(*) >= $3"
            " ORDER BY count(*) DESC, o.fingerprint LIMIT $4",
            since,
            until,
            threshold,
            request.limit,
        )
    return [_flapping_alert(row) for row in rows]


def _flapping_alert(row: Row) -> history_pb2.FlappingAlert:
    alert = history_pb2.FlappingAlert(
        fingerprint=row["fingerprint"],
        alertname=row["alertname"],
        namespace=row["namespace"],
        state_changes=row["state_changes"],
        occurrences=row["occurrences"],
    )
    first = as_datetime(row["first_change_at"])
    last = as_datetime(row["last_change_at"])
    if first is not None and last is not None:
        alert.first_change_at.CopyFrom(datetime_to_timestamp(first))
        alert.last_change_at.CopyFrom(datetime_to_timestamp(last))
    return alert


@dataclass(frozen=True)
class Spread:
    """Count, p50, p90 and max of one group's values."""

    count: int
    p50: float
    p90: float
    max: float


async def group_spreads(
    conn: Connection, keys: Sequence[str], values_sql: str, params: Sequence[Any]
) -> dict[tuple[str, ...], Spread]:
    """Return the Spread of each group of `values_sql`.

    `values_sql` selects the `keys` columns and a `value` column.
    """
    key_list = ", ".join(keys)
    if conn.dialect == "postgresql":
        rows = await conn.fetch(
            f"SELECT {key_list}, count(*) AS n,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY value) AS p50,"
            " percentile_cont(0.9) WITHIN GROUP (ORDER BY value) AS p90,"
            f" max(value) AS top FROM ({values_sql}) v GROUP BY {key_list}",
            *params,
        )
        return {
            tuple(row[key] for key in keys): Spread(
                row["n"], float(row["p50"]), float(row["p90"]), float(row["top"])
            )
            for row in rows
        }

    rows = await conn.fetch(
        f"SELECT {key_list}, value FROM ({values_sql}) v ORDER BY {key_list}, value",
        *params,
    )
    grouped: dict[tuple[str, ...], list[float]] = {}
    for row in rows:
        grouped.setdefault(tuple(row[key] for key in keys), []).append(
            float(row["value"])
        )
    return {
        key: Spread(
            len(values), percentile(values, 0.5), percentile(values, 0.9), values[-1]
        )
        for key, values in grouped.items()
    }


async def time_to_resolve(
    db: Database, request: history_pb2.GetTimeToResolveRequest
) -> list[history_pb2.TimeToResolve]:
    """Summarise per alertname how long the window's occurrences took to resolve."""
    since, until = window_from_request(request)
    check_limit(request.limit)
    params: list[Any] = [since, until]
    alertname = ""
    if request.alertname:
        params.append(request.alertname)
        alertname = " AND alertname = $3"
    duration = seconds_between(db.dialect, "starts_at", "ends_at")
    async with db.transaction() as conn:
        await tune_for_aggregates(conn)
        spreads = await group_spreads(
            conn,
            ["alertname"],
            f"SELECT alertname, {duration} AS value FROM occurrences"
            " WHERE status = 'resolved' AND starts_at >= $1 AND starts_at < $2"
            f"{alertname}",
            params,
        )
    ranked = sorted(spreads.items(), key=lambda item: (-item[1].count, item[0]))
    return [
        history_pb2.TimeToResolve(
            alertname=key[0],
            resolved=spread.count,
            p50_seconds=spread.p50,
            p90_seconds=spread.p90,
            max_seconds=spread.max,
        )
        for key, spread in ranked[: request.limit]
    ]


def encode_group_cursor(alertname: str, namespace: str) -> str:
    """Return an opaque cursor naming the last group of a statistics page."""
    key = json.dumps(["group", alertname, namespace])
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_group_cursor(cursor: str) -> tuple[str, str]:
    """Return the (alertname, namespace) a statistics cursor names, or raise."""
    try:
        tag, alertname, namespace = json.loads(base64.urlsafe_b64decode(cursor))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInputError(_INVALID_CURSOR) from exc
    if tag != "group" or not isinstance(alertname, str):
        raise InvalidInputError(_INVALID_CURSOR)
    if not isinstance(namespace, str):
        raise InvalidInputError(_INVALID_CURSOR)
    return alertname, namespace


@dataclass(frozen=True)
class _StatisticsQuery:
    since: datetime
    until: datetime
    short_lived_seconds: float
    long_firing_before: datetime
    flap_min_occurrences: int
    limit: int
    after: tuple[str, str] | None


def _statistics_query(
    request: history_pb2.GetAlertStatisticsRequest,
) -> _StatisticsQuery:
    since, until = window_from_request(request)
    check_limit(request.limit)
    for name in ("short_lived_seconds", "long_firing_seconds", "flap_min_occurrences"):
        if getattr(request, name) < 0:
            raise InvalidInputError(
                f"{name} must be 0 or more, not {getattr(request, name)}"
            )
    try:
        long_firing_before = until - timedelta(seconds=request.long_firing_seconds)
    except OverflowError:
        raise InvalidInputError("long_firing_seconds is out of range") from None
    return _StatisticsQuery(
        since=since,
        until=until,
        short_lived_seconds=float(request.short_lived_seconds),
        long_firing_before=long_firing_before,
        flap_min_occurrences=request.flap_min_occurrences
        or DEFAULT_FLAP_MIN_OCCURRENCES,
        limit=request.limit,
        after=decode_group_cursor(request.cursor) if request.cursor else None,
    )


def statistics_sql(dialect: Dialect, after: bool) -> str:
    """Aggregate the window's occurrences per (alertname, namespace).

    Parameters: $1 since, $2 until, $3 long-firing cutoff, $4 short-lived
    seconds, $5 flap threshold, $6 limit, and with `after` $7 and $8 the
    cursor's group. The rows come from two disjoint index ranges: the
    occurrences that started in the window, and the older ones still firing
    since before the cutoff. They are aggregated once per fingerprint, then
    per group.
    """
    duration = seconds_between(dialect, "starts_at", "ends_at")
    cursor = " AND (alertname, namespace) > ($7, $8)" if after else ""
    columns = (
        "alertname, namespace, fingerprint, status, deliveries, latest_severity,"
        " latest_confidence, starts_at, ends_at"
    )
    return (
        f"WITH w AS (SELECT {columns}, 1 AS in_window FROM occurrences"
        f" WHERE starts_at >= $1 AND starts_at < $2{cursor}"
        f" UNION ALL SELECT {columns}, 0 AS in_window FROM occurrences"
        f" WHERE status = 'firing' AND starts_at < $1 AND starts_at <= $3{cursor}),"
        " per_fingerprint AS (SELECT alertname, namespace, fingerprint,"
        " sum(in_window) AS n,"
        " sum(CASE WHEN in_window = 1 AND status = 'resolved' THEN 1 ELSE 0 END)"
        " AS resolved,"
        " sum(CASE WHEN in_window = 1 AND status = 'resolved'"
        f" AND {duration} < $4 THEN 1 ELSE 0 END) AS short_lived,"
        " sum(CASE WHEN status = 'firing' AND starts_at <= $3 THEN 1 ELSE 0 END)"
        " AS long_firing,"
        " sum(in_window * deliveries) AS deliveries,"
        " sum(CASE WHEN in_window = 1 AND latest_severity IS NOT NULL"
        " THEN 1 ELSE 0 END) AS classified,"
        " sum(CASE WHEN in_window = 1 AND latest_severity = 'noise'"
        " THEN 1 ELSE 0 END) AS noise,"
        " sum(CASE WHEN in_window = 1 THEN latest_confidence END)"
        " AS confidence_sum,"
        " min(CASE WHEN in_window = 1 THEN starts_at END) AS first_starts_at,"
        " max(CASE WHEN in_window = 1 THEN starts_at END) AS last_starts_at"
        " FROM w GROUP BY alertname, namespace, fingerprint)"
        " SELECT alertname, namespace, sum(n) AS occurrences,"
        " sum(CASE WHEN n > 0 THEN 1 ELSE 0 END) AS distinct_fps,"
        " max(n) AS max_per_fp,"
        " sum(CASE WHEN n >= $5 THEN 1 ELSE 0 END) AS flapping,"
        " sum(resolved) AS resolved, sum(short_lived) AS short_lived,"
        " sum(long_firing) AS long_firing, sum(deliveries) AS deliveries,"
        " sum(classified) AS classified, sum(noise) AS noise,"
        " sum(confidence_sum) AS confidence_sum,"
        " min(first_starts_at) AS first_starts_at,"
        " max(last_starts_at) AS last_starts_at"
        " FROM per_fingerprint GROUP BY alertname, namespace"
        " ORDER BY alertname, namespace LIMIT $6"
    )


async def tune_for_aggregates(conn: Connection) -> None:
    """Set PostgreSQL's memory and JIT for one aggregating transaction.

    At ten million occurrences a week of statistics sorted and hashed on disk
    with the default 4 MB of work_mem, and JIT compilation took over a
    second of an eight-second query (scripts/bench_history.py, 2 cores).
    """
    if conn.dialect == "postgresql":
        await conn.execute("SET LOCAL work_mem = '64MB'")
        await conn.execute("SET LOCAL jit = off")


async def alert_statistics(
    db: Database, request: history_pb2.GetAlertStatisticsRequest
) -> history_pb2.GetAlertStatisticsResponse:
    """Aggregate one window per (alertname, namespace), one page of groups."""
    query = _statistics_query(request)
    params: list[Any] = [
        query.since,
        query.until,
        query.long_firing_before,
        query.short_lived_seconds,
        query.flap_min_occurrences,
        query.limit + 1,
    ]
    if query.after is not None:
        params.extend(query.after)
    async with db.transaction() as conn:
        await tune_for_aggregates(conn)
        rows = await conn.fetch(
            statistics_sql(db.dialect, query.after is not None), *params
        )
        page = rows[: query.limit]
        durations, redeliveries = await _page_spreads(conn, query, page)

    response = history_pb2.GetAlertStatisticsResponse()
    for row in page:
        key = (row["alertname"], row["namespace"])
        response.statistics.append(
            _statistics(row, durations.get(key), redeliveries.get(key))
        )
    if len(rows) > query.limit:
        last = page[-1]
        response.next_cursor = encode_group_cursor(last["alertname"], last["namespace"])
    return response


async def _page_spreads(
    conn: Connection, query: _StatisticsQuery, page: Sequence[Row]
) -> tuple[dict[tuple[str, ...], Spread], dict[tuple[str, ...], Spread]]:
    """Return the duration and redelivery spreads of the page's groups."""
    if not page:
        return {}, {}
    first = (page[0]["alertname"], page[0]["namespace"])
    last = (page[-1]["alertname"], page[-1]["namespace"])
    in_page = (
        " AND (alertname, namespace) >= ($3, $4) AND (alertname, namespace) <= ($5, $6)"
    )
    params = [query.since, query.until, *first, *last]
    keys = ["alertname", "namespace"]
    duration = seconds_between(conn.dialect, "starts_at", "ends_at")
    durations = await group_spreads(
        conn,
        keys,
        f"SELECT alertname, namespace, {duration} AS value FROM occurrences"
        " WHERE status = 'resolved' AND starts_at >= $1 AND starts_at < $2" + in_page,
        params,
    )
    seen = seconds_between(conn.dialect, "first_seen_at", "last_seen_at")
    redeliveries = await group_spreads(
        conn,
        keys,
        f"SELECT alertname, namespace, {seen} / (deliveries - 1) AS value"
        " FROM occurrences"
        " WHERE deliveries >= 3 AND starts_at >= $1 AND starts_at < $2" + in_page,
        params,
    )
    return durations, redeliveries


def _statistics(
    row: Row, durations: Spread | None, redeliveries: Spread | None
) -> history_pb2.AlertStatistics:
    statistics = history_pb2.AlertStatistics(
        alertname=row["alertname"],
        namespace=row["namespace"],
        occurrences=int(row["occurrences"]),
        fingerprints=int(row["distinct_fps"]),
        resolved=int(row["resolved"]),
        short_lived=int(row["short_lived"]),
        long_firing=int(row["long_firing"]),
        deliveries=int(row["deliveries"]),
        max_occurrences_per_fingerprint=int(row["max_per_fp"]),
        flapping_fingerprints=int(row["flapping"]),
        classified=int(row["classified"]),
        noise=int(row["noise"]),
    )
    if statistics.classified:
        statistics.mean_confidence = float(row["confidence_sum"] or 0.0) / (
            statistics.classified
        )
    if durations is not None:
        statistics.duration_p50_seconds = durations.p50
        statistics.duration_p90_seconds = durations.p90
        statistics.duration_max_seconds = durations.max
    if redeliveries is not None:
        statistics.redelivery_p50_seconds = redeliveries.p50
    for name in ("first_starts_at", "last_starts_at"):
        moment = as_datetime(row[name])
        if moment is not None:
            getattr(statistics, name).CopyFrom(datetime_to_timestamp(moment))
    return statistics
