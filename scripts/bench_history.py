"""Benchmark the history queries on a generated PostgreSQL database.

    .venv/bin/python scripts/bench_history.py --size medium [--keep]

Creates the database (`ah_bench` by default) on the server of
`--admin-url`, applies the history migrations, fills it with generated
history in bulk (INSERT ... SELECT over generate_series, with the indexes
built after the fill), then times each query through the same code the
service runs: p50 and p99 over `--runs` runs, each page at a different
keyset cursor. It prints every plan with EXPLAIN (ANALYZE, BUFFERS) and the
disk use of every table, as Markdown on stdout. The database is dropped at
the end unless `--keep` is given; a kept database is reused by
`--reuse` without filling it again.

Generated data, for N occurrences spread evenly over 90 days: N/5
fingerprints (about five occurrences each), 200 alertnames, 50
namespaces, severity labels critical 10 %, warning 40 %, info 50 %;
about 1 % of occurrences still firing, the rest resolved after 1 minute to
2 hours; 80 % classified, a quarter of them as noise; one notification and
one completed work item per ten occurrences, two state changes per
resolved occurrence.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerthistory.history.v1 import history_pb2  # noqa: E402
from libs.alerts import datetime_to_timestamp  # noqa: E402
from libs.db import Database, migrate  # noqa: E402
from services.history import queries, records  # noqa: E402
from services.history.migrations import COMPONENT, MIGRATIONS  # noqa: E402

SIZES = {
    "small": 10_000,
    "medium": 100_000,
    "large": 1_000_000,
    "xlarge": 10_000_000,
}
SPAN = timedelta(days=90)
# Every generated time is relative to this instant, so runs are comparable.
END = datetime(2025, 1, 1, tzinfo=UTC)
START = END - SPAN
PAGE = 100
TABLES = (
    "occurrences",
    "state_changes",
    "classifications",
    "notifications",
    "work_items",
)


def _occurrences_sql() -> str:
    """INSERT the generated occurrences; $1 is N, $2 the start of the span."""
    return """
    INSERT INTO occurrences (id, fingerprint, alertname, namespace, severity,
        status, labels, annotations, starts_at, ends_at, generator_url,
        first_seen_at, last_seen_at, group_key, receiver, truncated_alerts,
        external_url, deliveries, latest_change_id, latest_severity,
        latest_confidence)
    SELECT i, lpad(to_hex(fp), 16, '0'), alertname, namespace, severity, status,
        jsonb_build_object('alertname', alertname, 'namespace', namespace,
            'severity', severity, 'instance', 'host-' || (fp % 1000),
            'job', 'node'),
        jsonb_build_object('summary', 'Generated alert ' || alertname),
        starts_at, ends_at,
        'http://prometheus.example:9090/graph?g0.expr=up',
        starts_at + interval '5 seconds',
        COALESCE(ends_at, starts_at + interval '5 seconds'
            + (i % 5) * interval '4 hours'),
        '{}:{alertname="' || alertname || '"}', 'alert-history', 0,
        'http://alertmanager.example:9093', 1 + i % 5,
        CASE WHEN i % 5 <> 0 THEN 2 * i - 1 END,
        CASE WHEN i % 5 <> 0 THEN
            (ARRAY['critical', 'warning', 'info', 'noise'])[1 + (i / 7) % 4]
        END,
        CASE WHEN i % 5 <> 0 THEN 0.5 + (i % 50) / 100.0 END
    FROM (
        SELECT i, fp,
            'Alert' || lpad((fp % 200)::text, 3, '0') AS alertname,
            'ns-' || lpad(((fp / 200) % 50)::text, 2, '0') AS namespace,
            CASE WHEN fp % 10 = 0 THEN 'critical'
                 WHEN fp % 10 < 5 THEN 'warning' ELSE 'info' END AS severity,
            CASE WHEN i % 97 = 0 THEN 'firing' ELSE 'resolved' END AS status,
            $2::timestamptz + (i::double precision / $1) * interval '90 days'
                AS starts_at,
            CASE WHEN i % 97 = 0 THEN NULL
                 ELSE $2::timestamptz + (i::double precision / $1)
                     * interval '90 days'
                     + (60 + (i * 7919) % 7140) * interval '1 second'
            END AS ends_at
        FROM (SELECT i, i % greatest($1 / 5, 1) AS fp
              FROM generate_series(1::bigint, $1::bigint) AS i) AS numbered
    ) AS generated
    """


_FILL_STEPS = (
    (
        "notifications",
        """
        INSERT INTO notifications (id, version, receiver, group_key,
            external_url, status, notification_reason, truncated_alerts,
            group_labels, common_labels, common_annotations, received_at)
        SELECT j, '4', 'alert-history', '{}:{}',
            'http://alertmanager.example:9093', 'firing', '', 0, '{}', '{}',
            '{}', $2::timestamptz + ((10 * j)::double precision / $1)
                * interval '90 days'
        FROM generate_series(1, greatest($1 / 10, 1)) AS j
        """,
    ),
    ("occurrences", _occurrences_sql()),
    (
        "state_changes (firing)",
        """
        INSERT INTO state_changes (id, occurrence_id, notification_id, status,
            changed_at, recorded_at)
        SELECT 2 * id - 1, id, least(1 + (id - 1) / 10, greatest($1 / 10, 1)),
            'firing', starts_at, first_seen_at
        FROM occurrences WHERE $2::timestamptz IS NOT NULL
        """,
    ),
    (
        "state_changes (resolved)",
        """
        INSERT INTO state_changes (id, occurrence_id, notification_id, status,
            changed_at, recorded_at)
        SELECT 2 * id, id, least(1 + (id - 1) / 10, greatest($1 / 10, 1)),
            'resolved', ends_at, ends_at
        FROM occurrences WHERE status = 'resolved'
            AND $2::timestamptz IS NOT NULL
        """,
    ),
    (
        "classifications",
        """
        INSERT INTO classifications (state_change_id, severity, confidence,
            reasoning, recommendations, processing_time_nanos, source, model,
            fallback_reason, model_severity, flags, refusal, classified_at,
            recorded_at)
        SELECT latest_change_id, latest_severity, latest_confidence,
            'Generated verdict.', '[]', 1000000, 'model', 'bench-model', '',
            latest_severity, '[]', '', starts_at, starts_at
        FROM occurrences WHERE latest_change_id IS NOT NULL
            AND $1::bigint > 0 AND $2::timestamptz IS NOT NULL
        """,
    ),
    (
        "work_items",
        """
        INSERT INTO work_items (notification_id, state_change_ids,
            trace_context, enqueued_at, attempts, completed_at)
        SELECT id, '[]', '{}', received_at, 1, received_at + interval '1 second'
        FROM notifications WHERE $1::bigint > 0 AND $2::timestamptz IS NOT NULL
        """,
    ),
)


async def _drop_secondary_indexes(conn: asyncpg.Connection) -> list[str]:
    """Drop the indexes that back no constraint; return their definitions."""
    rows = await conn.fetch(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i"
        " WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[])"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c"
        " WHERE c.conname = i.indexname)",
        list(TABLES),
    )
    for row in rows:
        await conn.execute(f'DROP INDEX "{row["indexname"]}"')
    return [row["indexdef"] for row in rows]


async def fill(url: str, count: int) -> float:
    """Fill an empty, migrated database with `count` occurrences; return seconds."""
    started = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET maintenance_work_mem = '512MB'")
        # Foreign keys are not checked row by row during the fill: the
        # generated rows satisfy them by construction.
        await conn.execute("SET session_replication_role = replica")
        definitions = await _drop_secondary_indexes(conn)
        for name, sql in _FILL_STEPS:
            step = time.perf_counter()
            await conn.execute(sql, count, START)
            print(
                f"filled {name} in {time.perf_counter() - step:.1f} s", file=sys.stderr
            )
        step = time.perf_counter()
        for definition in definitions:
            await conn.execute(definition)
        print(f"built indexes in {time.perf_counter() - step:.1f} s", file=sys.stderr)
        for table in TABLES:
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT coalesce(max(id), 1) FROM {table}))"
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


@dataclass
class Case:
    """One timed query: a name, the call, and the SQL to EXPLAIN."""

    name: str
    run: Callable[[int], Awaitable[Any]]
    explain: Callable[[], tuple[str, list[Any]]] | None
    runs: int


def _cursor_at(fraction: float) -> str:
    """A keyset cursor at `fraction` of the span, counted back from the newest."""
    moment = END - SPAN * fraction
    return records.encode_cursor(moment, 2**62)


CURSOR_FRACTIONS = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95)


def _page_case(
    db: Database, name: str, selected: queries.OccurrenceFilter, runs: int
) -> Case:
    async def run(index: int) -> Any:
        fraction = CURSOR_FRACTIONS[index % len(CURSOR_FRACTIONS)]
        cursor = _cursor_at(fraction) if fraction else ""
        return await queries.list_occurrences(db, selected, limit=PAGE, cursor=cursor)

    def explain() -> tuple[str, list[Any]]:
        return queries.page_sql(selected, _cursor_at(0.5), PAGE + 1)

    return Case(name, run, explain, runs)


def _window(hours: float) -> tuple[Any, Any]:
    since = datetime_to_timestamp(END - timedelta(hours=hours))
    return since, datetime_to_timestamp(END)


def _cases(db: Database, runs: int, count: int) -> list[Case]:
    day_start = END - timedelta(days=30)
    window = queries.OccurrenceFilter(
        since=day_start, until=day_start + timedelta(days=1)
    )
    pages = [
        ("page, no filter", queries.OccurrenceFilter()),
        ("alertname", queries.OccurrenceFilter(alertname="Alert042")),
        ("namespace", queries.OccurrenceFilter(namespace="ns-07")),
        (
            "severity label critical",
            queries.OccurrenceFilter(severity_label="critical"),
        ),
        ("status firing", queries.OccurrenceFilter(status="firing")),
        (
            "enriched: classified noise",
            queries.OccurrenceFilter(classified_severity="noise"),
        ),
        ("min_confidence 0.9", queries.OccurrenceFilter(min_confidence=0.9)),
        ("one-day window", window),
        (
            "alertname + resolved + 30 days",
            queries.OccurrenceFilter(
                alertname="Alert042",
                status="resolved",
                since=END - timedelta(days=30),
                until=END,
            ),
        ),
        (
            "namespace + classified warning + min_confidence 0.8",
            queries.OccurrenceFilter(
                namespace="ns-07", classified_severity="warning", min_confidence=0.8
            ),
        ),
    ]
    cases = [_page_case(db, name, selected, runs) for name, selected in pages]
    cases.append(_timeline_case(db, runs, count))
    cases.extend(_report_cases(db, max(5, runs // 10)))
    return cases


def _timeline_case(db: Database, runs: int, count: int) -> Case:
    fingerprints = max(count // 5, 1)

    async def run(index: int) -> Any:
        fingerprint = f"{(index * 7919) % fingerprints:016x}"
        return await queries.get_timeline(db, fingerprint, limit=PAGE)

    def explain() -> tuple[str, list[Any]]:
        selected = queries.OccurrenceFilter(fingerprint=f"{1:016x}")
        return queries.page_sql(selected, "", PAGE + 1)

    return Case("timeline of one fingerprint", run, explain, runs)


def _report_cases(db: Database, runs: int) -> list[Case]:
    since, until = _window(24)
    week_since, _ = _window(24 * 7)
    top = history_pb2.GetTopAlertsRequest(since=since, until=until, limit=20)
    top_changes = history_pb2.GetTopAlertsRequest(
        since=since,
        until=until,
        limit=20,
        order_by=history_pb2.TOP_ALERTS_ORDER_STATE_CHANGES,
    )
    flapping = history_pb2.GetFlappingAlertsRequest(since=since, until=until, limit=50)
    resolve = history_pb2.GetTimeToResolveRequest(since=since, until=until, limit=50)
    stats = history_pb2.GetAlertStatisticsRequest(
        since=week_since,
        until=until,
        short_lived_seconds=300,
        long_firing_seconds=86400,
        flap_min_occurrences=6,
        limit=1000,
    )

    def statistics_explain() -> tuple[str, list[Any]]:
        return queries.statistics_sql("postgresql", False), [
            END - timedelta(days=7),
            END,
            END - timedelta(days=1),
            300.0,
            6,
            1001,
        ]

    return [
        Case(
            "report: top alerts by occurrences, 24 h",
            lambda _: queries.top_alerts(db, top),
            None,
            runs,
        ),
        Case(
            "report: top alerts by state changes, 24 h",
            lambda _: queries.top_alerts(db, top_changes),
            None,
            runs,
        ),
        Case(
            "report: flapping, 24 h",
            lambda _: queries.flapping_alerts(db, flapping),
            None,
            runs,
        ),
        Case(
            "report: time to resolve, 24 h",
            lambda _: queries.time_to_resolve(db, resolve),
            None,
            runs,
        ),
        Case(
            "statistics for the recommender, 7 days",
            lambda _: queries.alert_statistics(db, stats),
            statistics_explain,
            runs,
        ),
    ]


def _milliseconds(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return queries.percentile(ordered, fraction) * 1000


async def time_cases(
    db: Database, cases: list[Case]
) -> list[tuple[str, int, float, float]]:
    """Run each case (one warm-up run first) and return p50 and p99 in ms."""
    results = []
    for case in cases:
        await case.run(0)
        durations = []
        for index in range(case.runs):
            started = time.perf_counter()
            await case.run(index)
            durations.append(time.perf_counter() - started)
        results.append(
            (
                case.name,
                case.runs,
                _milliseconds(durations, 0.5),
                _milliseconds(durations, 0.99),
            )
        )
        print(f"timed {case.name}", file=sys.stderr)
    return results


async def explain_cases(url: str, cases: list[Case]) -> list[tuple[str, str]]:
    plans = []
    conn = await asyncpg.connect(url)
    try:
        for case in cases:
            if case.explain is None:
                continue
            sql, params = case.explain()
            async with conn.transaction():
                # The settings queries.tune_for_aggregates makes for reports.
                await conn.execute("SET LOCAL work_mem = '64MB'")
                await conn.execute("SET LOCAL jit = off")
                rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)
            plans.append((case.name, "\n".join(row[0] for row in rows)))
    finally:
        await conn.close()
    return plans


async def disk_use(url: str) -> list[tuple[str, int, int, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = [
            (
                table,
                int(await conn.fetchval(f"SELECT count(*) FROM {table}")),
                int(await conn.fetchval("SELECT pg_table_size($1::regclass)", table)),
                int(await conn.fetchval("SELECT pg_indexes_size($1::regclass)", table)),
            )
            for table in TABLES
        ]
        total = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
        rows.append(("database", 0, total, 0))
        return rows
    finally:
        await conn.close()


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:,.1f}"


def report(
    size: str,
    count: int,
    fill_seconds: float | None,
    timings: list[tuple[str, int, float, float]],
    plans: list[tuple[str, str]],
    disk: list[tuple[str, int, int, int]],
) -> str:
    lines = [f"## {size}: {count:,} occurrences", ""]
    if fill_seconds is not None:
        lines += [f"Fill, indexes and VACUUM ANALYZE: {fill_seconds:.0f} s", ""]
    lines += ["| query | runs | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {runs} | {p50:.2f} | {p99:.2f} |"
        for name, runs, p50, p99 in timings
    ]
    lines += ["", "| table | rows | table MiB | indexes MiB |", "|---|---|---|---|"]
    for table, rows, table_bytes, index_bytes in disk:
        if table == "database":
            lines.append(f"| whole database | | {_mib(table_bytes)} | |")
        else:
            lines.append(
                f"| {table} | {rows:,} | {_mib(table_bytes)} | {_mib(index_bytes)} |"
            )
    for name, plan in plans:
        lines += ["", f"### Plan: {name}", "", "```", plan, "```"]
    return "\n".join(lines)


def _url(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


async def main_async(args: argparse.Namespace) -> None:
    count = SIZES[args.size]
    url = _url(args.admin_url, args.database)
    admin = await asyncpg.connect(args.admin_url)
    try:
        exists = await admin.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", args.database
        )
        if exists and not args.reuse:
            await admin.execute(f'DROP DATABASE "{args.database}" WITH (FORCE)')
        if not exists or not args.reuse:
            await admin.execute(f'CREATE DATABASE "{args.database}"')
    finally:
        await admin.close()

    fill_seconds = None
    db = Database(url, pool_size=2)
    await db.connect()
    try:
        if not (exists and args.reuse):
            await migrate(db, COMPONENT, MIGRATIONS)
            fill_seconds = await fill(url, count)
        cases = _cases(db, args.runs, count)
        timings = await time_cases(db, cases)
        plans = await explain_cases(url, cases)
        disk = await disk_use(url)
    finally:
        await db.close()
        if not args.keep:
            admin = await asyncpg.connect(args.admin_url)
            try:
                await admin.execute(
                    f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'
                )
            finally:
                await admin.close()
    print(report(args.size, count, fill_seconds, timings, plans, disk))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=sorted(SIZES, key=SIZES.__getitem__), default="small"
    )
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="URL of a database on the server, used to create and drop the "
        "benchmark database.",
    )
    parser.add_argument(
        "--database", default="ah_bench", help="Name of the benchmark database."
    )
    parser.add_argument(
        "--runs", type=int, default=200, help="Timed runs per page query."
    )
    parser.add_argument(
        "--keep", action="store_true", help="Keep the database afterwards."
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="Time a database kept by an earlier --keep run instead of "
        "filling it again.",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
