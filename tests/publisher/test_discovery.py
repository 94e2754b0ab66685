"""Publishing targets discovered from Kubernetes Secrets.

The official client talks to `tests/fakes/kubeapi.py`, which speaks the real
list and watch protocol, so selectors, resourceVersions, timeouts, 410 Gone
and the chunked watch stream are all exercised over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client as kube_client
from prometheus_client import CollectorRegistry

from libs.config import ConfigError, Settings, load_settings
from services.publisher.discovery import (
    API_KEY_HEADER,
    DiscoveryMetrics,
    SecretDiscovery,
    TargetSources,
    kube_api_client,
    secret_definition,
    target_from_secret,
)
from services.publisher.metrics import PublisherMetrics
from services.publisher.targets import Target, TargetConfigError, TargetSet
from tests.fakes.kubeapi import FakeKubeApi, parse_selector, selector_matches
from tests.fakes.receiver import Receiver
from tests.publisher.conftest import (
    make_settings,
    publish_request,
    running_publisher,
    wait_for_delivery,
    write_targets,
)

NAMESPACE = "team-a"
OTHER_NAMESPACE = "team-b"
SELECTOR = "publishing-target=true"
LABELS = {"publishing-target": "true"}
WAIT_SECONDS = 10.0
TOKEN = "tok-3f9a1c"
HOOK_URL = "https://hooks.example/services/T000/path-secret-7e1d"


def secret(
    name: str = "hook",
    data: dict[str, str] | None = None,
    *,
    namespace: str = NAMESPACE,
    encoded: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Secret object as the API server returns it."""
    values = {
        key: base64.b64encode(value.encode()).decode()
        for key, value in (data or {}).items()
    }
    values.update(encoded or {})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "type": "Opaque",
        "data": values,
    }


def hook_data(url: str = HOOK_URL, **extra: str) -> dict[str, str]:
    return {"url": url, "format": "webhook", **extra}


async def wait_until(
    condition: Callable[[], bool], seconds: float = WAIT_SECONDS
) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def names(targets: list[Target] | tuple[Target, ...]) -> list[str]:
    return [target.name for target in targets]


class Discovered:
    """Records every list of targets discovery hands over."""

    def __init__(self) -> None:
        self.changes: list[list[Target]] = []

    def __call__(self, targets: list[Target]) -> None:
        self.changes.append(targets)

    @property
    def names(self) -> list[str]:
        return names(self.changes[-1]) if self.changes else []

    def get(self, name: str) -> Target | None:
        for target in self.changes[-1] if self.changes else []:
            if target.name == name:
                return target
        return None


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi(bookmark_interval_seconds=60.0) as api:
        yield api


@asynccontextmanager
async def discovering(
    kube: FakeKubeApi,
    namespaces: list[str] | None = None,
    *,
    registry: CollectorRegistry | None = None,
    resync_seconds: float = 60.0,
    watch_timeout_seconds: int = 20,
) -> AsyncIterator[tuple[SecretDiscovery, Discovered, DiscoveryMetrics]]:
    discovered = Discovered()
    metrics = DiscoveryMetrics(registry or CollectorRegistry())
    api_client = kube_client.ApiClient(kube_client.Configuration(host=kube.url))
    discovery = SecretDiscovery(
        api_client,
        namespaces or [NAMESPACE],
        label_selector=SELECTOR,
        resync_seconds=resync_seconds,
        watch_timeout_seconds=watch_timeout_seconds,
        on_change=discovered,
        metrics=metrics,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
    )
    await discovery.start()
    try:
        yield discovery, discovered, metrics
    finally:
        await discovery.close()


def errors(metrics: DiscoveryMetrics, reason: str) -> float:
    return float(metrics.errors.labels(reason)._value.get())


# Mapping of a Secret's keys onto a target.


