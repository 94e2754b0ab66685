"""Replay an alert storm through the classifier and count the model calls.

    .venv/bin/python scripts/bench_storm.py [--groups 200] [--alerts 5]
        [--minutes 60] [--group-interval 300] [--seed 1] [--named-hosts]

Builds `--groups` Alertmanager groups from the public rules in
tests/fixtures/rules.jsonl: one rule with a distinct alertname per group,
grouped by alertname, and `--alerts` alerts per group that differ only in
their `instance` and `job` labels. Each alert keeps the rule's labels, its
severity label and its annotations, with Go templates filled in as
Alertmanager would: `$labels.x` with the alert's labels and `$value` with a
number drawn again for every notification.

Every group is sent once after a group_wait of 30 s and then again every
`--group-interval` seconds for `--minutes` simulated minutes, each time with
all its alerts. Alertmanager sends a group again after group_interval when
its alerts changed, and a storm keeps changing them. A group that stays the
same is sent again only after repeat_interval (4 h by default), so this is
the busy case. The simulated time does not pass: notifications of the same
instant go to the classifier at once, one `classify_batch` call per group.

The classifier is the real one, built by `create_service` with an in-memory
cache and no history context, asking the scripted fake model server of
tests/fakes/llm.py on 127.0.0.1, which answers at once and counts the
requests. The script prints the model calls per received alert and per
distinct alert, next to the one call per received alert of a proxy that asks
the model every time, as Markdown. A second run without the model times the
rules alone, with the learned model of services/classifier/learned.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerthistory.alert.v1 import alert_pb2  # noqa: E402
from libs.alerts import compute_fingerprint  # noqa: E402
from libs.config import Settings  # noqa: E402
from services.classifier.cache import cache_key  # noqa: E402
from services.classifier.service import create_service  # noqa: E402
from tests.fakes.llm import FakeLLM  # noqa: E402

RULES_FILE = ROOT / "tests" / "fixtures" / "rules.jsonl"
GROUP_WAIT_SECONDS = 30
MODEL_NAME = "storm-model"
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_LABEL_REFERENCE = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Group:
    """The static part of one Alertmanager group: its alerts' labels and templates."""

    alerts: tuple[dict[str, str], ...]
    annotations: dict[str, str]


@dataclass
class StormResult:
    """Counts and timing of one replay."""

    notifications: int
    received: int
    distinct_alerts: int
    distinct_keys: int
    model_calls: int
    seconds: float


def load_groups(count: int, alerts_per_group: int, named_hosts: bool) -> list[Group]:
    """Build `count` groups from rules with distinct alertnames and a summary."""
    groups: list[Group] = []
    seen: set[str] = set()
    for line in RULES_FILE.read_text().splitlines():
        rule = json.loads(line)
        name = rule["alertname"]
        if name.lower() in seen or not rule.get("summary"):
            continue
        seen.add(name.lower())
        groups.append(_group(rule, alerts_per_group, named_hosts))
        if len(groups) == count:
            return groups
    raise SystemExit(f"the corpus has only {len(groups)} usable rules, not {count}")


def _group(rule: Mapping[str, Any], alerts_per_group: int, named_hosts: bool) -> Group:
    labels = {"alertname": rule["alertname"], **rule.get("labels_other", {})}
    if rule.get("severity_raw"):
        labels["severity"] = rule["severity_raw"]
    annotations = {
        key: rule[key] for key in ("summary", "description", "runbook_url") if rule[key]
    }
    annotations.update(rule.get("annotations_other", {}))
    alerts = tuple(
        {**labels, "instance": f"{_host(index, named_hosts)}:9100", "job": "node"}
        for index in range(alerts_per_group)
    )
    return Group(alerts, annotations)


def _host(index: int, named: bool) -> str:
    if not named:
        return f"host-{index}"
    return "host-" + "".join(chr(ord("a") + int(digit)) for digit in str(index))


def render(template: str, labels: Mapping[str, str], rng: random.Random) -> str:
    """Fill Go templates: `$value` with a fresh number, `$labels.x` with x."""

    def fill(match: re.Match[str]) -> str:
        expression = match.group(1)
        if "$value" in expression:
            return f"{rng.uniform(0, 100):.2f}"
        reference = _LABEL_REFERENCE.search(expression)
        if reference is not None:
            return labels.get(reference.group(1), "")
        return ""

    return _TEMPLATE.sub(fill, template)


def notification_alerts(group: Group, rng: random.Random) -> list[alert_pb2.Alert]:
    """Return the alerts of one notification of `group`, with fresh values."""
    alerts = []
    for labels in group.alerts:
        alert = alert_pb2.Alert(status=alert_pb2.ALERT_STATUS_FIRING)
        alert.labels.update(labels)
        alert.annotations.update(
            {
                key: render(value, labels, rng)
                for key, value in group.annotations.items()
            }
        )
        alert.fingerprint = compute_fingerprint(labels)
        alerts.append(alert)
    return alerts


