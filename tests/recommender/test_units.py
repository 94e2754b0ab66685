"""Durations, route matching, thresholds and snippets, without servers."""

from __future__ import annotations

import pytest
import yaml

from alerthistory.history.v1 import history_pb2
from alerthistory.recommender.v1 import recommender_pb2
from services.classifier.reply import ModelFailure
from services.recommender import detect
from services.recommender.durations import format_duration, parse_duration, round_up
from services.recommender.model import check_answer
from services.recommender.snippets import build_snippet
from services.recommender.sources import (
    SourceError,
    parse_alertmanager_status,
    parse_matchers,
    parse_prometheus_rules,
    pick_rule,
)
from tests.fakes.configapis import alerting_rule, rule_group


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("500ms", 0.5)],
)
def test_parse_duration_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5 minutes", "1m1h", "-5m"])
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="Prometheus duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (90, "1m30s"), (3600, "1h"), (93600, "1d2h")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("seconds", "step"), [(301, 600), (300, 300), (90000, 172800)])
def test_round_up_common_step(seconds: float, step: float) -> None:
    assert round_up(seconds) == step


def test_parse_matchers_operators() -> None:
    matchers = parse_matchers('{alertname="Disk, Full", severity=~"crit.*",ns!=dev}')

    assert [(m.name, m.operator, m.value) for m in matchers] == [
        ("alertname", "=", "Disk, Full"),
        ("severity", "=~", "crit.*"),
        ("ns", "!=", "dev"),
    ]


def test_parse_matchers_invalid() -> None:
    with pytest.raises(SourceError, match="invalid matcher"):
        parse_matchers('alertname=="x"')


ROUTES = """
route:
  receiver: default
  repeat_interval: 3h
  routes:
    - receiver: databases
      matchers: ['namespace=~"db-.*"']
      group_interval: 10m
      routes:
        - receiver: db-pager
          match: {alertname: PostgresDown}
          repeat_interval: 30m
    - receiver: disk
      match_re: {alertname: "Disk.*"}
"""


def route_for(alertname: str, namespace: str) -> tuple[str, dict[str, float]]:
    tree = parse_alertmanager_status({"config": {"original": ROUTES}})
    route = tree.match({"alertname": alertname, "namespace": namespace})
    return route.receiver, route.intervals


def test_route_nested_match_inherits() -> None:
    receiver, intervals = route_for("PostgresDown", "db-main")

    assert receiver == "db-pager"
    assert intervals == {
        "group_wait": 30.0,
        "group_interval": 600.0,
        "repeat_interval": 1800.0,
    }


def test_route_first_match_wins() -> None:
    assert route_for("DiskFull", "db-main")[0] == "databases"


def test_route_regex_is_anchored() -> None:
    assert route_for("BigDiskFull", "web")[0] == "default"


def test_alertmanager_status_without_config() -> None:
    with pytest.raises(SourceError, match=r"config\.original"):
        parse_alertmanager_status({"cluster": {}})


def test_pick_rule_prefers_namespace() -> None:
    rules = parse_prometheus_rules(
        {
            "data": {
                "groups": [
                    rule_group(
                        "g",
                        [
                            alerting_rule("Up", duration=60),
                            alerting_rule(
                                "Up", duration=600, labels={"namespace": "prod"}
                            ),
                        ],
                    )
                ]
            }
        }
    )

    chosen = pick_rule(rules, "Up", "prod")
    fallback = pick_rule(rules, "Up", "dev")

    assert chosen is not None and chosen.for_seconds == 600
    assert fallback is not None and fallback.for_seconds == 60


def stats(**fields: int | float) -> history_pb2.AlertStatistics:
    return history_pb2.AlertStatistics(alertname="A", namespace="n", **fields)  # type: ignore[arg-type]


THRESHOLD_CASES = [
    (
        "flapping",
        stats(flapping_fingerprints=1, max_occurrences_per_fingerprint=6),
        ["flapping"],
    ),
    ("short at ratio", stats(resolved=4, short_lived=2), ["short_lived"]),
    ("short below ratio", stats(resolved=5, short_lived=2), []),
    ("short too few", stats(resolved=2, short_lived=2), []),
    ("long firing", stats(long_firing=1), ["never_resolves"]),
    ("occurrences at threshold", stats(occurrences=50), ["heavy_repeater"]),
    ("occurrences below", stats(occurrences=49), []),
    ("deliveries at threshold", stats(deliveries=200), ["heavy_repeater"]),
    ("noise at ratio", stats(classified=5, noise=4), ["mostly_noise"]),
    ("noise below ratio", stats(classified=5, noise=3), []),
    ("noise too few", stats(classified=4, noise=4), []),
]


@pytest.mark.parametrize(
    ("statistics", "expected"),
    [(s, e) for _, s, e in THRESHOLD_CASES],
    ids=[name for name, _, _ in THRESHOLD_CASES],
)
def test_find_problems_thresholds(
    statistics: history_pb2.AlertStatistics, expected: list[str]
) -> None:
    finding = detect.find_problems(statistics, detect.Thresholds(), 168)

    found = detect.problem_names(finding.problems) if finding else []
    assert found == expected


def test_rules_recommendation_doubles_known_for() -> None:
    statistics = stats(resolved=4, short_lived=4)
    finding = detect.find_problems(statistics, detect.Thresholds(), 168)
    assert finding is not None

    draft = detect.rules_recommendation(
        statistics,
        finding,
        recommender_pb2.AlertConfig(for_duration="10m"),
        detect.Thresholds(),
    )

    assert draft.recommended.for_duration == "30m"


def test_check_answer_requires_a_change() -> None:
    empty = dict.fromkeys(
        [
            "evaluation_interval",
            "for_duration",
            "group_interval",
            "repeat_interval",
            "threshold_adjustment",
            "impact_estimate",
        ],
        "",
    )

    with pytest.raises(ModelFailure, match="changes no configuration"):
        check_answer({**empty, "reasoning": "fine as it is"}, "m")


def test_snippet_is_valid_yaml() -> None:
    recommended = recommender_pb2.AlertConfig(
        for_duration="10m", repeat_interval="12h", threshold_adjustment="Raise it."
    )

    snippet = build_snippet("DiskFull", "prod", recommended, None, None)
    rule_part, route_part = snippet.split("\n\n")
    rule = yaml.safe_load(rule_part)
    route = yaml.safe_load(route_part)

    assert rule["groups"][0]["rules"][0]["for"] == "10m"
    assert route["route"]["routes"][0]["repeat_interval"] == "12h"
    assert "# Threshold: Raise it." in snippet
    assert 'alertname="DiskFull"' in snippet
    assert 'namespace="prod"' in snippet