def test_secret_maps_every_key() -> None:
    target = target_from_secret(
        secret(
            "hook-secret",
            {
                "target-name": "oncall",
                "webhook-url": HOOK_URL,
                "format": "webhook",
                "enabled": "false",
                "api-key": "key-1",
                "token": TOKEN,
                "header-X-Team": "payments",
                "routing-key": "rk-1",
                "filter-severity": "critical, warning",
                "filter-namespaces": "shop-prod,shop-stage",
                "filter-alertname-patterns": "Kube.*,Disk.*",
                "exclude-noise": "true",
                "min-confidence": "0.6",
            },
        )
    )

    assert target.name == "oncall"
    assert target.url == HOOK_URL
    assert target.format == "webhook"
    assert target.enabled is False
    assert target.headers == {
        "X-Team": "payments",
        "Authorization": f"Bearer {TOKEN}",
        API_KEY_HEADER: "key-1",
    }
    assert target.routing_key == "rk-1"
    assert target.filter.severities == frozenset({"critical", "warning"})
    assert target.filter.namespaces == frozenset({"shop-prod", "shop-stage"})
    assert [p.pattern for p in target.filter.alertname_patterns] == ["Kube.*", "Disk.*"]
    assert target.filter.exclude_noise is True
    assert target.filter.min_confidence == 0.6
    assert target.source == "secret:team-a/hook-secret"


def test_secret_name_defaults_to_secret() -> None:
    target = target_from_secret(secret("relay", hook_data()))

    assert target.name == "relay"
    assert target.enabled is True


def test_secret_auth_header_sent_as_is() -> None:
    target = target_from_secret(secret(data=hook_data(**{"auth-header": "Basic abc"})))

    assert target.headers == {"Authorization": "Basic abc"}


def test_secret_values_are_stripped() -> None:
    target = target_from_secret(
        secret(data={"url": HOOK_URL + "\n", "format": "webhook\n"})
    )

    assert target.url == HOOK_URL


def test_secret_patterns_one_per_line() -> None:
    definition = secret_definition(
        secret(data=hook_data(**{"filter-alertname-patterns": "A{1,2}\nB.*"}))
    )

    assert definition["filter"]["alertname_patterns"] == ["A{1,2}", "B.*"]


@pytest.mark.parametrize(
    ("data", "encoded", "reason"),
    [
        ({"format": "webhook"}, {"url": "%%%not-base64"}, "not valid base64"),
        (hook_data(format="carrier-pigeon"), None, "unsupported format"),
        (
            hook_data(**{"filter-alertname-patterns": "Kube(.*"}),
            None,
            "invalid regular expression",
        ),
        ({"format": "webhook"}, None, "url is missing"),
        (hook_data(**{"min-confidence": "high"}), None, "not a number"),
        (hook_data(**{"min-confidence": "1.5"}), None, "between 0 and 1"),
        (hook_data(enabled="yes"), None, "true or false"),
        (hook_data(**{"auth-header": "Basic a", "token": TOKEN}), None, "already sets"),
        (hook_data(webhook_url=HOOK_URL), None, "unknown key 'webhook_url'"),
        (hook_data(**{"webhook-url": HOOK_URL}), None, "keep one"),
        (hook_data(**{"filter-severity": "urgent"}), None, "unknown value"),
    ],
)
def test_secret_invalid(
    data: dict[str, str], encoded: dict[str, str] | None, reason: str
) -> None:
    with pytest.raises(TargetConfigError, match=reason) as raised:
        target_from_secret(secret(data=data, encoded=encoded))

    assert HOOK_URL not in str(raised.value)
    assert TOKEN not in str(raised.value)


# Name clashes and the combined target set.


def file_target(name: str) -> Target:
    return Target(name=name, format="webhook", url="http://file.example/hook")


def discovered_target(name: str, source: str) -> Target:
    return Target(
        name=name, format="webhook", url="http://secret.example/", source=source
    )


