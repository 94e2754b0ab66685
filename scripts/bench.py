"""Drive a running or freshly started mesh with Alertmanager-shaped load.

    .venv/bin/python scripts/bench.py --start --duration 30 --group-size 3

With --start it starts every service as a process on PostgreSQL and Redis
(DATABASE_URL and REDIS_URL, or a new database on the local server), with a
local publishing target and a fake model server, and stops them afterwards.
Without it, it targets the gateway at --url, and only the response figures
are measured.

Webhook bodies are built from distinct rules of tests/fixtures/rules.jsonl,
in groups of --group-size alerts: each group fires, is re-sent as
Alertmanager does at every group_interval (--repeats), then resolves. Each
run prints alerts per second accepted, answer latency p50 and p99,
end-to-end latency from webhook to the local target (p50, p99), model calls
per alert, and CPU seconds per 1,000 alerts for each service, PostgreSQL and
this process ("bench": the load generator and the local target).

--ingest-only posts to /webhook, which stores each alert durably and answers
without classifying or publishing, to measure ingest alone.

--burst N posts N new firing alerts as fast as --concurrency allows and
reports the seconds until the target received every one and how many never
arrived. --replicas 2 starts two processes of every service on the same
database and Redis, splits the webhooks across both gateways, and counts
alert states that were stored, classified, recorded for delivery or received
by the target more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.alerts import compute_fingerprint  # noqa: E402
from tests.fakes.llm import FakeLLM  # noqa: E402
from tests.harness import Mesh, create_database, drop_database, free_port  # noqa: E402

RULES = ROOT / "tests" / "fixtures" / "rules.jsonl"
ADMIN_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Groups whose notifications the stream interleaves (see webhook_stream).
WAVE_GROUPS = 512


def load_rules() -> list[dict[str, Any]]:
    with RULES.open() as lines:
        return [json.loads(line) for line in lines]


def alert_from_rule(rule: dict[str, Any], run_id: str, serial: int) -> dict[str, Any]:
    """Build an Alertmanager alert from one corpus rule, unique to this run."""
    labels = {
        "alertname": rule["alertname"],
        **{k: str(v) for k, v in (rule.get("labels_other") or {}).items()},
        "instance": f"bench-{run_id}-{serial}:9100",
        "namespace": "bench",
    }
    if rule.get("severity"):
        labels["severity"] = rule["severity"]
    annotations = {
        "summary": str(rule.get("summary") or rule["alertname"])[:300],
        "description": str(rule.get("description") or "")[:1000],
    }
    return {
        "status": "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": "2024-05-01T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph",
        "fingerprint": compute_fingerprint(labels),
    }


def notification(alerts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    name = alerts[0]["labels"]["alertname"]
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "bench",
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": alerts,
    }


def webhook_stream(
    rules: list[dict[str, Any]], group_size: int, repeats: int, run_id: str
) -> Iterator[tuple[dict[str, Any], bool]]:
    """Yield (body, carries_new_state) in an order Alertmanager could send.

    Groups go in waves of WAVE_GROUPS: every group of a wave fires, then
    each is re-sent `repeats` times, then each resolves. Alertmanager sends
    a group's notifications one group_interval apart, so two of them are
    never in flight at once. The waves keep them that far apart in the
    stream too.
    """
    serial = 0
    shuffled = list(rules)
    random.Random(7).shuffle(shuffled)
    while True:
        groups = []
        for _ in range(WAVE_GROUPS):
            group = []
            for _ in range(group_size):
                rule = shuffled[serial % len(shuffled)]
                group.append(alert_from_rule(rule, run_id, serial))
                serial += 1
            groups.append(group)
        for group in groups:
            yield notification(group, "firing"), True
        for _ in range(repeats):
            for group in groups:
                yield notification(group, "firing"), False
        for group in groups:
            resolved = [
                {**a, "status": "resolved", "endsAt": "2024-05-01T10:05:00Z"}
                for a in group
            ]
            yield notification(resolved, "resolved"), True


def burst_stream(
    rules: list[dict[str, Any]], group_size: int, alerts: int, run_id: str
) -> Iterator[tuple[dict[str, Any], bool]]:
    """Yield firing webhooks of new groups until `alerts` alerts are sent."""
    shuffled = list(rules)
    random.Random(7).shuffle(shuffled)
    for start in range(0, alerts, group_size):
        group = [
            alert_from_rule(shuffled[serial % len(shuffled)], run_id, serial)
            for serial in range(start, min(start + group_size, alerts))
        ]
        yield notification(group, "firing"), True


@dataclass
class Results:
    answers: list[float] = field(default_factory=list)
    alerts_accepted: int = 0
    new_state_changes: int = 0
    failures: dict[int, int] = field(default_factory=dict)
    sent_at: dict[tuple[str, str], float] = field(default_factory=dict)
    received_at: dict[tuple[str, str], float] = field(default_factory=dict)
    # Requests the target received per (fingerprint, status).
    received_count: Counter[tuple[str, str]] = field(default_factory=Counter)


class LocalTarget:
    """A webhook target that records when each alert state arrives."""

    def __init__(self, results: Results) -> None:
        self.results = results
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook", self.receive)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        now = time.perf_counter()
        for alert in body.get("alerts", []):
            key = (alert["fingerprint"], alert["status"])
            self.results.received_at.setdefault(key, now)
            self.results.received_count[key] += 1
        return web.json_response({"status": "ok"})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def drive(
    urls: list[str],
    stream: Iterator[tuple[dict[str, Any], bool]],
    results: Results,
    duration: float,
    concurrency: int,
    rate: float | None,
) -> float:
    """Post webhooks for `duration` seconds or until `stream` ends, worker i
    to gateway i modulo the number of URLs; return the seconds spent."""
    started = time.perf_counter()
    deadline = started + duration
    interval = None if rate is None else concurrency / rate
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(index: int) -> None:
            next_send = started + (interval or 0) * index / concurrency
            while time.perf_counter() < deadline:
                if interval is not None:
                    delay = next_send - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_send += interval
                item = next(stream, None)
                if item is None:
                    return
                body, carries_new = item
                url = urls[index % len(urls)]
                await post_one(session, url, body, carries_new, results)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return time.perf_counter() - started


async def post_one(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    carries_new: bool,
    results: Results,
) -> None:
    sent = time.perf_counter()
    async with session.post(url, json=body) as reply:
        answer = await reply.json(content_type=None)
    elapsed = time.perf_counter() - sent
    if reply.status != 200:
        results.failures[reply.status] = results.failures.get(reply.status, 0) + 1
        return
    results.answers.append(elapsed)
    results.alerts_accepted += len(body["alerts"])
    for alert in answer["alerts"]:
        if alert["outcome"] == "new":
            results.new_state_changes += 1
            key = (alert["fingerprint"], alert["status"])
            results.sent_at.setdefault(key, sent)
    del carries_new


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def postgres_pids() -> list[int]:
    result = subprocess.run(
        ["pgrep", "-x", "postgres"], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in result.stdout.split()]


def report(
    results: Results,
    spent: float,
    cpu: dict[str, float],
    model_calls: int | None,
    drain_seconds: float,
) -> str:
    answers_ms = [a * 1000 for a in results.answers]
    e2e_ms = [
        (results.received_at[key] - sent) * 1000
        for key, sent in results.sent_at.items()
        if key in results.received_at
    ]
    published = sum(1 for key in results.sent_at if key in results.received_at)
    lines = [
        f"duration_seconds            {spent:.1f}",
        f"webhooks_answered_200       {len(results.answers)}",
        f"webhooks_failed             {dict(sorted(results.failures.items()))}",
        f"alerts_accepted             {results.alerts_accepted}",
        f"alerts_per_second           {results.alerts_accepted / spent:.0f}",
        f"answer_ms_p50               {percentile(answers_ms, 0.5):.1f}",
        f"answer_ms_p99               {percentile(answers_ms, 0.99):.1f}",
        f"new_state_changes           {len(results.sent_at)}",
        f"published_state_changes     {published}",
        f"drain_seconds_after_load    {drain_seconds:.1f}",
        f"end_to_end_ms_p50           {percentile(e2e_ms, 0.5):.1f}",
        f"end_to_end_ms_p99           {percentile(e2e_ms, 0.99):.1f}",
    ]
    if model_calls is not None and results.alerts_accepted:
        lines.append(
            f"model_calls_per_alert       {model_calls / results.alerts_accepted:.4f}"
        )
    per_thousand = 1000 / max(results.alerts_accepted, 1)
    for name, seconds in cpu.items():
        lines.append(
            f"cpu_seconds_per_1000_alerts {name:<11} {seconds * per_thousand:.3f}"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:8]
    rules = [r for r in load_rules() if r.get("alertname")]
    stream = webhook_stream(rules, args.group_size, args.repeats, run_id)
    results = Results()
    folder = Path(args.work_dir or f"/tmp/alert-history-bench-{run_id}")
    folder.mkdir(parents=True, exist_ok=True)

    if not args.start:
        spent = await drive(
            [f"{args.url}{webhook_path(args)}"],
            stream,
            results,
            args.duration,
            args.concurrency,
            args.rate,
        )
        print(report(results, spent, {}, None, 0.0))
        return 0

    target = LocalTarget(results)
    await target.start()
    llm = FakeLLM()
    await llm.start()
    database_name = None
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        database_name = f"ah_bench_{run_id}"
        database_url = await asyncio.to_thread(
            create_database, ADMIN_URL, database_name
        )
    targets_file = folder / "targets.yaml"
    targets_file.write_text(
        json.dumps(
            [
                {
                    "name": "bench-target",
                    "format": "webhook",
                    "url": f"http://127.0.0.1:{target.port}/hook",
                }
            ]
        )
    )
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"),
        "PUBLISHING_TARGETS_FILE": str(targets_file),
        "LLM_PROXY_URL": llm.url,
        "LOG_LEVEL": args.log_level,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(args.trace_sampling),
    }
    meshes = [Mesh(folder, env) for _ in range(args.replicas)]
    try:
        for mesh in meshes:
            mesh.env["LOG_LEVEL"] = args.log_level
            await asyncio.to_thread(mesh.start)
        pids: dict[str, list[int]] = {}
        for mesh in meshes:
            for name, process in mesh.processes.items():
                pids.setdefault(name, []).append(process.pid)
        before = {name: cpu_seconds(p) for name, p in pids.items()}
        before["postgresql"] = cpu_seconds(postgres_pids())
        before["bench"] = time.process_time()

        urls = [f"{mesh.url}{webhook_path(args)}" for mesh in meshes]
        if args.burst:
            stream = burst_stream(rules, args.group_size, args.burst, run_id)
        spent = await drive(
            urls,
            stream,
            results,
            float("inf") if args.burst else args.duration,
            args.concurrency,
            args.rate,
        )
        drain = 0.0
        if not args.ingest_only:
            drain = await await_published(results, args.drain_timeout)

        # Counted after the drain, so that work queued during the load counts.
        cpu = {name: cpu_seconds(p) - before[name] for name, p in pids.items()}
        cpu["postgresql"] = cpu_seconds(postgres_pids()) - before["postgresql"]
        # The load generator and the local target share this process.
        cpu["bench"] = time.process_time() - before["bench"]
        print(report(results, spent, cpu, len(llm.completion_requests), drain))
        if args.burst:
            print(burst_report(results, spent + drain))
        if args.replicas > 1:
            print(await duplicates_report(database_url, results))
        print_settings(args, database_url)
    finally:
        for mesh in meshes:
            await asyncio.to_thread(mesh.stop)
        await llm.stop()
        await target.stop()
        if database_name is not None:
            await asyncio.to_thread(drop_database, ADMIN_URL, database_name)
    return 0


def webhook_path(args: argparse.Namespace) -> str:
    """Return the gateway path: store only, or store, classify and publish."""
    return "/webhook" if args.ingest_only else "/webhook/proxy"


async def await_published(results: Results, limit_seconds: float) -> float:
    """Wait until the target received every new state; return the seconds."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_seconds:
        if all(key in results.received_at for key in results.sent_at):
            break
        await asyncio.sleep(0.2)
    return time.perf_counter() - started


