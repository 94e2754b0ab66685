"""Per-target alert filters.

Every criterion uses the final verdict (`Classification.severity`, after the
severity floor), never the model's own `model_severity`. `drop_reason`
returns the first criterion an alert fails, from the bounded set in
`FILTER_REASONS`, which is also the `reason` label of
alert_history_alerts_filtered_total.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from services.publisher.formats import confidence_of, severity_name
from services.publisher.targets import TargetFilter

FilterReason = Literal["severity", "noise", "namespace", "alertname", "confidence"]
FILTER_REASONS: tuple[FilterReason, ...] = (
    "severity",
    "noise",
    "namespace",
    "alertname",
    "confidence",
)


def drop_reason(
    rules: TargetFilter,
    alert: alert_pb2.Alert,
    classification: alert_pb2.Classification,
) -> FilterReason | None:
    """Return why `rules` drops the alert, or None when it passes.

    A verdict without a severity fails a severity filter, and an alert
    without a `namespace` label fails a namespace filter.
    """
    severity = severity_name(classification.severity)
    if rules.exclude_noise and classification.severity == alert_pb2.SEVERITY_NOISE:
        return "noise"
    if rules.severities is not None and severity not in rules.severities:
        return "severity"
    if rules.namespaces is not None:
        namespace = alert.labels.get("namespace")
        if namespace is None or namespace not in rules.namespaces:
            return "namespace"
    if rules.alertname_patterns:
        name = alert.labels.get("alertname", "")
        if not any(pattern.fullmatch(name) for pattern in rules.alertname_patterns):
            return "alertname"
    if (
        rules.min_confidence is not None
        and confidence_of(classification) < rules.min_confidence
    ):
        return "confidence"
    return None


@dataclass
class FilterResult:
    """The alerts that passed a filter and the reason each other one failed."""

    passed: list[publisher_pb2.PublishAlert] = field(default_factory=list)
    dropped: list[FilterReason] = field(default_factory=list)


def apply_filter(
    rules: TargetFilter, alerts: Sequence[publisher_pb2.PublishAlert]
) -> FilterResult:
    """Split `alerts` into those that pass `rules` and the drop reasons."""
    result = FilterResult()
    for item in alerts:
        reason = drop_reason(rules, item.alert, item.classification)
        if reason is None:
            result.passed.append(item)
        else:
            result.dropped.append(reason)
    return result
