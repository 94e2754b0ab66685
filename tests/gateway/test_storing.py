"""Grouping of concurrent webhook stores into StoreNotifications calls."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from services.gateway.storing import NotificationStore

MIB = 1024 * 1024


def request(group: str, size: int = 0) -> history_pb2.StoreNotificationRequest:
    notification = alert_pb2.Notification(group_key=group, receiver="x" * size)
    return history_pb2.StoreNotificationRequest(notification=notification)


def answer(
    single: history_pb2.StoreNotificationRequest,
) -> history_pb2.StoreNotificationResponse:
    """A response whose notification_id is the request's group key."""
    return history_pb2.StoreNotificationResponse(
        notification_id=int(single.notification.group_key)
    )


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "x")


class FakeHistory:
    """Return store responses once `release` is set, recording each call."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.alone: list[str] = []
        self.together: list[list[str]] = []
        self.batch_error: grpc.aio.AioRpcError | None = None
        # group key -> (code, message) for entries that fail.
        self.failing: dict[str, tuple[int, str]] = {}

    async def StoreNotification(
        self, single: history_pb2.StoreNotificationRequest, **call: Any
    ) -> history_pb2.StoreNotificationResponse:
        self.alone.append(single.notification.group_key)
        await self.release.wait()
        return answer(single)

    async def StoreNotifications(
        self, batch: history_pb2.StoreNotificationsRequest, **call: Any
    ) -> history_pb2.StoreNotificationsResponse:
        self.together.append([r.notification.group_key for r in batch.requests])
        await self.release.wait()
        if self.batch_error is not None:
            raise self.batch_error
        response = history_pb2.StoreNotificationsResponse()
        for single in batch.requests:
            result = response.results.add()
            failure = self.failing.get(single.notification.group_key)
            if failure is None:
                result.response.CopyFrom(answer(single))
            else:
                result.code, result.message = failure
        return response


def make_store(history: FakeHistory, **options: Any) -> NotificationStore:
    settings: dict[str, Any] = {
        "concurrency": 1,
        "max_batch": 64,
        "max_message_bytes": 4 * MIB,
    }
    settings.update(options)
    return NotificationStore(history, **settings)  # type: ignore[arg-type]


async def busy_then_queue(
    store: NotificationStore, history: FakeHistory, groups: list[str]
) -> tuple[asyncio.Task[Any], list[asyncio.Task[Any]]]:
    """Hold one call in flight, then queue a store for each of `groups`."""
    history.release.clear()
    first = asyncio.create_task(store.store(request("0")))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(store.store(request(group))) for group in groups]
    await asyncio.sleep(0)
    return first, queued


async def test_idle_store_goes_alone_at_once() -> None:
    history = FakeHistory()
    store = make_store(history)

    response = await store.store(request("7"))

    assert response.notification_id == 7
    assert history.alone == ["7"]
    assert history.together == []


async def test_stores_arriving_while_busy_go_together_in_order() -> None:
    history = FakeHistory()
    store = make_store(history)

    first, queued = await busy_then_queue(store, history, ["1", "2", "3"])
    history.release.set()
    responses = await asyncio.gather(first, *queued)

    assert history.alone == ["0"]
    assert history.together == [["1", "2", "3"]]
    assert [r.notification_id for r in responses] == [0, 1, 2, 3]


async def test_batch_respects_count_and_size() -> None:
    history = FakeHistory()
    store = make_store(history, max_batch=2, max_message_bytes=64 * 1024 + 2500)

    first, queued = await busy_then_queue(store, history, ["1", "2", "3", "4"])
    big = asyncio.create_task(store.store(request("5", size=2000)))
    small = asyncio.create_task(store.store(request("6", size=1000)))
    await asyncio.sleep(0)
    history.release.set()
    await asyncio.gather(first, *queued, big, small)

    assert history.together == [["1", "2"], ["3", "4"]]
    assert history.alone == ["0", "5", "6"]


async def test_entry_error_reaches_only_its_caller() -> None:
    history = FakeHistory()
    history.failing["2"] = (grpc.StatusCode.INVALID_ARGUMENT.value[0], "no alerts")
    store = make_store(history)

    first, queued = await busy_then_queue(store, history, ["1", "2", "3"])
    history.release.set()
    outcomes = await asyncio.gather(first, *queued, return_exceptions=True)

    error = outcomes[2]
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "no alerts"
    assert [
        o.notification_id for o in outcomes if not isinstance(o, BaseException)
    ] == [
        0,
        1,
        3,
    ]


async def test_failed_call_fails_every_caller_in_it() -> None:
    history = FakeHistory()
    history.batch_error = rpc_error(grpc.StatusCode.UNAVAILABLE)
    store = make_store(history)

    first, queued = await busy_then_queue(store, history, ["1", "2"])
    history.release.set()
    outcomes = await asyncio.gather(first, *queued, return_exceptions=True)

    assert outcomes[0].notification_id == 0  # type: ignore[union-attr]
    for outcome in outcomes[1:]:
        assert isinstance(outcome, grpc.aio.AioRpcError)
        assert outcome.code() == grpc.StatusCode.UNAVAILABLE


async def test_unimplemented_falls_back_to_single_calls() -> None:
    history = FakeHistory()
    history.batch_error = rpc_error(grpc.StatusCode.UNIMPLEMENTED)
    store = make_store(history)

    first, queued = await busy_then_queue(store, history, ["1", "2"])
    history.release.set()
    responses = await asyncio.gather(first, *queued)
    first, queued = await busy_then_queue(store, history, ["3", "4"])
    history.release.set()
    await asyncio.gather(first, *queued)

    assert [r.notification_id for r in responses] == [0, 1, 2]
    assert history.together == [["1", "2"]]
    assert history.alone == ["0", "1", "2", "0", "3", "4"]


async def test_cancelled_caller_leaves_the_others_stored() -> None:
    history = FakeHistory()
    store = make_store(history)

    first, queued = await busy_then_queue(store, history, ["1", "2"])
    queued[0].cancel()
    history.release.set()
    second = await queued[1]
    await first
    await store.close()

    assert second.notification_id == 2
    assert history.together == [["1", "2"]]
    with pytest.raises(asyncio.CancelledError):
        await queued[0]


async def test_concurrency_bounds_calls_in_flight() -> None:
    history = FakeHistory()
    history.release.clear()
    store = make_store(history, concurrency=3)

    tasks = [asyncio.create_task(store.store(request(str(i)))) for i in range(10)]
    await asyncio.sleep(0)
    in_flight = store.in_flight
    history.release.set()
    await asyncio.gather(*tasks)

    assert in_flight == 3
    assert history.alone == ["0", "1", "2"]
    assert history.together == [["3", "4", "5", "6", "7", "8", "9"]]
