"""The `slack` format: one Block Kit message per notification for an incoming
webhook.

Slack's Block Kit reference (docs.slack.dev/reference/block-kit) limits a
message to 50 blocks, a header's plain text to 150 characters, a section's
text to 3,000 characters and its fields to 10 of at most 2,000 characters
each. Text in mrkdwn has `&`, `<` and `>` escaped as `&amp;`, `&lt;` and
`&gt;`, and the limits count the escaped text. A group too large for one
message is never dropped: the message lists as many alerts as the limits
allow, then states how many it left out.

Severity is shown by a coloured emoji, because the message uses blocks only
and blocks have no colour bar.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from services.publisher.encoding import (
    ELLIPSIS,
    Body,
    Message,
    confidence_of,
    cut_text,
    format_timestamp,
    severity_name,
)

if TYPE_CHECKING:
    from services.publisher.targets import Target

MAX_BLOCKS = 50
MAX_HEADER_CHARACTERS = 150
MAX_TEXT_CHARACTERS = 3000
MAX_FIELDS = 10
MAX_FIELD_CHARACTERS = 2000
# NOTE: Slack documents no total size for a message's blocks, only that it
# truncates the top-level `text` after 40,000 characters. The same figure
# bounds the alert sections together; it is an estimate, not a documented
# limit.
MAX_MESSAGE_CHARACTERS = 40_000
# Characters of an alert's summary line before the description.
MAX_SUMMARY_CHARACTERS = 500
# A generator URL longer than this is left out of the section.
MAX_LINK_CHARACTERS = 500

EMOJI = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
    "noise": ":white_circle:",
    "unspecified": ":white_circle:",
}
RESOLVED_EMOJI = ":white_check_mark:"
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2, "unspecified": 3, "noise": 4}
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape(text: str) -> str:
    """Escape `&`, `<` and `>` as Slack's mrkdwn requires."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut_escaped(text: str, limit: int) -> str:
    """Escape `text`, then cut it to `limit` characters ending in an ellipsis.

    The cut never splits an escape sequence or a character from its
    combining marks.
    """
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    budget = limit - len(ELLIPSIS)
    size = 0
    end = 0
    for char in text:
        piece = _ESCAPES.get(char, char)
        if size + len(piece) > budget:
            break
        size += len(piece)
        end += 1
    while 0 < end < len(text) and unicodedata.combining(text[end]):
        end -= 1
    return escape(text[:end]) + ELLIPSIS


@dataclass(frozen=True)
class _AlertBlock:
    block: Body
    characters: int


def build_slack(
    notification: alert_pb2.Notification,
    alerts: Sequence[publisher_pb2.PublishAlert],
    target: Target,
) -> list[Message]:
    """Build one message listing the alerts while Slack's limits allow."""
    ordered = sorted(alerts, key=_display_order)
    firing = sum(1 for item in alerts if _is_firing(item))
    title = _header_text(notification, alerts, firing)
    blocks: list[Body] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": cut_text(title, MAX_HEADER_CHARACTERS),
                "emoji": True,
            },
        },
        _context([_group_text(notification)]),
    ]
    alert_blocks = [_alert_block(item) for item in ordered]
    shown = _fit(alert_blocks, notification.truncated_alerts > 0)
    blocks.extend(block.block for block in alert_blocks[:shown])
    footer = _footer(len(alerts) - shown, notification.truncated_alerts)
    if footer:
        blocks.append(_context(footer))
    body: Body = {
        "text": cut_escaped(title, MAX_TEXT_CHARACTERS),
        "blocks": blocks,
    }
    return [Message(body, tuple(alerts))]


def _fit(alert_blocks: Sequence[_AlertBlock], truncated: bool) -> int:
    """Return how many alert blocks fit beside the header and group context.

    One block stays free for the footer whenever a footer is needed.
    """
    fixed = 2
    if not truncated and len(alert_blocks) <= MAX_BLOCKS - fixed:
        total = sum(block.characters for block in alert_blocks)
        if total <= MAX_MESSAGE_CHARACTERS:
            return len(alert_blocks)
    room = MAX_BLOCKS - fixed - 1
    characters = 0
    for count, block in enumerate(alert_blocks[:room]):
        characters += block.characters
        if characters > MAX_MESSAGE_CHARACTERS and count > 0:
            return count
    return min(room, len(alert_blocks))


def _display_order(item: publisher_pb2.PublishAlert) -> tuple[int, int]:
    severity = severity_name(item.classification.severity)
    return (0 if _is_firing(item) else 1, SEVERITY_RANK.get(severity, 3))


def _is_firing(item: publisher_pb2.PublishAlert) -> bool:
    return item.alert.status == alert_pb2.ALERT_STATUS_FIRING


