"""The current configuration of alerts, read from Prometheus and Alertmanager.

Prometheus' `GET /api/v1/rules` gives each alerting rule's `for` (the
rule's `duration`, in seconds) and its group's evaluation `interval`.
Alertmanager's `GET /api/v2/status` gives the loaded configuration file as
text in `config.original`; its route tree gives group_wait, group_interval
and repeat_interval. An alert is routed the way Alertmanager routes it:
the first matching child route, recursively, with unset intervals inherited
from the parent. Only the labels alertname and namespace are known here, so
matchers on other labels see those labels as empty.

When a URL is unset or its API fails, the caller infers what it can from
history instead.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yaml

from services.recommender.durations import parse_duration
from services.recommender.http import read_limited

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Alertmanager's defaults for a root route that leaves them unset.
ROUTE_DEFAULTS = {
    "group_wait": 30.0,
    "group_interval": 300.0,
    "repeat_interval": 14400.0,
}
INTERVALS = ("group_wait", "group_interval", "repeat_interval")


class SourceError(Exception):
    """A configuration API could not be read or returned something unusable."""


@dataclass(frozen=True)
class RuleConfig:
    """One Prometheus alerting rule."""

    name: str
    group: str
    file: str
    expr: str
    for_seconds: float
    interval_seconds: float
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Matcher:
    """One Alertmanager label matcher: =, !=, =~ or !~."""

    name: str
    operator: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.operator in ("=~", "!~"):
            found = re.fullmatch(self.value, actual) is not None
            return found if self.operator == "=~" else not found
        equal = actual == self.value
        return equal if self.operator == "=" else not equal

    def text(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.operator}"{escaped}"'


@dataclass
class Route:
    """A node of the Alertmanager route tree, intervals already inherited."""

    matchers: list[Matcher]
    receiver: str
    intervals: dict[str, float]
    routes: list[Route] = field(default_factory=list)
    depth: int = 0

    def match(self, labels: Mapping[str, str]) -> Route:
        """Return the route the labels end in, as Alertmanager's first match."""
        for child in self.routes:
            if all(m.matches(labels) for m in child.matchers):
                return child.match(labels)
        return self


_MATCHER = re.compile(
    r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"
    r"(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^,}\"'=!~]*)\s*(?:,|$)"
)


def parse_matchers(text: str) -> list[Matcher]:
    """Parse `alertname="Foo", severity=~"crit.*"`, with or without braces."""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    matchers = []
    position = 0
    while position < len(body):
        found = _MATCHER.match(body, position)
        if found is None:
            raise SourceError(f"invalid matcher: {text[:80]!r}")
        name, operator, raw = found.groups()
        value = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        matchers.append(Matcher(name, operator, value))
        position = found.end()
    return matchers


def _route_matchers(raw: Mapping[str, Any]) -> list[Matcher]:
    """Return a route's matchers, raising SourceError for an invalid regex."""
    matchers = [
        Matcher(str(name), "=", str(value))
        for name, value in (raw.get("match") or {}).items()
    ]
    matchers += [
        Matcher(str(name), "=~", str(value))
        for name, value in (raw.get("match_re") or {}).items()
    ]
    for text in raw.get("matchers") or []:
        matchers.extend(parse_matchers(str(text)))
    for matcher in matchers:
        if matcher.operator in ("=~", "!~"):
            try:
                re.compile(matcher.value)
            except re.error as exc:
                raise SourceError(f"invalid regex in matcher {matcher.text()}") from exc
    return matchers


def build_route(
    raw: Mapping[str, Any], parent: Route | None = None, depth: int = 0
) -> Route:
    """Build a route tree from the `route` mapping of an Alertmanager config."""
    if not isinstance(raw, Mapping):
        raise SourceError("route is not a mapping")
    inherited = dict(parent.intervals) if parent else dict(ROUTE_DEFAULTS)
    for name in INTERVALS:
        if raw.get(name):
            try:
                inherited[name] = parse_duration(str(raw[name]))
            except ValueError as exc:
                raise SourceError(f"route {name} is invalid: {exc}") from exc
    route = Route(
        matchers=_route_matchers(raw) if parent else [],
        receiver=str(raw.get("receiver") or (parent.receiver if parent else "")),
        intervals=inherited,
        depth=depth,
    )
    route.routes = [
        build_route(child, route, depth + 1) for child in raw.get("routes") or []
    ]
    return route


def parse_alertmanager_status(body: Any) -> Route:
    """Return the route tree of a /api/v2/status body, or raise SourceError."""
    config = body.get("config") if isinstance(body, dict) else None
    original = config.get("original") if isinstance(config, dict) else None
    if not isinstance(original, str):
        raise SourceError("status has no config.original")
    try:
        parsed = yaml.safe_load(original)
    except yaml.YAMLError as exc:
        raise SourceError(f"config.original is not YAML: {exc}") from exc
    if not isinstance(parsed, dict) or not isinstance(parsed.get("route"), dict):
        raise SourceError("config.original has no route")
    return build_route(parsed["route"])