def test_sources_file_target_wins(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    target_set = TargetSet()
    metrics = DiscoveryMetrics(registry)
    sources = TargetSources(
        target_set, [file_target("hook")], PublisherMetrics(registry), metrics
    )

    sources.set_discovered(
        [
            discovered_target("hook", "secret:team-a/hook"),
            discovered_target("relay", "secret:team-a/relay"),
        ]
    )
    sources.set_discovered(
        [
            discovered_target("hook", "secret:team-a/hook"),
            discovered_target("relay", "secret:team-a/relay"),
        ]
    )
    hook = target_set.get("hook")

    assert names(target_set.all()) == ["hook", "relay"]
    assert hook is not None
    assert hook.source == "file"
    assert errors(metrics, "name_conflict") == 1.0
    assert "secret:team-a/hook" in [getattr(r, "secret", None) for r in caplog.records]


def test_sources_first_namespace_wins() -> None:
    registry = CollectorRegistry()
    target_set = TargetSet()
    sources = TargetSources(
        target_set, [], PublisherMetrics(registry), DiscoveryMetrics(registry)
    )

    sources.set_discovered(
        [
            discovered_target("hook", "secret:team-a/hook"),
            discovered_target("hook", "secret:team-b/hook"),
        ]
    )
    hook = target_set.get("hook")

    assert len(target_set.all()) == 1
    assert hook is not None
    assert hook.source == "secret:team-a/hook"


def test_sources_gauges_count_every_source() -> None:
    registry = CollectorRegistry()
    target_set = TargetSet()
    sources = TargetSources(
        target_set,
        [file_target("hook")],
        PublisherMetrics(registry),
        DiscoveryMetrics(registry),
    )

    sources.set_discovered([discovered_target("relay", "secret:team-a/relay")])

    assert (
        registry.get_sample_value("alert_history_publishing_targets_discovered") == 1.0
    )
    assert (
        registry.get_sample_value(
            "alert_history_publishing_target_status",
            {"target": "relay", "format": "webhook"},
        )
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "alert_history_publishing_target_status",
            {"target": "hook", "format": "webhook"},
        )
        == 1.0
    )
    assert registry.get_sample_value("alert_history_metrics_only_mode") == 0.0


# The fake API server itself.


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("publishing-target=true", {"publishing-target": "true"}, True),
        ("publishing-target==true", {"publishing-target": "false"}, False),
        ("tier!=db", {}, True),
        ("tier!=db", {"tier": "db"}, False),
        ("tier", {"tier": ""}, True),
        ("!tier", {"tier": "web"}, False),
        ("tier in (web, api)", {"tier": "api"}, True),
        ("tier notin (web,api)", {"tier": "api"}, False),
        ("a=1,tier in (web,api)", {"a": "1", "tier": "web"}, True),
        ("", {}, True),
    ],
)
def test_fake_selector_matches(
    selector: str, labels: dict[str, str], expected: bool
) -> None:
    assert selector_matches(parse_selector(selector), labels) is expected


async def test_fake_rejects_invalid_selector(kube: FakeKubeApi) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{kube.url}/api/v1/namespaces/{NAMESPACE}/secrets",
            params={"labelSelector": "a in b"},
        ) as response:
            status = response.status
            body = await response.json()

    assert status == 400
    assert body["kind"] == "Status"


async def test_fake_watch_without_version(kube: FakeKubeApi) -> None:
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
    params = {"watch": "1", "timeoutSeconds": "1", "labelSelector": SELECTOR}

    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{kube.url}/api/v1/namespaces/{NAMESPACE}/secrets", params=params
        ) as response:
            lines = (await response.text()).splitlines()

    events = [json.loads(line) for line in lines]
    assert [event["type"] for event in events] == ["ADDED"]
    assert events[0]["object"]["kind"] == "Secret"
    assert events[0]["object"]["metadata"]["resourceVersion"] == kube.resource_version


# Discovery against the fake API server.


async def test_discovery_initial_list(kube: FakeKubeApi) -> None:
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
    kube.create_secret(NAMESPACE, "relay", hook_data(), labels=LABELS)
    kube.create_secret(OTHER_NAMESPACE, "elsewhere", hook_data(), labels=LABELS)

    async with discovering(kube) as (discovery, discovered, _):
        assert discovered.names == ["hook", "relay"]
        assert names(discovery.targets) == ["hook", "relay"]


