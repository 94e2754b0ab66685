"""OpenTelemetry tracing: one tracer provider per process, W3C trace context
across every hop of a webhook.

`configure_tracing` runs once at start-up and reads only the standard
variables:

- OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT turns on
  export through a batch span processor (OTEL_BSP_* tune it). Without an
  endpoint no exporter is created, but spans are still created and
  propagated, so every log record of a traced request has its trace and span
  ids. The cost is that of creating the span objects.
- OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL: `grpc`
  (the default here, because the gRPC exporter is the one installed) or
  `http/protobuf`, which needs the opentelemetry-exporter-otlp-proto-http
  package.
- OTEL_TRACES_EXPORTER: `otlp` (default) or `none`.
- OTEL_SERVICE_NAME or `service.name` in OTEL_RESOURCE_ATTRIBUTES; the
  default is `alert-history-<service>`.
- OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, applied by the SDK.
- OTEL_SDK_DISABLED=true: nothing is recorded or exported. A trace context
  that arrives with a call is still passed on to the next one.

Until `configure_tracing` runs, as in most in-process tests, no interceptor
or middleware is added and no span records anything.

The trace context crosses gRPC calls as `traceparent` metadata and the
durable queues (work items, delivery records) as a `trace_context` map that
`inject_context` fills and `span_from_context` reads. Span attribute keys
equal the log keys where both mean the same thing: `fingerprint`,
`group_key`, `receiver`, `target`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from libs.config import ConfigError

SERVICE_NAME_PREFIX = "alert-history-"
TRACER_NAME = "alert-history"
DEFAULT_PROTOCOL = "grpc"

# Calls that start no span. Probes check health every few seconds, and the
# gateway polls LeaseWork every PIPELINE_POLL_SECONDS: each would otherwise
# start a trace of its own.
UNTRACED_GRPC_SERVICE_PREFIXES = ("grpc.health.v1.", "grpc.reflection.")
UNTRACED_GRPC_METHODS = frozenset({"/alerthistory.history.v1.HistoryService/LeaseWork"})
UNTRACED_HTTP_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The first keyword of a statement, and the table after FROM, INTO, UPDATE
# or TABLE, for span names such as "INSERT work_items".
_OPERATION = re.compile(r"^\s*([A-Za-z]+)")
_COLLECTION = re.compile(
    r"\b(?:FROM|INTO|UPDATE|TABLE(?:\s+IF\s+(?:NOT\s+)?EXISTS)?)\s+([A-Za-z_][\w.]*)",
    re.IGNORECASE,
)


@dataclass
class _Tracing:
    provider: trace.TracerProvider | None = None
    tracer: trace.Tracer | None = None


_tracing = _Tracing()


def build_tracer_provider(service: str) -> TracerProvider:
    """Build an SDK tracer provider from the OTEL_* environment variables.

    Raises ConfigError naming the variable when the exporter or protocol is
    not one this build supports.
    """
    provider = TracerProvider(resource=service_resource(service))
    exporter = exporter_from_environment()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def configure_tracing(
    service: str, *, provider: trace.TracerProvider | None = None
) -> trace.TracerProvider:
    """Install `provider`, or one built from the environment, for this process.

    A provider built from the environment also becomes OpenTelemetry's
    global provider. A provider that a test passes in is used only by the
    helpers of this module, so each test may pass its own.
    """
    chosen = provider if provider is not None else build_tracer_provider(service)
    _tracing.provider = chosen
    _tracing.tracer = chosen.get_tracer(TRACER_NAME)
    global_provider = trace.get_tracer_provider()
    if provider is None and isinstance(global_provider, trace.ProxyTracerProvider):
        trace.set_tracer_provider(chosen)
    return chosen


def reset_tracing() -> None:
    """Forget the configured provider; the caller shuts it down."""
    _tracing.provider = None
    _tracing.tracer = None


def shutdown_tracing() -> None:
    """Export the spans still buffered and stop the configured provider."""
    provider = _tracing.provider
    reset_tracing()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def tracer() -> trace.Tracer:
    """Return the tracer of the configured provider (a no-op one before that)."""
    if _tracing.tracer is not None:
        return _tracing.tracer
    return trace.get_tracer(TRACER_NAME)


def service_resource(service: str) -> Resource:
    """Return the resource from OTEL_* with `alert-history-<service>` as the
    default service.name."""
    resource = Resource.create()
    name = str(resource.attributes.get(SERVICE_NAME, ""))
    if name.startswith("unknown_service"):
        resource = resource.merge(
            Resource({SERVICE_NAME: f"{SERVICE_NAME_PREFIX}{service}"})
        )
    return resource


def exporter_from_environment() -> SpanExporter | None:
    """Return the OTLP span exporter that the environment selects, or None."""
    if _environment("OTEL_SDK_DISABLED").lower() == "true":
        return None
    kind = _environment("OTEL_TRACES_EXPORTER") or "otlp"
    if kind.lower() == "none":
        return None
    if kind.lower() != "otlp":
        raise ConfigError(
            f"invalid environment variable OTEL_TRACES_EXPORTER={kind!r}: "
            "expected otlp or none"
        )
    endpoint = _environment("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _environment(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint:
        return None
    return _otlp_exporter(*_protocol())


def _protocol() -> tuple[str, str]:
    for variable in (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ):
        value = _environment(variable)
        if value:
            return variable, value
    return "OTEL_EXPORTER_OTLP_PROTOCOL", DEFAULT_PROTOCOL


def _otlp_exporter(variable: str, protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()
    if protocol != "http/protobuf":
        raise ConfigError(
            f"invalid environment variable {variable}={protocol!r}: "
            "expected grpc or http/protobuf"
        )
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter as HttpSpanExporter,
        )
    except ImportError:
        raise ConfigError(
            f"invalid environment variable {variable}={protocol!r}: install "
            "opentelemetry-exporter-otlp-proto-http, or use grpc"
        ) from None
    exporter: SpanExporter = HttpSpanExporter()
    return exporter


def _environment(name: str) -> str:
    return os.environ.get(name, "").strip()


def traced_grpc_call(details: Any) -> bool:
    """Return whether a gRPC call gets a span (a filter of the interceptors)."""
    method = details.method
    if isinstance(method, bytes):
        method = method.decode()
    if method in UNTRACED_GRPC_METHODS:
        return False
    service = str(method).lstrip("/").partition("/")[0]
    return not service.startswith(UNTRACED_GRPC_SERVICE_PREFIXES)


def grpc_server_interceptors() -> list[Any]:
    """Interceptors that continue the caller's trace in a server span."""
    if _tracing.provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_tracing.provider, filter_=traced_grpc_call
    )
    return [interceptor]


