"""The pagerduty format against the Events API v2 limits, on the case fixtures."""

from __future__ import annotations

import json
from typing import Any

import pytest

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from services.publisher.encoding import encode_body
from services.publisher.pagerduty import (
    MAX_EVENT_BYTES,
    build_pagerduty,
    dedup_key,
)
from services.publisher.targets import Target, parse_targets_document
from tests.conftest import FIXTURES
from tests.publisher.conftest import classification, fixture_request, publish_alert

ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"
PAGERDUTY = Target(
    name="pd",
    format="pagerduty",
    url="https://events.example/v2/enqueue",
    routing_key=ROUTING_KEY,
)
PAGERDUTY_SEVERITIES = {"critical", "error", "warning", "info"}


def events(request: publisher_pb2.PublishRequest) -> list[dict[str, Any]]:
    """Build the events and parse each back from its encoded JSON."""
    messages = build_pagerduty(request.notification, list(request.alerts), PAGERDUTY)
    return [json.loads(encode_body(message.body)) for message in messages]


def case_request(name: str, severity: str = "critical") -> publisher_pb2.PublishRequest:
    return fixture_request(f"cases/{name}/inbound.json", [classification(severity)])


def case_alert(name: str) -> dict[str, Any]:
    body = json.loads((FIXTURES / "cases" / name / "inbound.json").read_text())
    alert: dict[str, Any] = body["alerts"][0]
    return alert


def resolved(item: publisher_pb2.PublishAlert) -> publisher_pb2.PublishAlert:
    copy = publisher_pb2.PublishAlert()
    copy.CopyFrom(item)
    copy.alert.status = alert_pb2.ALERT_STATUS_RESOLVED
    copy.alert.ends_at.FromSeconds(copy.alert.starts_at.seconds + 600)
    return copy


def test_pagerduty_one_event_per_alert() -> None:
    request = fixture_request(
        "webhooks/03_grouped_firing_kubepodnotready.json", [classification()] * 4
    )

    messages = build_pagerduty(request.notification, list(request.alerts), PAGERDUTY)

    assert len(messages) == 4
    assert [len(message.alerts) for message in messages] == [1, 1, 1, 1]
    assert len({message.order_key for message in messages}) == 4


def test_pagerduty_trigger_fields() -> None:
    (event,) = events(case_request("r03", "warning"))

    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert event["payload"]["severity"] == "warning"
    assert event["payload"]["summary"] == "InfoInhibitor: Info-level alert inhibition."
    assert event["payload"]["source"] == "kube-system"
    assert event["payload"]["timestamp"] == "2024-05-01T10:00:00Z"
    assert event["payload"]["class"] == "InfoInhibitor"
    assert event["links"] == [
        {"href": "http://prometheus.example:9090/graph", "text": "Source"}
    ]
    assert event["client_url"] == "http://alertmanager.example:9093"


def test_pagerduty_resolve_only_keys() -> None:
    request = case_request("r03")
    request.alerts[0].CopyFrom(resolved(request.alerts[0]))

    (event,) = events(request)

    assert sorted(event) == ["dedup_key", "event_action", "routing_key"]
    assert event["event_action"] == "resolve"


def test_pagerduty_dedup_key_shared_by_resolve() -> None:
    firing = case_request("r03")
    ending = case_request("r03")
    ending.alerts[0].CopyFrom(resolved(ending.alerts[0]))

    (trigger,) = events(firing)
    (resolve,) = events(ending)

    assert trigger["dedup_key"] == resolve["dedup_key"]


def test_pagerduty_dedup_key_differs_per_occurrence() -> None:
    first = publish_alert()
    later = publish_alert()
    later.alert.starts_at.FromSeconds(first.alert.starts_at.seconds + 3600)

    assert dedup_key(first.alert) != dedup_key(later.alert)


