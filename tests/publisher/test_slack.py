"""The slack format against Block Kit's limits, on the case fixtures."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from services.publisher.encoding import encode_body
from services.publisher.slack import (
    MAX_BLOCKS,
    MAX_FIELDS,
    MAX_HEADER_CHARACTERS,
    MAX_TEXT_CHARACTERS,
    build_slack,
    cut_escaped,
    escape,
)
from services.publisher.targets import Target
from tests.conftest import FIXTURES
from tests.publisher.conftest import classification, fixture_request

SLACK = Target(name="slack", format="slack", url="https://hooks.example/services/x")
# An escaped text may end in a complete entity, never in part of one.
PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}…?$")


def case_request(name: str, severity: str = "warning") -> publisher_pb2.PublishRequest:
    body = json.loads((FIXTURES / "cases" / name / "inbound.json").read_text())
    verdicts = [classification(severity)] * len(body["alerts"])
    return fixture_request(f"cases/{name}/inbound.json", verdicts)


def message(request: publisher_pb2.PublishRequest) -> dict[str, Any]:
    """Build the only message and parse it back from its encoded JSON."""
    (built,) = build_slack(request.notification, list(request.alerts), SLACK)
    parsed: dict[str, Any] = json.loads(encode_body(built.body))
    return parsed


def sections(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [block for block in body["blocks"] if block["type"] == "section"]


def footer(body: dict[str, Any]) -> str:
    last = body["blocks"][-1]
    assert last["type"] == "context"
    return " ".join(element["text"] for element in last["elements"])


def test_slack_r05_section_within_limit() -> None:
    (section,) = sections(message(case_request("r05")))
    text = section["text"]["text"]

    assert len(text) <= MAX_TEXT_CHARACTERS
    assert text.endswith("…")
    assert "&lt;&amp;&gt;" in text
    assert "<&>" not in text


def test_slack_r05_cut_keeps_entities_whole() -> None:
    (section,) = sections(message(case_request("r05")))
    text = section["text"]["text"]

    assert not PARTIAL_ENTITY.search(text[:-1])
    assert text[:-1].endswith(("&lt;", "&amp;", "&gt;"))


def test_slack_r05_blocks_within_limit() -> None:
    assert len(message(case_request("r05"))["blocks"]) <= MAX_BLOCKS


def test_slack_r07_blocks_and_fields_within_limit() -> None:
    body = message(case_request("r07"))

    assert len(body["blocks"]) <= MAX_BLOCKS
    assert all(len(s.get("fields", [])) <= MAX_FIELDS for s in sections(body))


def test_slack_r07_says_how_many_left_out() -> None:
    body = message(case_request("r07"))
    listed = len(sections(body))

    assert listed >= 40
    assert f"and {60 - listed} more alerts not listed here" in footer(body)


def test_slack_r07_header_counts_every_alert() -> None:
    header = message(case_request("r07"))["blocks"][0]["text"]["text"]

    assert "[FIRING:60] TargetDown" in header
    assert len(header) <= MAX_HEADER_CHARACTERS


def test_slack_r16_truncated_shown() -> None:
    body = message(case_request("r16"))

    assert len(sections(body)) == 2
    assert "4998 more not sent by Alertmanager" in footer(body)


def test_slack_r16_not_shown_as_resolved() -> None:
    body = message(case_request("r16"))

    assert "RESOLVED" not in json.dumps(body)


def test_slack_resolved_message_looks_resolved() -> None:
    request = case_request("r16")
    for item in request.alerts:
        item.alert.status = alert_pb2.ALERT_STATUS_RESOLVED
        item.alert.ends_at.FromSeconds(item.alert.starts_at.seconds + 60)

    body = message(request)
    header = body["blocks"][0]["text"]["text"]

    assert header.startswith(":white_check_mark: [RESOLVED:2]")
    assert all("resolved" in s["text"]["text"] for s in sections(body))


@pytest.mark.parametrize(
    ("severity", "emoji"),
    [
        ("critical", ":red_circle:"),
        ("warning", ":large_orange_circle:"),
        ("info", ":large_blue_circle:"),
        ("noise", ":white_circle:"),
    ],
)
def test_slack_severity_emoji(severity: str, emoji: str) -> None:
    body = message(case_request("r16", severity))

    assert body["blocks"][0]["text"]["text"].startswith(emoji)


def test_slack_long_header_cut() -> None:
    request = case_request("r16")
    for item in request.alerts:
        item.alert.labels["alertname"] = "A" * 400

    header = message(request)["blocks"][0]["text"]["text"]

    assert len(header) == MAX_HEADER_CHARACTERS
    assert header.endswith("…")


def test_slack_many_labels_ten_fields() -> None:
    request = case_request("r16")
    request.alerts[0].alert.labels.update({f"l{i:02d}": "v" for i in range(20)})

    first = sections(message(request))[0]

    assert len(first["fields"]) == MAX_FIELDS
    assert first["fields"][-1]["text"] == "*+13 more labels*"


def test_slack_large_group_bounded_by_characters() -> None:
    request = case_request("r07")
    for item in request.alerts:
        item.alert.annotations["description"] = "d" * 5000

    body = message(request)
    characters = sum(len(s["text"]["text"]) for s in sections(body))

    assert characters <= 40_000
    assert "more alerts not listed here" in footer(body)


def test_slack_every_text_escaped() -> None:
    request = case_request("r16")
    request.alerts[0].alert.labels["instance"] = "<b>&</b>"

    text = json.dumps(message(request)["blocks"][1:])

    assert "<b>" not in text
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in text


@pytest.mark.parametrize("limit", range(1, 40))
def test_cut_escaped_limits(limit: int) -> None:
    text = cut_escaped("a<&>b" * 10, limit)

    assert len(text) <= limit
    assert not PARTIAL_ENTITY.search(text.removesuffix("…"))


def test_escape_order() -> None:
    assert escape("&lt;") == "&amp;lt;"
