from __future__ import annotations

from pathlib import Path

import pytest

from services.publisher.targets import (
    TargetConfigError,
    endpoint_of,
    load_targets,
    parse_targets_document,
)

VALID = """
- name: oncall-webhook
  format: webhook
  url: https://hooks.example.com/services/T000/B000?token=s3cret
  headers:
    Authorization: Bearer top-secret-token
  filter:
    severity: [critical, warning]
    exclude_noise: true
    namespaces: [shop-prod]
    alertname_patterns: ["Kube.*", "Disk(Full|Slow)"]
    min_confidence: 0.5
- name: am-relay
  format: alertmanager
  url: http://relay.example:9093/api/v2/alerts
  enabled: false
  routing_key: abc
"""


def test_load_valid_targets(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(VALID)

    first, second = load_targets(path)

    assert first.name == "oncall-webhook"
    assert first.format == "webhook"
    assert first.headers == {"Authorization": "Bearer top-secret-token"}
    assert first.enabled is True
    assert first.source == "file"
    assert first.filter.severities == frozenset({"critical", "warning"})
    assert first.filter.exclude_noise is True
    assert first.filter.namespaces == frozenset({"shop-prod"})
    assert [p.pattern for p in first.filter.alertname_patterns] == [
        "Kube.*",
        "Disk(Full|Slow)",
    ]
    assert first.filter.min_confidence == 0.5
    assert second.enabled is False
    assert second.routing_key == "abc"
    assert second.filter.severities is None


def test_load_repr_hides_credentials(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(VALID)

    text = repr(load_targets(path))

    assert "s3cret" not in text
    assert "top-secret-token" not in text
    assert "/services/" not in text


def test_load_unset_is_metrics_only() -> None:
    assert load_targets(None) == []


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "[]\n"])
def test_load_empty_is_metrics_only(tmp_path: Path, text: str) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(text)

    assert load_targets(path) == []


def test_load_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(TargetConfigError) as caught:
        load_targets(path)

    assert str(path) in str(caught.value)
    assert "not found" in str(caught.value)


TARGET = "- name: t1\n  format: webhook\n  url: https://h.example/x?key=SECRET\n"

INVALID_CASES = [
    ("unknown_key", TARGET + "  retries: 3\n", "'t1': unknown key 'retries'"),
    (
        "unknown_filter_key",
        TARGET + "  filter:\n    severities: [critical]\n",
        "'t1' filter: unknown key 'severities'",
    ),
    (
        "missing_name",
        "- format: webhook\n  url: https://h.example/\n",
        "#1: name is missing",
    ),
    (
        "bad_name",
        "- name: 'a b'\n  format: webhook\n  url: https://h.example/\n",
        "#1: name",
    ),
    ("missing_url", "- name: t1\n  format: webhook\n", "'t1': url is missing"),
    (
        "relative_url",
        "- name: t1\n  format: webhook\n  url: /hook\n",
        "'t1': url must be an absolute",
    ),
    (
        "ftp_url",
        "- name: t1\n  format: webhook\n  url: ftp://h.example/\n",
        "'t1': url must be an absolute",
    ),
    (
        "missing_format",
        "- name: t1\n  url: https://h.example/\n",
        "'t1': format is missing",
    ),
    (
        "unknown_format",
        "- name: t1\n  format: teams\n  url: https://h.example/\n",
        "'t1': unsupported format 'teams'",
    ),
    (
        "pagerduty_without_routing_key",
        "- name: t1\n  format: pagerduty\n  url: https://h.example/\n",
        "'t1': routing_key is missing",
    ),
    (
        "duplicate_names",
        TARGET + TARGET,
        "duplicate publishing target name 't1'",
    ),
    (
        "invalid_pattern",
        TARGET + "  filter:\n    alertname_patterns: ['Disk(']\n",
        "'t1': invalid regular expression 'Disk('",
    ),
    (
        "confidence_above_one",
        TARGET + "  filter:\n    min_confidence: 1.5\n",
        "'t1': filter.min_confidence must be between 0 and 1",
    ),
    (
        "confidence_text",
        TARGET + "  filter:\n    min_confidence: high\n",
        "'t1': filter.min_confidence must be a number",
    ),
    (
        "unknown_severity",
        TARGET + "  filter:\n    severity: [page]\n",
        "'t1': filter.severity has unknown value 'page'",
    ),
    (
        "empty_namespaces",
        TARGET + "  filter:\n    namespaces: []\n",
        "'t1': filter.namespaces is an empty list",
    ),
    (
        "enabled_text",
        TARGET + "  enabled: sometimes\n",
        "'t1': enabled must be true or false",
    ),
    (
        "reserved_header",
        TARGET + "  headers:\n    Idempotency-Key: fixed\n",
        "'t1': header 'Idempotency-Key' is set by the publisher",
    ),
    (
        "numeric_header",
        TARGET + "  headers:\n    X-Team: 42\n",
        "'t1': header 'X-Team' must have a string value",
    ),
    (
        "header_twice",
        TARGET + "  headers:\n    X-Team: a\n    x-team: b\n",
        "'t1': header 'x-team' is given twice",
    ),
    (
        "userinfo_and_authorization",
        "- name: t1\n  format: webhook\n  url: https://u:SECRET@h.example/\n"
        "  headers:\n    Authorization: Bearer x\n",
        "'t1': url contains credentials and headers set Authorization",
    ),
    ("not_a_list", "name: t1\n", "must contain a YAML list"),
    (
        "duplicate_key",
        TARGET + "  url: https://other.example/\n",
        "duplicate key 'url'",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"),
    [case[1:] for case in INVALID_CASES],
    ids=[case[0] for case in INVALID_CASES],
)
def test_parse_invalid_target(text: str, message: str) -> None:
    with pytest.raises(TargetConfigError) as caught:
        parse_targets_document(text, "targets.yaml")

    assert message in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [case[1] for case in INVALID_CASES],
    ids=[case[0] for case in INVALID_CASES],
)
def test_parse_error_hides_secret(text: str) -> None:
    with pytest.raises(TargetConfigError) as caught:
        parse_targets_document(text, "targets.yaml")

    assert "SECRET" not in str(caught.value)


def test_parse_header_value_not_echoed() -> None:
    text = TARGET + '  headers:\n    Authorization: "Bearer x\\nInjected: y"\n'

    with pytest.raises(TargetConfigError) as caught:
        parse_targets_document(text, "targets.yaml")

    assert "Bearer" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://user:pw@hooks.example.com/path?token=x", "https://hooks.example.com"),
        ("http://relay.example:9093/api/v2/alerts", "http://relay.example:9093"),
        ("https://[2001:db8::1]:8443/hook", "https://[2001:db8::1]:8443"),
        ("https://Hooks.Example.com", "https://hooks.example.com"),
    ],
)
def test_endpoint_strips_credentials(url: str, endpoint: str) -> None:
    assert endpoint_of(url) == endpoint
