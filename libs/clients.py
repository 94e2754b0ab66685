"""gRPC channels to the other services, with the shared options."""

from __future__ import annotations

import grpc

from alerthistory.audit.v1 import audit_pb2_grpc
from alerthistory.classifier.v1 import classifier_pb2_grpc
from alerthistory.history.v1 import history_pb2_grpc
from alerthistory.publisher.v1 import publisher_pb2_grpc
from alerthistory.recommender.v1 import recommender_pb2_grpc
from libs import telemetry, tls
from libs.config import Settings
from libs.grpcserver import channel_options


class ServiceClients:
    """Stubs for the history, classifier, publisher and recommender services."""

    def __init__(self, settings: Settings) -> None:
        options = channel_options(settings)
        interceptors = telemetry.grpc_client_interceptors()

        def open_channel(address: str) -> grpc.aio.Channel:
            return tls.aio_channel(
                address, settings, options=options, interceptors=interceptors
            )

        self._channels = [
            open_channel(settings.history_addr),
            open_channel(settings.classifier_addr),
            open_channel(settings.publisher_addr),
            open_channel(settings.recommender_addr),
        ]
        history, classifier, publisher, recommender = self._channels
        self.history = history_pb2_grpc.HistoryServiceStub(history)
        self.audit = audit_pb2_grpc.AuditServiceStub(history)
        self.classifier = classifier_pb2_grpc.ClassifierServiceStub(classifier)
        self.publisher = publisher_pb2_grpc.PublisherServiceStub(publisher)
        self.recommender = recommender_pb2_grpc.RecommenderServiceStub(recommender)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