def test_pagerduty_dedup_key_without_sent_fingerprint() -> None:
    path = "webhooks/08_legacy_shape_wikimedia_page.json"
    firing = fixture_request(path, [classification()] * 2)
    ending = fixture_request(path, [classification()] * 2)
    for item in ending.alerts:
        item.CopyFrom(resolved(item))

    triggers = events(firing)
    resolves = events(ending)

    assert [e["dedup_key"] for e in triggers] == [e["dedup_key"] for e in resolves]
    assert len({e["dedup_key"] for e in triggers}) == 2
    assert all(len(e["dedup_key"]) <= 255 for e in triggers)


def test_pagerduty_long_fingerprint_hashed() -> None:
    item = publish_alert(fingerprint="f" * 300)

    key = dedup_key(item.alert)

    assert len(key) <= 255
    assert key == dedup_key(publish_alert(fingerprint="f" * 300).alert)
    assert key != dedup_key(publish_alert(fingerprint="f" * 301).alert)


def test_pagerduty_r01_summary_cut() -> None:
    full = case_alert("r01")["annotations"]["summary"]

    (event,) = events(case_request("r01"))
    summary = event["payload"]["summary"]

    assert len(summary) <= 1024
    assert summary.endswith("…")
    assert f"LongSummary: {full}".startswith(summary[:-1])
    assert summary.encode("utf-8").decode("utf-8") == summary


def test_pagerduty_r01_full_text_in_details() -> None:
    annotations = case_alert("r01")["annotations"]

    (event,) = events(case_request("r01"))
    details = event["payload"]["custom_details"]

    assert annotations["summary"] in details["summary"]
    assert details["description"] == annotations["description"]


def test_pagerduty_r02_event_within_limit() -> None:
    request = case_request("r02")
    (message,) = build_pagerduty(request.notification, list(request.alerts), PAGERDUTY)

    text = encode_body(message.body)
    event = json.loads(text)

    assert len(text.encode("utf-8")) <= MAX_EVENT_BYTES
    assert event["payload"]["summary"] == "HugeDetails: huge details"
    assert event["payload"]["custom_details"]["cut_fields"] == ["description"]
    assert "characters removed]" in event["payload"]["custom_details"]["description"]


def test_pagerduty_r02_keeps_most_of_description() -> None:
    (event,) = events(case_request("r02"))

    assert len(event["payload"]["custom_details"]["description"]) > 400_000


def test_pagerduty_many_large_labels_replaced() -> None:
    labels = {f"label_{index:04d}": "v" * 400 for index in range(2000)}
    labels["alertname"] = "ManyLabels"
    request = fixture_request("cases/r03/inbound.json", [classification()])
    request.alerts[0].alert.labels.clear()
    request.alerts[0].alert.labels.update(labels)

    (message,) = build_pagerduty(request.notification, list(request.alerts), PAGERDUTY)
    details = message.body["payload"]["custom_details"]

    assert len(encode_body(message.body).encode("utf-8")) <= MAX_EVENT_BYTES
    assert details["cut"].startswith("custom_details removed")
    assert message.body["payload"]["summary"].startswith("ManyLabels")


@pytest.mark.parametrize("severity", ["critical", "warning", "info", "noise"])
def test_pagerduty_severity_allowed(severity: str) -> None:
    (event,) = events(case_request("r03", severity))

    assert event["payload"]["severity"] in PAGERDUTY_SEVERITIES


def test_pagerduty_unclassified_is_error() -> None:
    request = case_request("r03")
    request.alerts[0].classification.severity = alert_pb2.SEVERITY_UNSPECIFIED

    (event,) = events(request)

    assert event["payload"]["severity"] == "error"


def test_pagerduty_noise_dropped_by_default() -> None:
    (target,) = parse_targets_document(
        "- {name: pd, format: pagerduty, url: 'https://e.example/', routing_key: k}",
        "targets.yaml",
    )

    assert target.noise_policy == "drop"
    assert target.filter.exclude_noise is True


def test_pagerduty_noise_policy_info_keeps_noise() -> None:
    (target,) = parse_targets_document(
        "- {name: pd, format: pagerduty, url: 'https://e.example/', routing_key: k,"
        " noise_policy: info}",
        "targets.yaml",
    )

    assert target.filter.exclude_noise is False