def _emoji(item: publisher_pb2.PublishAlert) -> str:
    if not _is_firing(item):
        return RESOLVED_EMOJI
    return EMOJI.get(severity_name(item.classification.severity), EMOJI["unspecified"])


def _header_text(
    notification: alert_pb2.Notification,
    alerts: Sequence[publisher_pb2.PublishAlert],
    firing: int,
) -> str:
    resolved = len(alerts) - firing
    counts = []
    if firing:
        counts.append(f"FIRING:{firing}")
    if resolved:
        counts.append(f"RESOLVED:{resolved}")
    firing_items = [item for item in alerts if _is_firing(item)]
    emoji = (
        _emoji(min(firing_items, key=_display_order))
        if firing_items
        else (RESOLVED_EMOJI)
    )
    return f"{emoji} [{', '.join(counts)}] {_title(notification, alerts)}"


def _title(
    notification: alert_pb2.Notification,
    alerts: Sequence[publisher_pb2.PublishAlert],
) -> str:
    names = {item.alert.labels.get("alertname", "") for item in alerts}
    if len(names) == 1 and "" not in names:
        return names.pop()
    if notification.group_labels:
        return ", ".join(
            f"{k}={v}" for k, v in sorted(notification.group_labels.items())
        )
    return "alerts"


def _group_text(notification: alert_pb2.Notification) -> str:
    text = f"*Receiver:* {cut_escaped(notification.receiver, 1000) or '-'}"
    if notification.group_labels:
        labels = ", ".join(
            f"{k}={v}" for k, v in sorted(notification.group_labels.items())
        )
        text += f" · *Group:* {cut_escaped(labels, 1800)}"
    return text


def _context(texts: Sequence[str]) -> Body:
    return {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": text} for text in texts],
    }


def _footer(left_out: int, truncated: int) -> list[str]:
    texts = []
    if left_out:
        texts.append(
            f"…and {left_out} more alerts not listed here: a Slack message holds "
            f"at most {MAX_BLOCKS} blocks. The alert history has every one."
        )
    if truncated:
        texts.append(f"…and {truncated} more not sent by Alertmanager.")
    return texts


def _alert_block(item: publisher_pb2.PublishAlert) -> _AlertBlock:
    text = _alert_text(item)
    fields = _label_fields(item.alert)
    block: Body = {"type": "section", "text": {"type": "mrkdwn", "text": text}}
    if fields:
        block["fields"] = [{"type": "mrkdwn", "text": field} for field in fields]
    return _AlertBlock(block, len(text) + sum(len(field) for field in fields))


def _alert_text(item: publisher_pb2.PublishAlert) -> str:
    """Return the section text; only the description at its end is cut."""
    alert = item.alert
    classification = item.classification
    name = alert.labels.get("alertname", "") or f"alert {alert.fingerprint}"
    status = "firing" if _is_firing(item) else "resolved"
    title = (
        f"{_emoji(item)} *{cut_escaped(name, 200)}* · "
        f"{severity_name(classification.severity)} "
        f"({confidence_of(classification):.0%}) · {status}"
    )
    lines = [title]
    summary = alert.annotations.get("summary", "") or alert.annotations.get(
        "message", ""
    )
    if summary:
        lines.append(cut_escaped(summary, MAX_SUMMARY_CHARACTERS))
    lines.append(_times(alert))
    link = _link(alert.generator_url)
    if link:
        lines.append(link)
    text = "\n".join(lines)
    description = alert.annotations.get("description", "")
    room = MAX_TEXT_CHARACTERS - len(text) - 1
    if description and room > len(ELLIPSIS):
        text += "\n" + cut_escaped(description, room)
    return text


def _times(alert: alert_pb2.Alert) -> str:
    text = f"Started {format_timestamp(alert.starts_at)}"
    if alert.status == alert_pb2.ALERT_STATUS_RESOLVED and alert.HasField("ends_at"):
        text += f", resolved {format_timestamp(alert.ends_at)}"
    return text


def _link(url: str) -> str:
    if not url or len(url) > MAX_LINK_CHARACTERS or "|" in url:
        return ""
    return f"<{escape(url)}|Source>"


def _label_fields(alert: alert_pb2.Alert) -> list[str]:
    labels = [
        (name, value)
        for name, value in sorted(alert.labels.items())
        if name != "alertname"
    ]
    shown = labels if len(labels) <= MAX_FIELDS else labels[: MAX_FIELDS - 1]
    fields = [_field(name, value) for name, value in shown]
    if len(shown) < len(labels):
        fields.append(f"*+{len(labels) - len(shown)} more labels*")
    return fields


def _field(name: str, value: str) -> str:
    head = f"*{cut_escaped(name, 200)}*\n"
    return head + cut_escaped(value, MAX_FIELD_CHARACTERS - len(head))
