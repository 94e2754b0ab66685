"""How the pipeline hands work items to the publisher: PublishBatch, or Publish."""

from __future__ import annotations

from typing import Any, cast

import grpc
from prometheus_client import CollectorRegistry

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from alerthistory.publisher.v1 import publisher_pb2
from libs.clients import ServiceClients
from libs.config import load_settings
from services.gateway.pipeline import Pipeline


class FakePublisher:
    """Records calls; PublishBatch fails each request listed in `failing`."""

    def __init__(self, *, implemented: bool = True, failing: set[str] | None = None):
        self.implemented = implemented
        self.failing = failing or set()
        self.batches: list[list[str]] = []
        self.singles: list[str] = []

    async def PublishBatch(
        self, request: publisher_pb2.PublishBatchRequest, **options: Any
    ) -> publisher_pb2.PublishBatchResponse:
        if not self.implemented:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="Method not found!",
            )
        self.batches.append([r.batch_id for r in request.requests])
        response = publisher_pb2.PublishBatchResponse()
        for single in request.requests:
            result = response.results.add()
            if single.batch_id in self.failing:
                result.code = grpc.StatusCode.UNAVAILABLE.value[0]
                result.message = "database unavailable"
        return response

    async def Publish(
        self, request: publisher_pb2.PublishRequest, **options: Any
    ) -> publisher_pb2.PublishResponse:
        self.singles.append(request.batch_id)
        return publisher_pb2.PublishResponse()


class FakeClients:
    def __init__(self, publisher: FakePublisher) -> None:
        self.publisher = publisher


def work_item(item_id: int) -> history_pb2.WorkItem:
    alert = alert_pb2.Alert(fingerprint=f"{item_id:016x}")
    return history_pb2.WorkItem(
        id=item_id,
        alerts=[history_pb2.WorkAlert(state_change_id=item_id, alert=alert)],
    )


def pipeline(publisher: FakePublisher) -> Pipeline:
    async def mode() -> Any:
        return "transparent"

    clients = cast(ServiceClients, FakeClients(publisher))
    return Pipeline(load_settings({}), clients, mode, CollectorRegistry())


async def test_publish_items_one_batch() -> None:
    publisher = FakePublisher()

    outcomes = await pipeline(publisher)._publish_items(
        [work_item(1), work_item(2)], {}
    )

    assert outcomes == [True, True]
    assert publisher.batches == [["work-1", "work-2"]]
    assert publisher.singles == []


async def test_publish_items_failed_entry() -> None:
    publisher = FakePublisher(failing={"work-2"})

    outcomes = await pipeline(publisher)._publish_items(
        [work_item(1), work_item(2), work_item(3)], {}
    )

    assert outcomes == [True, False, True]


async def test_publish_items_unimplemented_fallback() -> None:
    publisher = FakePublisher(implemented=False)

    outcomes = await pipeline(publisher)._publish_items(
        [work_item(1), work_item(2)], {}
    )

    assert outcomes == [True, True]
    assert sorted(publisher.singles) == ["work-1", "work-2"]


async def test_publish_items_single_uses_publish() -> None:
    publisher = FakePublisher()

    outcomes = await pipeline(publisher)._publish_items([work_item(1)], {})

    assert outcomes == [True]
    assert publisher.singles == ["work-1"]
    assert publisher.batches == []