async def test_discovery_selector_applied_by_server(kube: FakeKubeApi) -> None:
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
    kube.create_secret(NAMESPACE, "plain", hook_data())
    kube.create_secret(
        NAMESPACE, "off", hook_data(), labels={"publishing-target": "false"}
    )

    async with discovering(kube) as (_, discovered, _):
        await kube.wait_for_watches(1)
        kube.update_secret(NAMESPACE, "plain", hook_data("http://changed.example/"))
        kube.create_secret(NAMESPACE, "later", hook_data())
        kube.create_secret(NAMESPACE, "labelled", hook_data(), labels=LABELS)
        await wait_until(lambda: "labelled" in discovered.names)

    assert {call.query.get("labelSelector") for call in kube.calls} == {SELECTOR}
    assert set(kube.sent) == {(NAMESPACE, "hook"), (NAMESPACE, "labelled")}
    assert discovered.names == ["hook", "labelled"]


async def test_discovery_applies_watch_events(kube: FakeKubeApi) -> None:
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)

    async with discovering(kube) as (_, discovered, _):
        await kube.wait_for_watches(1)
        kube.create_secret(NAMESPACE, "relay", hook_data(), labels=LABELS)
        await wait_until(lambda: discovered.names == ["hook", "relay"])

        kube.update_secret(
            NAMESPACE, "hook", hook_data("http://moved.example/"), labels=LABELS
        )
        await wait_until(
            lambda: (
                getattr(discovered.get("hook"), "url", "") == "http://moved.example/"
            )
        )

        kube.delete_secret(NAMESPACE, "relay")
        await wait_until(lambda: discovered.names == ["hook"])

        kube.update_secret(NAMESPACE, "hook", hook_data(), labels={})
        await wait_until(lambda: discovered.names == [])

    assert len(kube.list_calls()) == 1


async def test_discovery_rewatches_from_last_version(kube: FakeKubeApi) -> None:
    async with discovering(kube, watch_timeout_seconds=2) as (_, discovered, _):
        await kube.wait_for_watches(1)
        created = kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
        await wait_until(lambda: discovered.names == ["hook"])
        await kube.wait_until(lambda: len(kube.watch_calls()) >= 2, WAIT_SECONDS)

    first, second = kube.watch_calls()[:2]
    assert first.query["timeoutSeconds"] == "2"
    assert first.query["allowWatchBookmarks"] == "true"
    assert second.query["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert len(kube.list_calls()) == 1


async def test_discovery_follows_bookmarks(kube: FakeKubeApi) -> None:
    kube.bookmark_interval_seconds = 0.2

    async with discovering(kube, watch_timeout_seconds=1) as _:
        await kube.wait_for_watches(1)
        kube.create_secret(OTHER_NAMESPACE, "elsewhere", hook_data(), labels=LABELS)
        latest = kube.resource_version
        await kube.wait_until(lambda: len(kube.watch_calls()) >= 2, WAIT_SECONDS)

    assert kube.watch_calls()[1].query["resourceVersion"] == latest


async def test_discovery_relists_after_gone(kube: FakeKubeApi) -> None:
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
    kube.create_secret(NAMESPACE, "relay", hook_data(), labels=LABELS)

    async with discovering(kube) as (_, discovered, metrics):
        await kube.wait_for_watches(1)
        # The watch closes before it sends these changes, and the compaction
        # makes its resourceVersion too old to resume from.
        kube.close_watches()
        kube.create_secret(NAMESPACE, "pager", hook_data(), labels=LABELS)
        kube.delete_secret(NAMESPACE, "relay")
        kube.create_secret(NAMESPACE, "unlabelled", hook_data())
        kube.compact()
        await wait_until(lambda: discovered.names == ["hook", "pager"])
        await kube.wait_for_watches(1)

    assert len(kube.list_calls()) == 2
    assert errors(metrics, "api_error") == 0.0


async def test_discovery_skips_invalid_secret(
    kube: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "services.publisher.discovery")
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
    kube.create_secret(
        NAMESPACE,
        "broken",
        {"format": "webhook", "token": TOKEN},
        encoded_data={"url": "%%%"},
        labels=LABELS,
    )

    async with discovering(kube) as (_, discovered, metrics):
        await kube.wait_for_watches(1)
        kube.create_secret(
            NAMESPACE, "bad-format", hook_data(format="telex"), labels=LABELS
        )
        await wait_until(lambda: errors(metrics, "invalid_secret") == 2.0)
        kube.update_secret(NAMESPACE, "broken", hook_data(), labels=LABELS)
        await wait_until(lambda: discovered.names == ["broken", "hook"])

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [getattr(r, "secret", None) for r in warnings] == [
        "secret:team-a/broken",
        "secret:team-a/bad-format",
    ]
    assert "not valid base64" in getattr(warnings[0], "error", "")
    assert "unsupported format" in getattr(warnings[1], "error", "")
    assert TOKEN not in caplog.text
    assert errors(metrics, "invalid_secret") == 2.0


async def test_discovery_retries_after_errors(kube: FakeKubeApi) -> None:
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
    kube.fail_next(403, watch=False)

    async with discovering(kube) as (_, discovered, metrics):
        assert discovered.names == []
        await wait_until(lambda: discovered.names == ["hook"])
        kube.fail_next(500, count=2, watch=True)
        kube.close_watches(abort=True)
        await kube.wait_until(lambda: kube.active_watches >= 1, WAIT_SECONDS)
        kube.create_secret(NAMESPACE, "relay", hook_data(), labels=LABELS)
        await wait_until(lambda: discovered.names == ["hook", "relay"])

    assert errors(metrics, "api_error") >= 3.0


async def test_discovery_resyncs_on_interval(kube: FakeKubeApi) -> None:
    registry = CollectorRegistry()
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)

    def refreshes() -> float:
        count = registry.get_sample_value(
            "alert_history_secret_refresh_duration_seconds_count"
        )
        return count or 0.0

    async with discovering(kube, registry=registry, resync_seconds=1) as _:
        await wait_until(lambda: refreshes() >= 2.0)

    assert len(kube.list_calls()) >= 2
    assert kube.watch_calls()[0].query["timeoutSeconds"] == "1"


