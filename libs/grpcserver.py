"""The server skeleton every gRPC service shares.

A service implements `GrpcService`. `start_service` binds it with the
standard health service, server reflection, per-method metrics and the
configured message size limit. `run_until_signalled` serves until SIGTERM,
then drains. Health turns NOT_SERVING, and new calls are still taken for
SHUTDOWN_DELAY_SECONDS while load balancers notice. Then in-flight calls get
SHUTDOWN_GRACE_SECONDS to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from libs import telemetry, tls
from libs.config import Settings
from libs.errors import (
    AlertHistoryError,
    DeadlineError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)

logger = logging.getLogger(__name__)


class GrpcService(Protocol):
    """The interface a service provides to the shared skeleton."""

    name: str
    # Full names of the gRPC services it registers, for health and reflection.
    service_names: list[str]

    def register(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def channel_options(settings: Settings) -> list[tuple[str, Any]]:
    """Channel and server options shared by clients and servers."""
    return [
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


# A client keeps one HTTP/2 connection to a Service's address, so replicas
# that an autoscaler adds would get no calls from existing clients. Closing
# each connection after five minutes (GOAWAY, with 30 s for calls in flight)
# makes clients reconnect, and kube-proxy spreads the new connections.
SERVER_CONNECTION_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 30_000),
]


def status_for(error: AlertHistoryError) -> grpc.StatusCode:
    """Map a product error to the gRPC status code callers act on."""
    if isinstance(error, InvalidInputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, DeadlineError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, UnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


async def abort_with(context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
    """End a call with the status code for `error`; unknown errors are INTERNAL."""
    if not isinstance(error, AlertHistoryError):
        logger.error("unexpected error in call", exc_info=error)
    await context.abort(*error_status(error))
    raise AssertionError("context.abort returned")  # pragma: no cover


def error_status(error: Exception) -> tuple[grpc.StatusCode, str]:
    """Return the status code and message of a call that failed with `error`.

    Unknown errors become INTERNAL with a fixed message, so that their text,
    which may hold internal details, stays in the log.
    """
    if isinstance(error, AlertHistoryError):
        return status_for(error), str(error)
    return grpc.StatusCode.INTERNAL, "internal error"


class ServerMetrics:
    """gRPC server metrics per method and status code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "alert_history_grpc_server_handled_total",
            "gRPC calls completed by this server, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.latency = Histogram(
            "alert_history_grpc_server_handling_seconds",
            "Time this server took to answer a gRPC call.",
            ["grpc_service", "grpc_method"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Count and time every unary call by method and status code."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        behavior = handler.unary_unary
        metrics = self.metrics

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                if code == grpc.StatusCode.OK and context.code() is not None:
                    code = context.code()
                metrics.handled.labels(service, method, code.name).inc()
                metrics.latency.labels(service, method).observe(
                    time.perf_counter() - started
                )

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class RunningService:
    """A started service: its server, bound port and health state."""

    service: GrpcService
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    metrics_runner: web.AppRunner | None
    metrics_port: int | None

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service.service_names]:
            await self.health.set(name, status)

    async def stop(self, delay: float = 0.0, grace: float = 0.0) -> None:
        """Report NOT_SERVING, wait `delay`, then let calls finish for `grace`."""
        await self.set_serving(False)
        if delay:
            await asyncio.sleep(delay)
        await self.server.stop(grace)
        await self.service.close()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()


async def start_metrics_server(
    registry: CollectorRegistry, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Serve `registry` at /metrics; port 0 picks a free port."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, bound_port(site, port)


def bound_port(site: web.TCPSite, requested: int) -> int:
    """Return the port an aiohttp site listens on, for sites started on port 0."""
    server: Any = site._server
    sockets = server.sockets if server is not None else []
    return int(sockets[0].getsockname()[1]) if sockets else requested


async def start_service(
    service: GrpcService,
    settings: Settings,
    registry: CollectorRegistry,
    *,
    port: int,
    metrics_port: int | None = None,
    host: str | None = None,
) -> RunningService:
    """Start `service` on `port` (0 picks a free one) and report SERVING."""
    credentials = tls.grpc_server_credentials(settings)
    await service.start()
    server = grpc.aio.server(
        interceptors=[
            MetricsInterceptor(ServerMetrics(registry)),
            *telemetry.grpc_server_interceptors(),
        ],
        options=[*channel_options(settings), *SERVER_CONNECTION_OPTIONS],
    )
    service.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME],
        server,
    )
    bind_host = host if host is not None else settings.listen_host
    address = f"{bind_host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {bind_host}:{port}")
    await server.start()

    runner = None
    bound_metrics = None
    if metrics_port is not None:
        try:
            runner, bound_metrics = await start_metrics_server(
                registry, bind_host, metrics_port
            )
        except OSError:
            # A started gRPC server keeps the process alive, so stop it: a
            # service that cannot serve its metrics exits instead of hanging.
            await server.stop(0)
            await service.close()
            raise
    running = RunningService(
        service, server, bound, health_servicer, runner, bound_metrics
    )
    await running.set_serving(True)
    logger.info(
        "service started",
        extra={
            "grpc_port": bound,
            "metrics_port": bound_metrics,
            "tls": credentials is not None,
        },
    )
    return running


async def run_until_signalled(running: RunningService, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info(
        "stopping service",
        extra={
            "delay_seconds": settings.shutdown_delay_seconds,
            "grace_seconds": settings.shutdown_grace_seconds,
        },
    )
    await running.stop(settings.shutdown_delay_seconds, settings.shutdown_grace_seconds)
    logger.info("service stopped")
