"""gRPC ClassifierService: the servicer and the service object the server runs."""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration
from prometheus_client import CollectorRegistry

from alerthistory.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from libs.config import Settings
from libs.errors import InvalidInputError
from libs.grpcserver import abort_with
from services.classifier.cache import MemoryVerdictCache
from services.classifier.classifier import Classifier, ClassifierMetrics, ModelClient
from services.classifier.llm import ChatModelClient, LLMMetrics

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

    def __init__(self, settings: Settings, classifier: Classifier) -> None:
        self.settings = settings
        self.classifier = classifier

    def register(self, server: grpc.aio.Server) -> None:
        servicer = ClassifierServicer(self.classifier, self.settings)
        classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(servicer, server)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self.classifier.close()


def create_service(
    settings: Settings, registry: CollectorRegistry
) -> ClassifierService:
    """Build the classifier from settings, with its metrics in `registry`.

    Without LLM_PROXY_URL only the deterministic rules classify.
    """
    llm_metrics = LLMMetrics(registry)
    model: ModelClient | None = None
    if settings.llm_proxy_url:
        model = ChatModelClient(
            base_url=settings.llm_proxy_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key,
            timeout_seconds=settings.llm_timeout_seconds,
            metrics=llm_metrics,
        )
    cache = MemoryVerdictCache(
        ttl_seconds=settings.classification_cache_ttl_seconds,
        max_entries=settings.classification_cache_max_entries,
    )
    classifier = Classifier(settings, ClassifierMetrics(registry), cache, model)
    return ClassifierService(settings, classifier)
