"""The publisher over gRPC, in process on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from alerthistory.publisher.v1 import publisher_pb2, publisher_pb2_grpc
from libs.grpcserver import start_service
from services.publisher.migrations import MIGRATIONS
from services.publisher.service import create_service, run_migrations
from services.publisher.targets import TargetConfigError
from tests.fakes.receiver import Receiver
from tests.publisher.conftest import (
    make_settings,
    publish_alert,
    publish_request,
    running_publisher,
    wait_for_delivery,
    write_targets,
)


@pytest.fixture
async def targets_file(tmp_path: Path, receiver: Receiver) -> Path:
    return write_targets(
        tmp_path,
        [
            {
                "name": "hook",
                "format": "webhook",
                "url": receiver.url("/hook?token=secret").replace(
                    "http://", "http://user:pw@"
                ),
            },
            {
                "name": "relay",
                "format": "alertmanager",
                "url": receiver.url("/relay"),
                "enabled": False,
            },
        ],
    )


@pytest.fixture
async def stub(
    sqlite_url: str, targets_file: Path
) -> AsyncIterator[publisher_pb2_grpc.PublisherServiceStub]:
    settings = make_settings(sqlite_url, targets_file)
    running = await start_service(
        create_service(settings, CollectorRegistry()),
        settings,
        CollectorRegistry(),
        port=0,
        host="127.0.0.1",
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield publisher_pb2_grpc.PublisherServiceStub(channel)
    finally:
        await channel.close()
        await running.stop()


async def test_grpc_publish_delivers(
    stub: publisher_pb2_grpc.PublisherServiceStub, receiver: Receiver
) -> None:
    response = await stub.Publish(publish_request("grpc-1"), timeout=5)
    (request,) = await receiver.wait_for_requests(1, "/hook")

    assert [(t.target, t.alerts, t.created) for t in response.targets] == [
        ("hook", 1, True)
    ]
    assert response.metrics_only is False
    assert request.body["alerts"][0]["classification"]["severity"] == "critical"
    assert request.headers["Authorization"].startswith("Basic ")


async def test_grpc_publish_empty_batch_id(
    stub: publisher_pb2_grpc.PublisherServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(publish_request(""), timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch_id is empty" in (caught.value.details() or "")


async def test_grpc_publish_alert_without_labels(
    stub: publisher_pb2_grpc.PublisherServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(
            publish_request("grpc-2", [publish_alert(labels={})]), timeout=5
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "alerts[0].alert.labels is empty" in (caught.value.details() or "")


async def test_grpc_publish_batch_results(
    stub: publisher_pb2_grpc.PublisherServiceStub, receiver: Receiver
) -> None:
    request = publisher_pb2.PublishBatchRequest(
        requests=[
            publish_request("grpc-batch-1"),
            publish_request(""),
            publish_request("grpc-batch-1"),
        ]
    )

    response = await stub.PublishBatch(request, timeout=5)
    await receiver.wait_for_requests(1, "/hook")
    first, invalid, repeated = response.results

    assert [(t.target, t.created) for t in first.response.targets] == [("hook", True)]
    assert first.code == 0
    assert invalid.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "batch_id is empty" in invalid.message
    assert [(t.target, t.created) for t in repeated.response.targets] == [
        ("hook", False)
    ]


async def test_grpc_publish_batch_one_request(
    stub: publisher_pb2_grpc.PublisherServiceStub, receiver: Receiver
) -> None:
    request = publisher_pb2.PublishBatchRequest(
        requests=[publish_request("grpc-batch-2"), publish_request("grpc-batch-2")]
    )

    await stub.PublishBatch(request, timeout=5)
    await receiver.wait_for_requests(1, "/hook")

    assert len(receiver.requests) == 1


async def test_grpc_publish_batch_empty(
    stub: publisher_pb2_grpc.PublisherServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PublishBatch(publisher_pb2.PublishBatchRequest(), timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_grpc_list_targets(stub: publisher_pb2_grpc.PublisherServiceStub) -> None:
    response = await stub.ListTargets(publisher_pb2.ListTargetsRequest(), timeout=2)
    hook, relay = response.targets

    assert hook.name == "hook"
    assert hook.format == "webhook"
    assert hook.endpoint.startswith("http://127.0.0.1:")
    assert "/" not in hook.endpoint.removeprefix("http://")
    assert "pw" not in hook.endpoint
    assert hook.enabled is True
    assert hook.source == "file"
    assert relay.enabled is False
    assert response.metrics_only is False


async def test_metrics_only_records_nothing(sqlite_url: str) -> None:
    registry = CollectorRegistry()
    settings = make_settings(sqlite_url, None)

    async with running_publisher(settings, registry) as service:
        response = await service.publish(publish_request("mo-1"))
        records = await service.store.deliveries_for_batch("mo-1")

    assert response.metrics_only is True
    assert list(response.targets) == []
    assert records == []
    assert registry.get_sample_value("alert_history_metrics_only_mode") == 1.0


async def test_target_gauges(sqlite_url: str, targets_file: Path) -> None:
    registry = CollectorRegistry()

    async with running_publisher(make_settings(sqlite_url, targets_file), registry):
        discovered = registry.get_sample_value(
            "alert_history_publishing_targets_discovered"
        )
        hook = registry.get_sample_value(
            "alert_history_publishing_target_status",
            {"target": "hook", "format": "webhook"},
        )
        relay = registry.get_sample_value(
            "alert_history_publishing_target_status",
            {"target": "relay", "format": "alertmanager"},
        )
        metrics_only = registry.get_sample_value("alert_history_metrics_only_mode")

    assert discovered == 0.0
    assert hook == 1.0
    assert relay == 0.0
    assert metrics_only == 0.0


async def test_disabled_target_gets_nothing(
    sqlite_url: str, targets_file: Path, receiver: Receiver
) -> None:
    async with running_publisher(make_settings(sqlite_url, targets_file)) as service:
        await service.publish(publish_request("dis-1"))
        await wait_for_delivery(service, "dis-1", lambda d: d.state == "succeeded")

    assert receiver.requests_to("/relay") == []


async def test_start_missing_targets_file(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    service = create_service(make_settings(sqlite_url, path), CollectorRegistry())

    with pytest.raises(TargetConfigError) as caught:
        await service.start()

    assert str(path) in str(caught.value)


async def test_run_migrations_once(any_database_url: str) -> None:
    settings = make_settings(any_database_url, None)

    first = await run_migrations(settings)
    second = await run_migrations(settings)

    assert first == len(MIGRATIONS)
    assert second == 0
