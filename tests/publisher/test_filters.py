from __future__ import annotations

import re
from typing import Any

import pytest

from alerthistory.alert.v1 import alert_pb2
from services.publisher.filters import FILTER_REASONS, apply_filter, drop_reason
from services.publisher.targets import TargetFilter
from tests.publisher.conftest import publish_alert


def rules(**values: Any) -> TargetFilter:
    if "alertname_patterns" in values:
        values["alertname_patterns"] = tuple(
            re.compile(p) for p in values["alertname_patterns"]
        )
    for key in ("severities", "namespaces"):
        if key in values:
            values[key] = frozenset(values[key])
    return TargetFilter(**values)


CASES = [
    ("no_filter_passes", {}, {}, None),
    ("severity_match", {"severities": ["critical"]}, {}, None),
    (
        "severity_uses_final_verdict",
        {"severities": ["critical"]},
        {"severity": "warning"},
        "severity",
    ),
    ("noise_excluded", {"exclude_noise": True}, {"severity": "noise"}, "noise"),
    ("noise_kept_without_flag", {}, {"severity": "noise"}, None),
    ("warning_not_noise", {"exclude_noise": True}, {"severity": "warning"}, None),
    ("namespace_match", {"namespaces": ["db"]}, {}, None),
    ("namespace_other", {"namespaces": ["shop"]}, {}, "namespace"),
    (
        "namespace_missing",
        {"namespaces": ["db"]},
        {"labels": {"alertname": "DiskFull"}},
        "namespace",
    ),
    ("pattern_full_match", {"alertname_patterns": ["Disk.*"]}, {}, None),
    ("pattern_prefix_only", {"alertname_patterns": ["Disk"]}, {}, "alertname"),
    ("pattern_any_of", {"alertname_patterns": ["Kube.*", "DiskFull"]}, {}, None),
    (
        "pattern_without_alertname",
        {"alertname_patterns": [".+"]},
        {"labels": {"service": "checkout"}},
        "alertname",
    ),
    ("confidence_equal_passes", {"min_confidence": 0.9}, {"confidence": 0.9}, None),
    ("confidence_below", {"min_confidence": 0.8}, {"confidence": 0.79}, "confidence"),
]


@pytest.mark.parametrize(
    ("filter_values", "alert_values", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_drop_reason_table(
    filter_values: dict[str, Any], alert_values: dict[str, Any], reason: str | None
) -> None:
    item = publish_alert(**alert_values)

    assert (
        drop_reason(rules(**filter_values), item.alert, item.classification) == reason
    )


def test_drop_reason_unspecified_severity() -> None:
    item = publish_alert()
    item.classification.severity = alert_pb2.SEVERITY_UNSPECIFIED

    reason = drop_reason(
        rules(severities=["critical"]), item.alert, item.classification
    )

    assert reason == "severity"


def test_drop_reason_model_severity_ignored() -> None:
    item = publish_alert(severity="critical")
    item.classification.model_severity = alert_pb2.SEVERITY_INFO

    reason = drop_reason(
        rules(severities=["critical"]), item.alert, item.classification
    )

    assert reason is None


def test_apply_filter_splits_alerts() -> None:
    alerts = [
        publish_alert(severity="critical", fingerprint="a"),
        publish_alert(severity="noise", fingerprint="b"),
        publish_alert(severity="warning", fingerprint="c"),
    ]

    result = apply_filter(
        rules(severities=["critical", "warning"], exclude_noise=True), alerts
    )

    assert [item.alert.fingerprint for item in result.passed] == ["a", "c"]
    assert result.dropped == ["noise"]


def test_filter_reasons_bounded() -> None:
    assert set(FILTER_REASONS) == {
        "severity",
        "noise",
        "namespace",
        "alertname",
        "confidence",
    }
