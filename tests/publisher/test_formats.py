from __future__ import annotations

import json
import math
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from alerthistory.publisher.v1 import publisher_pb2
from libs.alerts import parse_notification
from services.publisher.filters import apply_filter
from services.publisher.formats import (
    FORMATS,
    build_alertmanager,
    build_webhook,
    encode_body,
    format_timestamp,
)
from services.publisher.targets import Target, TargetFilter
from tests.conftest import FIXTURES
from tests.publisher.conftest import classification, fixture_request

WEBHOOK = Target(name="hook", format="webhook", url="https://h.example/")
ALERTMANAGER = Target(name="am", format="alertmanager", url="https://h.example/")


def render(builder: Any, request: publisher_pb2.PublishRequest) -> tuple[str, Any]:
    (message,) = builder(request.notification, list(request.alerts), WEBHOOK)
    text = encode_body(message.body)
    return text, json.loads(text)


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in [key, *strings_in(item)]]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def grouped_request() -> publisher_pb2.PublishRequest:
    return fixture_request(
        "webhooks/03_grouped_firing_kubepodnotready.json",
        [
            classification("critical", 0.95, "Checkout pod not ready."),
            classification("warning", 0.7, "Second checkout replica."),
            classification("noise", 0.4, "Cart API flaps."),
            classification("info", 0.55, ""),
        ],
    )


def mixed_request() -> publisher_pb2.PublishRequest:
    return fixture_request(
        "webhooks/04_mixed_firing_resolved_host_cpu.json",
        [classification("warning", 0.8, "CPU high.")] * 3,
    )


def test_formats_registry_names() -> None:
    assert sorted(FORMATS) == [
        "alertmanager",
        "pagerduty",
        "rootly",
        "slack",
        "webhook",
    ]


def test_webhook_metadata() -> None:
    _, body = render(build_webhook, grouped_request())

    assert body["version"] == "1"
    assert body["receiver"] == "Default"
    assert body["status"] == "firing"
    assert body["group_key"] == '{}:{namespace="shop-prod"}'
    assert body["group_labels"] == {"namespace": "shop-prod"}
    assert body["external_url"] == "http://alertmanager.example.internal:9093"
    assert body["truncated_alerts"] == 0
    assert body["common_labels"]["alertname"] == "KubePodNotReady"
    assert "pod" not in body["common_labels"]


def test_webhook_alert_fields() -> None:
    _, body = render(build_webhook, grouped_request())
    alert = body["alerts"][0]

    assert alert["fingerprint"] == "41008caa60fccf9f"
    assert alert["status"] == "firing"
    assert alert["labels"]["pod"] == "checkout-7d9f8b6c4-2xkqp"
    assert alert["annotations"]["runbook_url"].startswith("https://runbooks.")
    assert alert["starts_at"] == "2026-08-21T09:40:10.51Z"
    assert alert["ends_at"] is None
    assert alert["generator_url"].startswith("http://prometheus-k8s-0.")
    assert alert["classification"] == {
        "severity": "critical",
        "confidence": 0.95,
        "reasoning": "Checkout pod not ready.",
        "source": "rules",
        "flags": ["severity_floor"],
    }


def test_webhook_resolved_ends_at() -> None:
    _, body = render(build_webhook, mixed_request())

    assert body["alerts"][2]["ends_at"] == "2026-08-22T14:31:45.021Z"


def test_webhook_truncated_alerts_carried() -> None:
    request = fixture_request(
        "webhooks/10_template_quirks_truncated.json", [classification()] * 2
    )

    _, body = render(build_webhook, request)

    assert body["truncated_alerts"] == 1


def test_alertmanager_keeps_only_filtered() -> None:
    request = grouped_request()
    result = apply_filter(
        TargetFilter(severities=frozenset({"critical", "warning"})), request.alerts
    )

    (message,) = build_alertmanager(request.notification, result.passed, ALERTMANAGER)
    parsed = json.loads(encode_body(message.body))

    assert [a["fingerprint"] for a in parsed["alerts"]] == [
        "41008caa60fccf9f",
        "9994d268c9790c02",
    ]


