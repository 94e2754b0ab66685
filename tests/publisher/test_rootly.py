"""The rootly format: one alert body per alert."""

from __future__ import annotations

import json
from typing import Any

from alerthistory.alert.v1 import alert_pb2
from services.publisher.encoding import encode_body
from services.publisher.rootly import build_rootly
from services.publisher.targets import Target
from tests.publisher.conftest import classification, fixture_request

ROOTLY = Target(
    name="rootly",
    format="rootly",
    url="https://webhooks.example/generic",
    headers={"Authorization": "Bearer secret"},
)


def bodies(path: str, count: int) -> list[dict[str, Any]]:
    request = fixture_request(path, [classification("critical", 0.8)] * count)
    messages = build_rootly(request.notification, list(request.alerts), ROOTLY)
    return [json.loads(encode_body(message.body)) for message in messages]


def test_rootly_fields() -> None:
    (body,) = bodies("cases/r03/inbound.json", 1)

    assert body["title"] == "InfoInhibitor: Info-level alert inhibition."
    assert body["status"] == "firing"
    assert body["severity"] == "critical"
    assert body["external_id"] == "00000000000000a3"
    assert body["labels"]["namespace"] == "kube-system"
    assert body["classification"]["confidence"] == 0.8
    assert body["ended_at"] is None


def test_rootly_one_body_per_alert() -> None:
    found = bodies("webhooks/04_mixed_firing_resolved_host_cpu.json", 3)

    assert [b["external_id"] for b in found] == [
        "c335efc828f0dbd7",
        "b21873ebbb91dfac",
        "d6f2236c72c9808e",
    ]
    assert [b["status"] for b in found] == ["firing", "firing", "resolved"]


def test_rootly_order_key_per_fingerprint() -> None:
    request = fixture_request("cases/r16/inbound.json", [classification()] * 2)
    ending = fixture_request("cases/r16/inbound.json", [classification()] * 2)
    for item in ending.alerts:
        item.alert.status = alert_pb2.ALERT_STATUS_RESOLVED

    firing = build_rootly(request.notification, list(request.alerts), ROOTLY)
    resolved = build_rootly(ending.notification, list(ending.alerts), ROOTLY)

    assert [m.order_key for m in firing] == [m.order_key for m in resolved]
