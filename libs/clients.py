"""gRPC channels to the other services, with the shared options."""

from __future__ import annotations

import grpc

from alerthistory.audit.v1 import audit_pb2_grpc
from alerthistory.classifier.v1 import classifier_pb2_grpc
from alerthistory.history.v1 import history_pb2_grpc
from alerthistory.publisher.v1 import publisher_pb2_grpc
from libs.config import Settings
from libs.grpcserver import channel_options


class ServiceClients:
    """Stubs for the history, classifier and publisher services."""

    def __init__(self, settings: Settings) -> None:
        options = channel_options(settings)
        self._channels = [
            grpc.aio.insecure_channel(settings.history_addr, options=options),
            grpc.aio.insecure_channel(settings.classifier_addr, options=options),
            grpc.aio.insecure_channel(settings.publisher_addr, options=options),
        ]
        history, classifier, publisher = self._channels
        self.history = history_pb2_grpc.HistoryServiceStub(history)
        self.audit = audit_pb2_grpc.AuditServiceStub(history)
        self.classifier = classifier_pb2_grpc.ClassifierServiceStub(classifier)
        self.publisher = publisher_pb2_grpc.PublisherServiceStub(publisher)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
