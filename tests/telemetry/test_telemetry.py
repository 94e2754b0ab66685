"""libs.telemetry: configuration from OTEL_* variables, span helpers, and the
in-process hook that lets a test collect the mesh's spans in memory."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from libs import telemetry
from libs.config import ConfigError
from tests.conftest import FIXTURES
from tests.inprocess import InProcessMesh

OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    """Spans of this test's process, through the in-process hook."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.configure_tracing("test", provider=provider)
    yield exporter
    telemetry.reset_tracing()
    provider.shutdown()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT id FROM work_items WHERE id = $1", ("SELECT", "work_items")),
        ("  insert into occurrences (a) values ($1)", ("INSERT", "occurrences")),
        (
            "UPDATE work_items SET x = 1 WHERE id IN (SELECT id FROM other)",
            ("UPDATE", "work_items"),
        ),
        ("DELETE FROM publisher_batches", ("DELETE", "publisher_batches")),
        (
            "CREATE TABLE IF NOT EXISTS schema_migrations (a INT)",
            ("CREATE", "schema_migrations"),
        ),
        ("SELECT pg_advisory_xact_lock(hashtext('x'))", ("SELECT", None)),
    ],
)
def test_statement_summary_cases(query, expected):
    assert telemetry.statement_summary(query) == expected


@pytest.mark.parametrize(
    ("method", "traced"),
    [
        ("/alerthistory.history.v1.HistoryService/StoreNotification", True),
        (b"/alerthistory.publisher.v1.PublisherService/Publish", True),
        ("/alerthistory.history.v1.HistoryService/LeaseWork", False),
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", False),
    ],
)
def test_traced_grpc_call_filter(method, traced):
    assert telemetry.traced_grpc_call(SimpleNamespace(method=method)) is traced


def test_resource_default_service_name(clean_environment):
    resource = telemetry.service_resource("history")

    assert resource.attributes["service.name"] == "alert-history-history"


def test_resource_service_name_from_environment(clean_environment):
    clean_environment.setenv("OTEL_SERVICE_NAME", "history-eu")

    resource = telemetry.service_resource("history")

    assert resource.attributes["service.name"] == "history-eu"


def test_exporter_absent_without_endpoint(clean_environment):
    assert telemetry.exporter_from_environment() is None


def test_exporter_grpc_with_endpoint(clean_environment):
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")

    exporter = telemetry.exporter_from_environment()

    assert isinstance(exporter, OTLPSpanExporter)
    exporter.shutdown()


def test_exporter_absent_when_sdk_disabled(clean_environment):
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    clean_environment.setenv("OTEL_SDK_DISABLED", "true")

    assert telemetry.exporter_from_environment() is None


def test_exporter_absent_when_exporter_none(clean_environment):
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    clean_environment.setenv("OTEL_TRACES_EXPORTER", "none")

    assert telemetry.exporter_from_environment() is None


def test_exporter_unknown_kind_is_config_error(clean_environment):
    clean_environment.setenv("OTEL_TRACES_EXPORTER", "zipkin")

    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        telemetry.exporter_from_environment()


def test_exporter_unknown_protocol_is_config_error(clean_environment):
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    clean_environment.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")

    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        telemetry.exporter_from_environment()


@pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None,
    reason="opentelemetry-exporter-otlp-proto-http is installed",
)
def test_exporter_http_protocol_needs_its_package(clean_environment):
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    clean_environment.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")

    with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-http"):
        telemetry.exporter_from_environment()


def test_disabled_sdk_records_nothing(clean_environment):
    clean_environment.setenv("OTEL_SDK_DISABLED", "true")
    provider = telemetry.build_tracer_provider("history")

    with provider.get_tracer("test").start_as_current_span("request") as span:
        recording = span.is_recording()

    assert not recording
    provider.shutdown()


def test_unconfigured_tracing_adds_no_interceptors():
    assert telemetry.grpc_server_interceptors() == []
    assert telemetry.grpc_client_interceptors() == []


def test_database_span_only_inside_a_trace(memory):
    with telemetry.database_span("sqlite", "SELECT id FROM work_items"):
        pass
    with telemetry.tracer().start_as_current_span("request"):
        with telemetry.database_span("sqlite", "SELECT id FROM work_items"):
            pass

    names = [span.name for span in memory.get_finished_spans()]
    assert names == ["SELECT work_items", "request"]


def test_stored_context_continues_trace(memory):
    with telemetry.tracer().start_as_current_span("webhook") as webhook:
        stored = telemetry.inject_context()
    with telemetry.span_from_context(stored, "later"):
        pass

    later = memory.get_finished_spans()[-1]
    assert later.context.trace_id == webhook.get_span_context().trace_id
    assert later.parent is not None
    assert later.parent.span_id == webhook.get_span_context().span_id


def test_empty_stored_context_starts_trace(memory):
    with telemetry.span_from_context({}, "orphan"):
        assert trace.get_current_span().get_span_context().is_valid

    assert memory.get_finished_spans()[0].parent is None


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_inprocess_mesh_one_trace_per_webhook(memory, tmp_path: Path):
    body = json.loads(
        (FIXTURES / "webhooks" / "01_firing_single_node_filesystem.json").read_text()
    )
    async with InProcessMesh(tmp_path) as mesh:
        status, _ = await mesh.post("/webhook/proxy", body)
        await mesh.wait_until(lambda: by_name(memory.get_finished_spans(), "deliver"))

    spans = memory.get_finished_spans()
    root = by_name(spans, "POST /webhook/proxy")[0]
    delivery = by_name(spans, "deliver")[0]
    assert status == 200
    assert root.parent is None
    assert delivery.context.trace_id == root.context.trace_id
