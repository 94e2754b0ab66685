"""The recommender gRPC service: generation, listing and status of recommendations.

It owns the `recommendations` table (migrations component "recommender") and
reads the history only through the history service's gRPC API.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc
import redis.asyncio as redis
from prometheus_client import CollectorRegistry

from alerthistory.history.v1 import history_pb2_grpc
from alerthistory.recommender.v1 import recommender_pb2, recommender_pb2_grpc
from libs import telemetry, tls
from libs.config import Settings
from libs.db import Database, database_url, migrate
from libs.errors import AlertHistoryError, UnavailableError
from libs.grpcserver import abort_with, channel_options
from services.classifier.llm import LLMMetrics
from services.recommender.detect import Thresholds
from services.recommender.generator import Generator
from services.recommender.migrations import COMPONENT, MIGRATIONS
from services.recommender.model import RecommendationModel
from services.recommender.sources import ConfigSources
from services.recommender.store import RecommendationStore

logger = logging.getLogger(__name__)

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name[
    "RecommenderService"
].full_name

# gRPC codes of the history service that mean "try again later".
_HISTORY_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)


async def _fail(
    context: grpc.aio.ServicerContext, method: str, error: Exception
) -> NoReturn:
    """Log a failed call, then end it with the error's status code."""
    if isinstance(error, grpc.aio.AioRpcError):
        logger.warning(
            "history call failed",
            extra={
                "method": method,
                "error": f"{error.code().name}: {error.details()}",
            },
        )
        if error.code() in _HISTORY_TRANSIENT:
            error = UnavailableError(f"history service unavailable: {error.details()}")
    if isinstance(error, UnavailableError):
        logger.warning(
            "recommender call failed", extra={"method": method, "error": str(error)}
        )
    elif isinstance(error, AlertHistoryError):
        logger.info(
            "recommender call rejected", extra={"method": method, "error": str(error)}
        )
    await abort_with(context, error)


class RecommenderServicer(recommender_pb2_grpc.RecommenderServiceServicer):
    """Implements RecommenderService over a Generator and a RecommendationStore."""

    def __init__(self, generator: Generator, store: RecommendationStore) -> None:
        self.generator = generator
        self.store = store

    async def GenerateRecommendations(
        self,
        request: recommender_pb2.GenerateRecommendationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> recommender_pb2.GenerateRecommendationsResponse:
        try:
            return await self.generator.generate(request.window_hours)
        except Exception as exc:
            await _fail(context, "GenerateRecommendations", exc)

    async def ListRecommendations(
        self,
        request: recommender_pb2.ListRecommendationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> recommender_pb2.ListRecommendationsResponse:
        try:
            page, next_cursor = await self.store.list(
                limit=request.limit,
                cursor=request.cursor,
                alert_name=request.alert_name,
                namespace=request.namespace,
                status=request.status,
            )
        except Exception as exc:
            await _fail(context, "ListRecommendations", exc)
        return recommender_pb2.ListRecommendationsResponse(
            recommendations=page, next_cursor=next_cursor
        )

    async def UpdateRecommendationStatus(
        self,
        request: recommender_pb2.UpdateRecommendationStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> recommender_pb2.UpdateRecommendationStatusResponse:
        try:
            recommendation = await self.store.set_status(request.id, request.status)
        except Exception as exc:
            await _fail(context, "UpdateRecommendationStatus", exc)
        return recommender_pb2.UpdateRecommendationStatusResponse(
            recommendation=recommendation
        )


class RecommenderService:
    """The recommender service as `libs.grpcserver` runs it."""

    name = "recommender"

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.service_names = [SERVICE_NAME]
        url = database_url(settings, "recommender")
        self.db = Database(url, pool_size=settings.database_pool_size)
        self.store = RecommendationStore(self.db)

        self.channel = tls.aio_channel(
            settings.history_addr,
            settings,
            options=channel_options(settings),
            interceptors=telemetry.grpc_client_interceptors(),
        )
        self.redis_client: redis.Redis | None = None
        if settings.redis_url is not None:
            self.redis_client = redis.from_url(settings.redis_url.get_secret_value())

        self.sources = ConfigSources(
            settings.prometheus_url,
            settings.alertmanager_url,
            settings.config_api_timeout_seconds,
        )
        self.model = RecommendationModel.from_settings(settings, LLMMetrics(registry))

        self.generator = Generator(
            history=history_pb2_grpc.HistoryServiceStub(self.channel),
            store=self.store,
            sources=self.sources,
            model=self.model,
            thresholds=Thresholds.from_settings(settings),
            window_hours=settings.recommender_window_hours,
            max_model_requests=settings.recommender_max_model_requests,
            database_url=url,
            redis_client=self.redis_client,
            lock_seconds=settings.recommender_generate_lock_seconds,
        )
        self.servicer = RecommenderServicer(self.generator, self.store)

    def register(self, server: grpc.aio.Server) -> None:
        recommender_pb2_grpc.add_RecommenderServiceServicer_to_server(
            self.servicer, server
        )

    async def start(self) -> None:
        """Connect the database and, with MIGRATE_ON_START, apply migrations."""
        await self.db.connect()
        logger.info(
            "recommender database connected", extra={"dialect": self.db.dialect}
        )
        if self.settings.migrate_on_start:
            applied = await migrate(self.db, COMPONENT, MIGRATIONS)
            logger.info("recommender migrations applied", extra={"applied": applied})

    async def close(self) -> None:
        await self.channel.close()
        await self.sources.close()
        if self.model is not None:
            await self.model.close()
        if self.redis_client is not None:
            await self.redis_client.aclose()
        await self.db.close()
        logger.info("recommender closed")


def create_service(
    settings: Settings, registry: CollectorRegistry
) -> RecommenderService:
    """Build the recommender service; `start()` connects its database."""
    return RecommenderService(settings, registry)


async def run_migrations(settings: Settings) -> int:
    """Apply the recommender migrations the database lacks; return how many ran."""
    db = Database(database_url(settings, "recommender"), pool_size=1)
    await db.connect()
    try:
        applied = await migrate(db, COMPONENT, MIGRATIONS)
    finally:
        await db.close()
    logger.info("recommender migrations applied", extra={"applied": applied})
    return applied