def burst_report(results: Results, seconds: float) -> str:
    lost = sum(1 for key in results.sent_at if key not in results.received_at)
    rejected = sum(results.failures.values())
    return "\n".join(
        [
            f"burst_alerts_accepted       {results.alerts_accepted}",
            f"burst_webhooks_rejected     {rejected}",
            f"burst_seconds_to_published  {seconds:.1f}",
            f"burst_states_lost           {lost}",
        ]
    )


# Rows per (fingerprint, status): stored in history, classified, and recorded
# for delivery to a target.
DUPLICATE_QUERIES = {
    "history_state_changes": (
        "SELECT o.fingerprint, s.status, COUNT(*) AS n FROM state_changes s"
        " JOIN occurrences o ON o.id = s.occurrence_id"
        " GROUP BY o.fingerprint, s.status"
    ),
    "classifications": (
        "SELECT o.fingerprint, s.status, COUNT(*) AS n FROM classifications c"
        " JOIN state_changes s ON s.id = c.state_change_id"
        " JOIN occurrences o ON o.id = s.occurrence_id"
        " GROUP BY o.fingerprint, s.status"
    ),
    "publisher_delivery_alerts": (
        "SELECT fingerprint, status, COUNT(*) AS n FROM publisher_delivery_alerts"
        " GROUP BY fingerprint, status, target"
    ),
}