def notification_times(minutes: int, group_interval: int) -> list[int]:
    """Return the seconds at which every group is sent within the window."""
    return list(range(GROUP_WAIT_SECONDS, minutes * 60, group_interval))


def settings_for(model_url: str | None) -> Settings:
    values: dict[str, Any] = {
        "llm_model": MODEL_NAME,
        "classifier_context_timeout_seconds": 0,
        "classification_cache_max_entries": 100_000,
    }
    if model_url is not None:
        values["llm_proxy_url"] = model_url
        values["llm_api_key"] = "storm-key"
    return Settings.model_validate(values)


async def replay(
    groups: Sequence[Group],
    times: Sequence[int],
    seed: int,
    llm: FakeLLM | None,
) -> StormResult:
    """Send every group at every time through one classifier."""
    service = create_service(
        settings_for(llm.url if llm else None), CollectorRegistry()
    )
    classifier = service.classifier
    rng = random.Random(seed)
    received = 0
    distinct: set[str] = set()
    keys: set[str] = set()
    started = time.perf_counter()
    try:
        for _ in times:
            batches = [notification_alerts(group, rng) for group in groups]
            for batch in batches:
                received += len(batch)
                for alert in batch:
                    distinct.add(alert.fingerprint)
                    keys.add(cache_key(alert.labels, alert.annotations, MODEL_NAME))
            await asyncio.gather(*(classifier.classify_batch(b) for b in batches))
        await classifier.wait_for_pending()
    finally:
        seconds = time.perf_counter() - started
        await service.close()
    calls = len(llm.completion_requests) if llm else 0
    return StormResult(
        len(groups) * len(times),
        received,
        len(distinct),
        len(keys),
        calls,
        seconds,
    )


def report(
    args: argparse.Namespace, with_model: StormResult, rules_only: StormResult
) -> str:
    """Return the results as Markdown."""
    per_received = with_model.model_calls / with_model.received
    per_distinct = with_model.model_calls / with_model.distinct_alerts
    rules_micros = rules_only.seconds / rules_only.received * 1e6
    sends = with_model.notifications // args.groups
    lines = [
        f"- machine: {platform.machine()}, {_cpu_name()}, {_cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "- command: `.venv/bin/python scripts/bench_storm.py "
        f"--groups {args.groups} --alerts {args.alerts} --minutes {args.minutes} "
        f"--group-interval {args.group_interval} --seed {args.seed}"
        f"{' --named-hosts' if args.named_hosts else ''}`",
        f"- {args.groups} groups of {args.alerts} alerts, each group sent {sends} "
        f"times (group_wait {GROUP_WAIT_SECONDS} s, then every "
        f"{args.group_interval} s for {args.minutes} simulated minutes)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| notifications | {with_model.notifications:,} |",
        f"| alerts received | {with_model.received:,} |",
        f"| distinct alerts (label sets) | {with_model.distinct_alerts:,} |",
        f"| distinct cache keys | {with_model.distinct_keys:,} |",
        f"| model calls | {with_model.model_calls:,} |",
        f"| model calls per received alert | {per_received:.4f} |",
        f"| model calls per distinct alert | {per_distinct:.3f} |",
        f"| model calls of a proxy that asks for every alert | "
        f"{with_model.received:,} (1 per received alert) |",
        f"| replay time with the fake model | {with_model.seconds:.1f} s |",
        f"| replay time without a model | {rules_only.seconds:.1f} s "
        f"({rules_micros:.0f} µs per alert) |",
    ]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpu_count() -> int:
    return os.cpu_count() or 1


async def run(args: argparse.Namespace) -> None:
    groups = load_groups(args.groups, args.alerts, args.named_hosts)
    times = notification_times(args.minutes, args.group_interval)
    async with FakeLLM() as llm:
        with_model = await replay(groups, times, args.seed, llm)
    rules_only = await replay(groups, times, args.seed, None)
    print(report(args, with_model, rules_only))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=200, help="groups (default: 200)")
    parser.add_argument(
        "--alerts", type=int, default=5, help="alerts per group (default: 5)"
    )
    parser.add_argument(
        "--minutes", type=int, default=60, help="simulated minutes (default: 60)"
    )
    parser.add_argument(
        "--group-interval",
        type=int,
        default=300,
        help="seconds between notifications of a group (default: 300)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the $value numbers (default: 1)"
    )
    parser.add_argument(
        "--named-hosts",
        action="store_true",
        help="name instances host-a, host-b, ... instead of host-0, host-1, ...; "
        "the cache key masks digits only, so rendered names then tell alerts apart",
    )
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
