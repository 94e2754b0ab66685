"""Ready YAML for a recommendation: the rule's `for:` and the route's intervals."""

from __future__ import annotations

from typing import Any

import yaml

from alerthistory.recommender.v1 import recommender_pb2
from services.recommender.sources import Matcher, Route, RuleConfig

ROUTE_FIELDS = ("group_wait", "group_interval", "repeat_interval")


def _dump(document: Any) -> str:
    return yaml.safe_dump(
        document, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" for line in text.splitlines() if line.strip())


def rule_snippet(
    alertname: str,
    recommended: recommender_pb2.AlertConfig,
    rule: RuleConfig | None,
) -> str:
    """Return the rule with its new `for:` (and group interval), or ""."""
    changes_rule = recommended.for_duration or recommended.evaluation_interval
    if not changes_rule and not recommended.threshold_adjustment:
        return ""
    entry: dict[str, Any] = {"alert": alertname}
    if rule is not None and rule.expr:
        entry["expr"] = rule.expr
    if recommended.for_duration:
        entry["for"] = recommended.for_duration
    header = "Prometheus alerting rule"
    if rule is not None:
        header = f'Prometheus rule group "{rule.group}"'
        if rule.file:
            header += f" in {rule.file}"
    group: dict[str, Any] = {"name": rule.group if rule else "<rule group>"}
    if recommended.evaluation_interval:
        group["interval"] = recommended.evaluation_interval
    group["rules"] = [entry]
    text = _comment(header) + _dump({"groups": [group]})
    if recommended.threshold_adjustment:
        text += _comment(f"Threshold: {recommended.threshold_adjustment}")
    return text


def route_snippet(
    alertname: str,
    namespace: str,
    recommended: recommender_pb2.AlertConfig,
    route: Route | None,
) -> str:
    """Return the Alertmanager route with its new intervals, or ""."""
    intervals = {
        name: getattr(recommended, name)
        for name in ROUTE_FIELDS
        if getattr(recommended, name)
    }
    if not intervals:
        return ""
    if route is not None and route.depth > 0:
        header = (
            "Alertmanager: the route that matches this alert today"
            f' (receiver "{route.receiver}")'
        )
        matchers = [matcher.text() for matcher in route.matchers]
    else:
        header = (
            "Alertmanager: a new route for this alert, placed before the routes"
            " that would match it"
        )
        matchers = [Matcher("alertname", "=", alertname).text()]
        if namespace:
            matchers.append(Matcher("namespace", "=", namespace).text())
    child: dict[str, Any] = {}
    if route is not None and route.receiver:
        child["receiver"] = route.receiver
    child["matchers"] = matchers
    child.update(intervals)
    return _comment(header) + _dump({"route": {"routes": [child]}})


def build_snippet(
    alertname: str,
    namespace: str,
    recommended: recommender_pb2.AlertConfig,
    rule: RuleConfig | None,
    route: Route | None,
) -> str:
    """Return the YAML of every part the recommendation changes."""
    parts = [
        rule_snippet(alertname, recommended, rule),
        route_snippet(alertname, namespace, recommended, route),
    ]
    return "\n".join(part for part in parts if part)