async def duplicates_report(database_url: str, results: Results) -> str:
    """Count (fingerprint, status) pairs stored, classified, recorded for
    delivery or received more than once."""
    lines = []
    connection = await asyncpg.connect(database_url)
    try:
        for name, query in DUPLICATE_QUERIES.items():
            rows = await connection.fetch(query)
            repeated = sum(1 for row in rows if row["n"] > 1)
            lines.append(f"duplicates_{name:<26} {repeated} of {len(rows)}")
    finally:
        await connection.close()
    received = results.received_count
    repeated = sum(1 for count in received.values() if count > 1)
    lines.append(f"duplicates_{'target_received':<26} {repeated} of {len(received)}")
    return "\n".join(lines)


def print_settings(args: argparse.Namespace, database_url: str) -> None:
    print(
        "settings: "
        + json.dumps(
            {
                "group_size": args.group_size,
                "repeats": args.repeats,
                "concurrency": args.concurrency,
                "rate": args.rate,
                "log_level": args.log_level,
                "trace_sampling": args.trace_sampling,
                "database": database_url.rpartition("@")[2],
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "mean_alerts_per_webhook": statistics.fmean([args.group_size]),
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", action="store_true", help="start the mesh")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="gateway URL")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--group-size", type=int, default=3, help="alerts a webhook")
    parser.add_argument(
        "--repeats", type=int, default=2, help="re-sends of each firing group"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="webhooks in flight"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="webhooks per second (open loop)"
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--trace-sampling", type=float, default=0.1)
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="seconds to await targets"
    )
    parser.add_argument("--work-dir", default=None, help="folder for logs")
    parser.add_argument(
        "--burst",
        type=int,
        default=0,
        help="post this many new firing alerts at once instead of --duration",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="processes of each service"
    )
    parser.add_argument(
        "--ingest-only",
        action="store_true",
        help="post to /webhook, which stores without classifying or publishing",
    )
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