def test_alertmanager_llm_labels() -> None:
    _, body = render(build_alertmanager, grouped_request())
    alert = body["alerts"][0]

    assert alert["labels"]["llm_severity"] == "critical"
    assert alert["labels"]["llm_confidence"] == "0.95"
    assert alert["annotations"]["llm_reasoning"] == "Checkout pod not ready."
    assert alert["labels"]["severity"] == "warning"


def test_alertmanager_empty_reasoning_omitted() -> None:
    _, body = render(build_alertmanager, grouped_request())

    assert "llm_reasoning" not in body["alerts"][3]["annotations"]


def test_alertmanager_fields_as_sent() -> None:
    original = json.loads(
        (FIXTURES / "webhooks/04_mixed_firing_resolved_host_cpu.json").read_text()
    )

    _, body = render(build_alertmanager, mixed_request())

    for sent, received in zip(body["alerts"], original["alerts"], strict=True):
        for key in ("status", "startsAt", "endsAt", "generatorURL", "fingerprint"):
            assert sent[key] == received[key], key
        extra = {k: v for k, v in sent["labels"].items() if not k.startswith("llm_")}
        assert extra == received["labels"]


def test_alertmanager_zero_ends_at() -> None:
    _, body = render(build_alertmanager, grouped_request())

    assert body["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"


def test_alertmanager_top_level() -> None:
    _, body = render(build_alertmanager, mixed_request())

    assert body["version"] == "4"
    assert body["groupKey"] == '{}/{team="infra"}:{alertname="HostHighCpuLoad"}'
    assert body["receiver"] == "ops\\.pager"
    assert body["status"] == "firing"
    assert body["truncatedAlerts"] == 0
    assert body["notification_reason"] == "some alerts resolved"
    assert body["commonLabels"]["llm_severity"] == "warning"
    assert "instance" not in body["commonLabels"]


def test_alertmanager_body_parses_as_webhook() -> None:
    _, body = render(build_alertmanager, grouped_request())

    notification = parse_notification(body)

    assert len(notification.alerts) == 4


def test_alertmanager_resolved_only_status() -> None:
    request = mixed_request()
    resolved = [
        item for item in request.alerts if item.alert.fingerprint == "d6f2236c72c9808e"
    ]

    (message,) = build_alertmanager(request.notification, resolved, ALERTMANAGER)

    assert message.body["status"] == "resolved"


@pytest.mark.parametrize("builder", [build_webhook, build_alertmanager])
def test_unnamed_alert_no_none_text(builder: Any) -> None:
    request = fixture_request(
        "cases/r10/inbound.json", [classification("warning", 0.6, "")]
    )

    text, body = render(builder, request)

    assert "None" not in text
    assert all("null" not in value for value in strings_in(body))


@pytest.mark.parametrize("builder", [build_webhook, build_alertmanager])
def test_unicode_round_trip(builder: Any) -> None:
    request = fixture_request(
        "webhooks/05_unicode_ceph_temperature.json", [classification()] * 2
    )
    original = json.loads(
        (FIXTURES / "webhooks/05_unicode_ceph_temperature.json").read_text()
    )

    _, body = render(builder, request)

    sent = body["alerts"][0]["labels"]
    received = original["alerts"][0]["labels"]
    for key in ("datacenter", "owner", "rack"):
        assert sent[key] == received[key], key


def test_confidence_nan_becomes_zero() -> None:
    request = grouped_request()
    request.alerts[0].classification.confidence = math.nan

    _, body = render(build_webhook, request)

    assert body["alerts"][0]["classification"]["confidence"] == 0.0


@pytest.mark.parametrize(
    ("seconds", "nanos", "text"),
    [
        (1_714_557_600, 0, "2024-05-01T10:00:00Z"),
        (1_714_557_600, 500_000_000, "2024-05-01T10:00:00.5Z"),
        (1_714_557_600, 123_456_789, "2024-05-01T10:00:00.123456789Z"),
        (1_714_557_600, 1_000, "2024-05-01T10:00:00.000001Z"),
    ],
)
def test_format_timestamp_like_go(seconds: int, nanos: int, text: str) -> None:
    assert format_timestamp(Timestamp(seconds=seconds, nanos=nanos)) == text