async def test_discovery_watches_each_namespace(kube: FakeKubeApi) -> None:
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
    kube.create_secret(OTHER_NAMESPACE, "relay", hook_data(), labels=LABELS)

    async with discovering(kube, [NAMESPACE, OTHER_NAMESPACE]) as (_, discovered, _):
        await kube.wait_for_watches(2)
        kube.delete_secret(OTHER_NAMESPACE, "relay")
        await wait_until(lambda: discovered.names == ["hook"])

    assert {call.namespace for call in kube.list_calls()} == {
        NAMESPACE,
        OTHER_NAMESPACE,
    }


async def test_discovery_close_ends_watches(kube: FakeKubeApi) -> None:
    async with discovering(kube) as _:
        await kube.wait_for_watches(1)
        started = time.monotonic()

    await kube.wait_until(lambda: kube.active_watches == 0, WAIT_SECONDS)
    assert time.monotonic() - started < 5.0


# The publisher service with discovery.


def write_kubeconfig(directory: Path, server: str) -> Path:
    path = directory / "kubeconfig"
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "kube-token"}}],
        "contexts": [
            {"name": "fake", "context": {"cluster": "fake", "user": "tester"}}
        ],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def discovery_settings(
    sqlite_url: str, tmp_path: Path, kube: FakeKubeApi, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "kubeconfig": str(write_kubeconfig(tmp_path, kube.url)),
        "target_discovery_namespaces": NAMESPACE,
        "target_discovery_watch_timeout_seconds": 20,
    }
    values.update(overrides)
    return make_settings(sqlite_url, values.pop("targets_file", None), **values)


