"""An in-process OTLP trace collector that keeps every span it receives.

It implements `opentelemetry.proto.collector.trace.v1.TraceService/Export`
on a grpc.aio server on 127.0.0.1. Services export to it when started with
OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint.

In an async test:

    async with OtlpCollector() as collector:
        ... collector.spans ...

From synchronous code, such as a test that runs the services as processes,
`OtlpCollector.in_thread()` serves it from an event loop of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.common.v1 import common_pb2

SPAN_KINDS = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}


@dataclass(frozen=True)
class CollectedSpan:
    """One received span, with ids as lowercase hex ('' for no parent)."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


def spans_of(
    request: trace_service_pb2.ExportTraceServiceRequest,
) -> list[CollectedSpan]:
    """Flatten an export request into spans tagged with their service.name."""
    collected = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                collected.append(
                    CollectedSpan(
                        service=service,
                        name=span.name,
                        kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        status_code=span.status.code,
                    )
                )
    return collected


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, collector: OtlpCollector) -> None:
        self.collector = collector

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.collector.add(spans_of(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpCollector:
    """Collects spans exported over OTLP/gRPC; safe to read from any thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._spans: list[CollectedSpan] = []
        self._lock = threading.Lock()
        self._server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        """The value for OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://{self.host}:{self.port}"

    @property
    def spans(self) -> list[CollectedSpan]:
        with self._lock:
            return list(self._spans)

    def add(self, spans: list[CollectedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)

    def trace(self, trace_id: str) -> list[CollectedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def start(self) -> None:
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _TraceService(self), self._server
        )
        self.port = self._server.add_insecure_port(f"{self.host}:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    async def __aenter__(self) -> OtlpCollector:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @classmethod
    @contextmanager
    def in_thread(cls, host: str = "127.0.0.1") -> Iterator[OtlpCollector]:
        """Run a collector on its own event loop in a daemon thread."""
        collector = cls(host)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name="otlp-collector", daemon=True
        )
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(collector.start(), loop).result(10)
            yield collector
        finally:
            asyncio.run_coroutine_threadsafe(collector.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
