"""Every service's /metrics, scraped from the running processes after a webhook.

Label values must stay bounded: a label that carried a fingerprint or a URL
path would create one time series per alert or per request.
"""

from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.harness import GRPC_SERVICES
from tests.telemetry.conftest import TracedMesh

pytestmark = pytest.mark.e2e

FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")
GRPC_HANDLED = "alert_history_grpc_server_handled_total"
GRPC_SECONDS = "alert_history_grpc_server_handling_seconds_count"


def scrape(url: str) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


@pytest.fixture(scope="module")
def samples(traced: TracedMesh) -> dict[str, list[Sample]]:
    mesh = traced.mesh
    scraped = {
        name: scrape(f"http://127.0.0.1:{mesh.metrics_ports[name]}/metrics")
        for name in GRPC_SERVICES
    }
    scraped["gateway"] = scrape(f"{mesh.url}/metrics")
    return scraped


def grpc_methods(samples: list[Sample]) -> set[tuple[str, str]]:
    return {
        (sample.labels["grpc_method"], sample.labels["grpc_code"])
        for sample in samples
        if sample.name == GRPC_HANDLED
    }


@pytest.mark.parametrize(
    ("service", "method"),
    [
        ("history", "StoreNotification"),
        ("classifier", "BatchClassify"),
        ("publisher", "Publish"),
    ],
)
def test_metrics_grpc_calls_by_method_and_code(samples, service, method):
    assert (method, "OK") in grpc_methods(samples[service])


@pytest.mark.parametrize("service", GRPC_SERVICES)
def test_metrics_grpc_latency_by_method(samples, service):
    methods = {
        sample.labels["grpc_method"]
        for sample in samples[service]
        if sample.name == GRPC_SECONDS
    }

    assert methods


@pytest.mark.parametrize("service", [*GRPC_SERVICES, "gateway"])
def test_metrics_labels_hold_no_fingerprint(samples, traced, service):
    values = {value for sample in samples[service] for value in sample.labels.values()}

    assert traced.fingerprint not in values
    assert not [value for value in values if FINGERPRINT.match(value)]


@pytest.mark.parametrize("service", [*GRPC_SERVICES, "gateway"])
def test_metrics_labels_hold_no_url_path(samples, service):
    values = {value for sample in samples[service] for value in sample.labels.values()}

    assert not [value for value in values if value.startswith("/")]
    assert not [value for value in values if "://" in value]
