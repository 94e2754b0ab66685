"""Running the gateway process: HTTP server, pipeline and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import redis.asyncio as redis
from aiohttp import web
from prometheus_client import CollectorRegistry

from libs import tls
from libs.clients import ServiceClients
from libs.config import Settings
from libs.grpcserver import bound_port
from services.gateway.app import create_app
from services.gateway.keys import PIPELINE_KEY, STATE_KEY, STORE_KEY
from services.gateway.mode import ModeStore

logger = logging.getLogger(__name__)


@dataclass
class RunningGateway:
    """A started gateway and what it needs to stop cleanly."""

    app: web.Application
    runner: web.AppRunner
    clients: ServiceClients
    redis_client: redis.Redis | None
    port: int

    async def stop(self, delay: float = 0.0, grace: float = 0.0) -> None:
        """Fail readiness, wait `delay`, finish requests, then stop the pipeline."""
        self.app[STATE_KEY]["stopping"] = True
        if delay:
            await asyncio.sleep(delay)
        await self.runner.cleanup()
        await self.app[STORE_KEY].close()
        await self.app[PIPELINE_KEY].stop(grace)
        await self.clients.close()
        if self.redis_client is not None:
            await self.redis_client.aclose()


async def start_gateway(
    settings: Settings,
    registry: CollectorRegistry,
    *,
    port: int | None = None,
    host: str | None = None,
) -> RunningGateway:
    """Start the HTTP server and the pipeline; port 0 picks a free port."""
    ssl_context = tls.http_server_ssl_context(settings)
    clients = ServiceClients(settings)
    redis_client = None
    if settings.redis_url is not None:
        redis_client = redis.from_url(settings.redis_url.get_secret_value())
    app = create_app(
        settings, clients, registry, ModeStore(settings.enrichment_mode, redis_client)
    )
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=settings.shutdown_grace_seconds
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        host if host is not None else settings.listen_host,
        settings.http_port if port is None else port,
        ssl_context=ssl_context,
    )
    await site.start()
    bound = bound_port(site, settings.http_port if port is None else port)
    app[PIPELINE_KEY].start()
    logger.info(
        "gateway started", extra={"http_port": bound, "tls": ssl_context is not None}
    )
    return RunningGateway(app, runner, clients, redis_client, bound)


async def serve(settings: Settings) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain."""
    running = await start_gateway(settings, CollectorRegistry())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("stopping gateway")
    await running.stop(settings.shutdown_delay_seconds, settings.shutdown_grace_seconds)
    logger.info("gateway stopped")