async def test_service_delivers_to_discovered_target(
    sqlite_url: str, tmp_path: Path, kube: FakeKubeApi, receiver: Receiver
) -> None:
    registry = CollectorRegistry()
    kube.create_secret(
        NAMESPACE,
        "hook",
        {"url": receiver.url("/discovered"), "format": "webhook", "token": TOKEN},
        labels=LABELS,
    )
    settings = discovery_settings(sqlite_url, tmp_path, kube)

    async with running_publisher(settings, registry) as service:
        listed = service.list_targets()
        response = await service.publish(publish_request("disc-1"))
        await wait_for_delivery(service, "disc-1", lambda r: r.state == "succeeded")
        (request,) = await receiver.wait_for_requests(1, "/discovered")

    assert [(t.name, t.source) for t in listed.targets] == [
        ("hook", "secret:team-a/hook")
    ]
    assert [(t.target, t.created) for t in response.targets] == [("hook", True)]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert kube.calls[0].query["labelSelector"] == SELECTOR
    assert (
        registry.get_sample_value("alert_history_publishing_targets_discovered") == 1.0
    )


async def test_service_discovery_off_uses_file(
    sqlite_url: str, tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
    targets_file = write_targets(
        tmp_path, [{"name": "relay", "format": "webhook", "url": HOOK_URL}]
    )
    settings = discovery_settings(
        sqlite_url,
        tmp_path,
        kube,
        targets_file=targets_file,
        target_discovery_namespaces=None,
    )

    async with running_publisher(settings) as service:
        listed = service.list_targets()

    assert [(t.name, t.source) for t in listed.targets] == [("relay", "file")]
    assert kube.calls == []


async def test_service_file_wins_name_clash(
    sqlite_url: str, tmp_path: Path, kube: FakeKubeApi
) -> None:
    registry = CollectorRegistry()
    kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
    kube.create_secret(NAMESPACE, "relay", hook_data(), labels=LABELS)
    targets_file = write_targets(
        tmp_path, [{"name": "hook", "format": "alertmanager", "url": HOOK_URL}]
    )
    settings = discovery_settings(sqlite_url, tmp_path, kube, targets_file=targets_file)

    async with running_publisher(settings, registry) as service:
        listed = service.list_targets()

    assert [(t.name, t.format, t.source) for t in listed.targets] == [
        ("hook", "alertmanager", "file"),
        ("relay", "webhook", "secret:team-a/relay"),
    ]
    assert (
        registry.get_sample_value(
            "alert_history_target_discovery_errors_total", {"reason": "name_conflict"}
        )
        == 1.0
    )


async def test_service_metrics_only_follows_secrets(
    sqlite_url: str, tmp_path: Path, kube: FakeKubeApi
) -> None:
    registry = CollectorRegistry()
    settings = discovery_settings(sqlite_url, tmp_path, kube)

    def metrics_only() -> float | None:
        return registry.get_sample_value("alert_history_metrics_only_mode")

    async with running_publisher(settings, registry) as service:
        first = await service.publish(publish_request("mo-1"))
        first_gauge = metrics_only()
        await kube.wait_for_watches(1)
        kube.create_secret(NAMESPACE, "hook", hook_data(), labels=LABELS)
        await wait_until(lambda: not service.targets.metrics_only)
        second_gauge = metrics_only()
        kube.delete_secret(NAMESPACE, "hook")
        await wait_until(lambda: service.targets.metrics_only)
        last = await service.publish(publish_request("mo-2"))

    assert first.metrics_only is True
    assert first_gauge == 1.0
    assert second_gauge == 0.0
    assert last.metrics_only is True
    assert metrics_only() == 1.0


def test_kube_client_without_credentials(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(
        sqlite_url,
        None,
        kubeconfig=str(tmp_path / "missing"),
        target_discovery_namespaces=NAMESPACE,
    )

    with pytest.raises(ConfigError, match="cannot load Kubernetes credentials"):
        kube_api_client(settings, environ={})


def test_settings_split_namespaces() -> None:
    settings = load_settings({"TARGET_DISCOVERY_NAMESPACES": " team-a, ,team-b "})

    assert settings.discovery_namespaces() == ["team-a", "team-b"]


def test_settings_reject_bad_namespace() -> None:
    with pytest.raises(ConfigError, match="TARGET_DISCOVERY_NAMESPACES"):
        load_settings({"TARGET_DISCOVERY_NAMESPACES": "team-a,Team_B"})
