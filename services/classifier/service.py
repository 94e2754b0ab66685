"""gRPC ClassifierService: the servicer and the service object the server runs."""

from __future__ import annotations

import grpc
import redis.asyncio as redis
from google.protobuf.duration_pb2 import Duration
from prometheus_client import CollectorRegistry

from alerthistory.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from libs.config import Settings
from libs.errors import InvalidInputError
from libs.grpcserver import abort_with
from services.classifier.cache import (
    MemoryVerdictCache,
    RedisVerdictCache,
    VerdictCache,
)
from services.classifier.classifier import Classifier, ClassifierMetrics
from services.classifier.context import ContextMetrics, HistoryContextSource
from services.classifier.flight import RedisFlight
from services.classifier.llm import ChatModelClient, Endpoint, LLMMetrics
from services.classifier.prompt import PromptTemplate, Redaction
from services.classifier.spend import (
    MemorySpendLimiter,
    RedisSpendLimiter,
    SpendLimiter,
)

SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].full_name

# Time kept back from the caller's gRPC deadline to build and send the reply.
DEADLINE_MARGIN_SECONDS = 0.25


class ClassifierServicer(classifier_pb2_grpc.ClassifierServiceServicer):
    """Maps the Classify and BatchClassify RPCs onto a Classifier."""

    def __init__(self, classifier: Classifier, settings: Settings) -> None:
        self._classifier = classifier
        self._settings = settings

    async def Classify(
        self,
        request: classifier_pb2.ClassifyRequest,
        context: grpc.aio.ServicerContext,
    ) -> classifier_pb2.ClassifyResponse:
        try:
            budget = self._budget(request.budget, request.HasField("budget"), context)
            classification = await self._classifier.classify(
                request.alert, request.mode, budget
            )
        except Exception as exc:
            await abort_with(context, exc)
        return classifier_pb2.ClassifyResponse(classification=classification)

    async def BatchClassify(
        self,
        request: classifier_pb2.BatchClassifyRequest,
        context: grpc.aio.ServicerContext,
    ) -> classifier_pb2.BatchClassifyResponse:
        try:
            budget = self._budget(request.budget, request.HasField("budget"), context)
            classifications = await self._classifier.classify_batch(
                request.alerts, request.mode, budget
            )
        except Exception as exc:
            await abort_with(context, exc)
        return classifier_pb2.BatchClassifyResponse(classifications=classifications)

    def _budget(
        self, budget: Duration, is_set: bool, context: grpc.aio.ServicerContext
    ) -> float:
        """Return the seconds to wait for a model.

        That is the request's budget, or PIPELINE_BUDGET_SECONDS when unset,
        cut to end DEADLINE_MARGIN_SECONDS before the caller's gRPC deadline.
        """
        seconds = self._settings.pipeline_budget_seconds
        if is_set:
            seconds = budget.ToNanoseconds() / 1e9
            if seconds < 0:
                raise InvalidInputError(
                    f"budget is negative ({seconds:g} s): send a duration of at "
                    "least 0, or leave it unset for the service default"
                )
        remaining = context.time_remaining()
        if remaining is not None:
            seconds = min(seconds, remaining - DEADLINE_MARGIN_SECONDS)
        return max(0.0, seconds)


class ClassifierService:
    """The classifier as a service for `libs.grpcserver`."""

    name = "classifier"
    service_names = [SERVICE_NAME]

    def __init__(
        self,
        settings: Settings,
        classifier: Classifier,
        redis_client: redis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.classifier = classifier
        self.redis_client = redis_client

    def register(self, server: grpc.aio.Server) -> None:
        servicer = ClassifierServicer(self.classifier, self.settings)
        classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(servicer, server)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self.classifier.close()
        if self.redis_client is not None:
            await self.redis_client.aclose()


def create_service(
    settings: Settings, registry: CollectorRegistry
) -> ClassifierService:
    """Build the classifier from settings, with its metrics in `registry`.

    Without LLM_PROXY_URL only the deterministic rules classify. With
    REDIS_URL the verdict cache, the single flight and the spend limit are
    shared with every replica using the same Redis and key prefix. Raises
    ConfigError when LLM_PROMPT_TEMPLATE_FILE cannot be used.
    """
    template = PromptTemplate.load(settings.llm_prompt_template_file)
    redis_client = None
    if settings.redis_url is not None:
        redis_client = redis.from_url(settings.redis_url.get_secret_value())

    cache: VerdictCache
    flight = None
    if redis_client is not None:
        redis_cache = RedisVerdictCache(
            redis_client, settings.classification_cache_key_prefix
        )
        cache, flight = redis_cache, RedisFlight(redis_client, redis_cache)
    else:
        cache = MemoryVerdictCache(settings.classification_cache_max_entries)

    context = None
    if settings.classifier_context_timeout_seconds > 0:
        context = HistoryContextSource(settings, ContextMetrics(registry))

    classifier = Classifier(
        settings,
        ClassifierMetrics(registry),
        cache,
        create_model_client(settings, LLMMetrics(registry), redis_client),
        template=template,
        redaction=Redaction.from_settings(settings),
        context=context,
        flight=flight,
    )
    return ClassifierService(settings, classifier, redis_client)


def create_model_client(
    settings: Settings, metrics: LLMMetrics, redis_client: redis.Redis | None = None
) -> ChatModelClient | None:
    """Return the classification model client, or None without LLM_PROXY_URL."""
    if not settings.llm_proxy_url:
        return None
    model = settings.llm_classify_model or settings.llm_model
    breaker = metrics.breaker(
        model, settings.llm_circuit_failure_threshold, settings.llm_circuit_open_seconds
    )
    return ChatModelClient(
        Endpoint.from_settings(settings),
        model,
        metrics,
        breaker=breaker,
        spend=create_spend_limiter(settings, redis_client),
    )


def create_spend_limiter(
    settings: Settings, redis_client: redis.Redis | None
) -> SpendLimiter | None:
    """Return the spend limiter of LLM_MAX_*_PER_MINUTE, or None when both are unset."""
    max_calls = settings.llm_max_calls_per_minute
    max_tokens = settings.llm_max_tokens_per_minute
    if max_calls is None and max_tokens is None:
        return None
    if redis_client is None:
        return MemorySpendLimiter(max_calls, max_tokens)
    return RedisSpendLimiter(
        redis_client, settings.classification_cache_key_prefix, max_calls, max_tokens
    )
