"""One trace per webhook across the gateway, history, classifier and publisher.

The services run as processes and export to an in-process OTLP collector.
The edges checked here cross process boundaries in gRPC metadata and through
the two durable queues: work items and delivery records.
"""

from __future__ import annotations

import json

import pytest

from tests.fakes.otlp import CollectedSpan
from tests.telemetry.conftest import SERVICES, TracedMesh, service_name

pytestmark = pytest.mark.e2e

HISTORY = "/alerthistory.history.v1.HistoryService"
CLASSIFIER = "/alerthistory.classifier.v1.ClassifierService"
PUBLISHER = "/alerthistory.publisher.v1.PublisherService"


def find(
    spans: list[CollectedSpan], service: str, name: str, kind: str | None = None
) -> CollectedSpan:
    matches = [
        span
        for span in spans
        if span.service == service_name(service)
        and span.name == name
        and (kind is None or span.kind == kind)
    ]
    assert matches, f"no {kind or ''} span {name!r} of {service}"
    return matches[0]


def parent_of(spans: list[CollectedSpan], span: CollectedSpan) -> CollectedSpan:
    parents = [other for other in spans if other.span_id == span.parent_span_id]
    assert parents, f"parent of {span.name!r} ({span.service}) was not exported"
    return parents[0]


def ancestry(spans: list[CollectedSpan], span: CollectedSpan) -> list[str]:
    """Span ids from `span` up to the first span without an exported parent."""
    by_id = {other.span_id: other for other in spans}
    chain = [span.span_id]
    while span.parent_span_id in by_id and len(chain) <= len(spans):
        span = by_id[span.parent_span_id]
        chain.append(span.span_id)
    return chain


def log_records(traced: TracedMesh, service: str) -> list[dict[str, object]]:
    records = []
    for line in traced.mesh.processes[service].output().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


@pytest.fixture(scope="module")
def spans(traced: TracedMesh) -> list[CollectedSpan]:
    return traced.trace()


@pytest.fixture(scope="module")
def root(traced: TracedMesh) -> CollectedSpan:
    span = traced.root()
    assert span is not None
    return span


def test_trace_root_is_gateway_server_span(root: CollectedSpan):
    assert root.parent_span_id == ""
    assert root.name == "POST /webhook/proxy"


def test_trace_covers_every_service(spans: list[CollectedSpan]):
    services = {span.service for span in spans}

    for name in SERVICES:
        assert service_name(name) in services


def test_trace_store_notification_parent_is_gateway_client(spans):
    server = find(spans, "history", f"{HISTORY}/StoreNotification", "SERVER")
    parent = parent_of(spans, server)

    assert parent.service == service_name("gateway")
    assert parent.kind == "CLIENT"


def test_trace_classify_descends_from_root(spans, root):
    server = find(spans, "classifier", f"{CLASSIFIER}/BatchClassify", "SERVER")

    assert root.span_id in ancestry(spans, server)


def test_trace_publish_descends_from_root(spans, root):
    server = find(spans, "publisher", f"{PUBLISHER}/Publish", "SERVER")

    assert root.span_id in ancestry(spans, server)


def test_trace_work_item_spans_are_children_of_root(spans, root):
    classify = find(spans, "gateway", "classify work batch")
    publish = find(spans, "gateway", "publish work item")

    assert classify.parent_span_id == root.span_id
    assert publish.parent_span_id == root.span_id


def test_trace_model_call_is_child_of_classify(spans):
    server = find(spans, "classifier", f"{CLASSIFIER}/BatchClassify", "SERVER")
    model = [
        span
        for span in spans
        if span.service == service_name("classifier")
        and span.attributes.get("operation") == "classify"
    ]

    assert model, "no model call span"
    assert model[0].parent_span_id == server.span_id
    assert model[0].kind == "CLIENT"
    assert model[0].attributes["status"] == "ok"
    assert model[0].attributes["tokens"] == 100
    assert model[0].attributes["model"]


def test_trace_database_span_is_child_of_store(spans):
    server = find(spans, "history", f"{HISTORY}/StoreNotification", "SERVER")
    queries = [
        span
        for span in spans
        if span.parent_span_id == server.span_id and "db.system" in span.attributes
    ]

    assert queries, "no database span under StoreNotification"
    assert queries[0].attributes["db.system"] in ("sqlite", "postgresql")
    assert queries[0].kind == "CLIENT"


def test_trace_database_spans_carry_no_values(spans, traced: TracedMesh):
    for span in spans:
        if "db.system" in span.attributes:
            assert traced.alertname not in json.dumps(span.attributes)


def test_trace_delivery_descends_from_root(spans, root):
    delivery = find(spans, "publisher", "deliver", "CLIENT")

    assert root.span_id in ancestry(spans, delivery)
    assert delivery.attributes["target"] == "traced-webhook"
    assert delivery.attributes["http.response.status_code"] == 200
    assert delivery.attributes["attempt"] == 1
    assert delivery.attributes["format"] == "webhook"


def test_trace_gateway_logs_carry_trace_id(traced: TracedMesh, root):
    records = [
        record
        for record in log_records(traced, "gateway")
        if record.get("trace_id") == root.trace_id
    ]

    assert any(record["message"] == "work item published" for record in records)


def test_trace_publisher_logs_carry_trace_id(traced: TracedMesh, root):
    records = [
        record
        for record in log_records(traced, "publisher")
        if record.get("trace_id") == root.trace_id
    ]

    assert any(record["message"] == "delivery succeeded" for record in records)