def parse_prometheus_rules(body: Any) -> dict[str, list[RuleConfig]]:
    """Return the alerting rules of a /api/v1/rules body by name, or raise."""
    data = body.get("data") if isinstance(body, dict) else None
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list):
        raise SourceError("rules response has no data.groups")
    rules: dict[str, list[RuleConfig]] = {}
    for group in groups:
        if not isinstance(group, dict):
            continue
        for rule in group.get("rules") or []:
            if isinstance(rule, dict) and rule.get("type") == "alerting":
                parsed = _rule(group, rule)
                rules.setdefault(parsed.name, []).append(parsed)
    return rules


def _rule(group: Mapping[str, Any], rule: Mapping[str, Any]) -> RuleConfig:
    labels = rule.get("labels") or {}
    try:
        for_seconds = float(rule.get("duration") or 0)
        interval_seconds = float(group.get("interval") or 0)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"rule {rule.get('name')!r} has an invalid duration") from exc
    if not isinstance(labels, dict):
        raise SourceError(f"rule {rule.get('name')!r} has invalid labels")
    return RuleConfig(
        name=str(rule.get("name", "")),
        group=str(group.get("name", "")),
        file=str(group.get("file", "")),
        expr=str(rule.get("query", "")),
        for_seconds=for_seconds,
        interval_seconds=interval_seconds,
        labels={str(k): str(v) for k, v in labels.items()},
    )


def pick_rule(
    rules: Mapping[str, list[RuleConfig]], alertname: str, namespace: str
) -> RuleConfig | None:
    """Return the rule of an alert: one labelling its namespace, else the first."""
    candidates = rules.get(alertname, [])
    for rule in candidates:
        if rule.labels.get("namespace") == namespace:
            return rule
    unlabelled = [rule for rule in candidates if "namespace" not in rule.labels]
    if unlabelled:
        return unlabelled[0]
    return candidates[0] if candidates else None


@dataclass
class Snapshot:
    """The configuration read at the start of one generation.

    `rules` or `routes` is None when its API is not configured or failed,
    and `rule_note` or `route_note` then gives the reason.
    """

    rules: dict[str, list[RuleConfig]] | None = None
    routes: Route | None = None
    rule_note: str = "PROMETHEUS_URL is unset"
    route_note: str = "ALERTMANAGER_URL is unset"


class ConfigSources:
    """Reads Prometheus' rules and Alertmanager's routes when their URLs are set."""

    def __init__(
        self,
        prometheus_url: str | None,
        alertmanager_url: str | None,
        timeout_seconds: float,
    ) -> None:
        self.prometheus_url = prometheus_url
        self.alertmanager_url = alertmanager_url
        self.timeout_seconds = timeout_seconds
        self._session: aiohttp.ClientSession | None = None

    async def snapshot(self) -> Snapshot:
        """Read both APIs; a SourceError is logged and noted instead of raised."""
        snapshot = Snapshot()
        if self.prometheus_url:
            try:
                body = await self._get(self.prometheus_url, "/api/v1/rules?type=alert")
                snapshot.rules = parse_prometheus_rules(body)
                snapshot.rule_note = ""
            except SourceError as exc:
                snapshot.rule_note = f"Prometheus rules API failed: {exc}"
                logger.warning(
                    "reading Prometheus rules failed",
                    extra={"target": self.prometheus_url, "error": str(exc)},
                )
        if self.alertmanager_url:
            try:
                body = await self._get(self.alertmanager_url, "/api/v2/status")
                snapshot.routes = parse_alertmanager_status(body)
                snapshot.route_note = ""
            except SourceError as exc:
                snapshot.route_note = f"Alertmanager status API failed: {exc}"
                logger.warning(
                    "reading Alertmanager status failed",
                    extra={"target": self.alertmanager_url, "error": str(exc)},
                )
        return snapshot

    async def _get(self, base_url: str, path: str) -> Any:
        url = base_url.rstrip("/") + path
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        try:
            async with self._get_session().get(url, timeout=timeout) as response:
                if response.status != 200:
                    raise SourceError(f"HTTP {response.status} from {path}")
                raw = await read_limited(response, MAX_RESPONSE_BYTES)
        except TimeoutError as exc:
            raise SourceError(f"{path} timed out") from exc
        except aiohttp.ClientError as exc:
            raise SourceError(f"{path} failed: {type(exc).__name__}") from exc
        if raw is None:
            raise SourceError(f"{path} returned more than {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise SourceError(f"{path} returned invalid JSON") from exc

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