def grpc_client_interceptors() -> list[Any]:
    """Interceptors that start a client span and send `traceparent` metadata."""
    if _tracing.provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=_tracing.provider, filter_=traced_grpc_call
    )
    return list(interceptors)


def http_server_middleware() -> Any:
    """aiohttp middleware that serves each request in a server span.

    The span continues a `traceparent` header when the client sends one and
    is named by the route pattern, such as `POST /webhook/proxy`. Probes
    and scrapes (UNTRACED_HTTP_PATHS) get no span.
    """

    @web.middleware
    async def trace_request(
        request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if _tracing.provider is None or request.path in UNTRACED_HTTP_PATHS:
            return await handler(request)
        route = _route_pattern(request)
        with tracer().start_as_current_span(
            f"{request.method} {route}",
            context=propagate.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
            },
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                set_http_status(span, exc.status, server=True)
                raise
            set_http_status(span, response.status, server=True)
            return response

    return trace_request


def _route_pattern(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched route"


def set_http_status(span: Span, status: int | None, *, server: bool) -> None:
    """Record an HTTP status; 5xx is an error, and so is 4xx on a client span."""
    if status is None:
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500 or (status >= 400 and not server):
        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


def inject_context() -> dict[str, str]:
    """Return the current trace context as W3C headers, for a stored record."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def span_from_context(
    carrier: Mapping[str, str],
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span]:
    """Start a current span whose parent is the stored context `carrier`.

    With an empty or invalid carrier the span starts a new trace.
    """
    return tracer().start_as_current_span(
        name,
        context=propagate.extract(dict(carrier)),
        kind=kind,
        attributes=dict(attributes or {}),
    )


def annotate_current_span(**attributes: str | int | float | bool) -> None:
    """Add attributes to the current span, if it records."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


@lru_cache(maxsize=1024)
def statement_summary(query: str) -> tuple[str, str | None]:
    """Return a statement's operation and first table, such as
    ("UPDATE", "work_items"); never any value."""
    operation = _OPERATION.match(query)
    collection = _COLLECTION.search(query)
    return (
        operation.group(1).upper() if operation else "SQL",
        collection.group(1) if collection else None,
    )


@contextmanager
def database_span(system: str, query: str) -> Iterator[None]:
    """Wrap one statement in a client span named like "SELECT work_items".

    Only a statement run inside a recording span gets one, so the polls of
    background loops start no trace of their own.
    """
    if not trace.get_current_span().is_recording():
        yield
        return
    operation, collection = statement_summary(query)
    attributes = {"db.system": system, "db.operation.name": operation}
    if collection is not None:
        attributes["db.collection.name"] = collection
    name = f"{operation} {collection}" if collection else operation
    with tracer().start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes=attributes
    ):
        yield
