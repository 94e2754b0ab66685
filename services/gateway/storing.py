"""Storing webhooks through the history service, several in one call under load.

The gateway responds to each webhook only after its own durable store. While
fewer than `STORE_CONCURRENCY` calls are in flight, a webhook's request goes
out at once, alone, as a StoreNotification call. When that many calls are in
flight, the requests that arrive meanwhile wait and leave together in the next
StoreNotifications call, which history stores in one transaction. An idle
gateway adds no delay, and a busy one makes fewer calls and commits, because
each call and each commit costs CPU whatever its size.

A history service without StoreNotifications (an older version during a
rolling upgrade) returns UNIMPLEMENTED. The gateway then sends each request
alone from then on.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field

import grpc

from alerthistory.history.v1 import history_pb2, history_pb2_grpc
from libs.batching import ENVELOPE_BYTES

logger = logging.getLogger(__name__)

# Seconds a StoreNotification(s) call may take, waiting included.
STORE_DEADLINE = 10.0

_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class _Waiting:
    request: history_pb2.StoreNotificationRequest
    future: asyncio.Future[history_pb2.StoreNotificationResponse]
    # The caller's context, so that the call's span joins the caller's trace.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    size: int = 0


class NotificationStore:
    """Send StoreNotification requests, grouping those that arrive while busy."""

    def __init__(
        self,
        stub: history_pb2_grpc.HistoryServiceStub,
        *,
        concurrency: int,
        max_batch: int,
        max_message_bytes: int,
    ) -> None:
        self._stub = stub
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._budget = max_message_bytes - ENVELOPE_BYTES
        self._waiting: list[_Waiting] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch_supported = True

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def store(
        self, request: history_pb2.StoreNotificationRequest
    ) -> history_pb2.StoreNotificationResponse:
        """Store one request durably and return history's response.

        Raises grpc.aio.AioRpcError with the status StoreNotification would
        have returned.
        """
        future: asyncio.Future[history_pb2.StoreNotificationResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.append(_Waiting(request, future, size=request.ByteSize() + 6))
        self._send_waiting()
        return await future

    async def close(self) -> None:
        """Wait for the calls in flight."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _send_waiting(self) -> None:
        while self._waiting and self._in_flight < self._concurrency:
            batch = self._take()
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(
                self._send(batch), context=batch[0].context
            )
            self._tasks.add(task)
            task.add_done_callback(self._sent)

    def _take(self) -> list[_Waiting]:
        """Remove and return the oldest waiting requests that fit in one call."""
        count, size = 0, 0
        for waiting in self._waiting:
            full = count >= self._max_batch or size + waiting.size > self._budget
            if count and full:
                break
            count += 1
            size += waiting.size
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        return batch

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        self._send_waiting()

    async def _send(self, batch: list[_Waiting]) -> None:
        try:
            if len(batch) > 1 and self._batch_supported:
                await self._send_together(batch)
            else:
                await asyncio.gather(*(self._send_alone(waiting) for waiting in batch))
        except Exception as exc:
            for waiting in batch:
                _settle(waiting.future, exc)

    async def _send_alone(self, waiting: _Waiting) -> None:
        try:
            response = await self._stub.StoreNotification(
                waiting.request, timeout=STORE_DEADLINE
            )
        except Exception as exc:
            _settle(waiting.future, exc)
        else:
            _settle(waiting.future, response)

    async def _send_together(self, batch: list[_Waiting]) -> None:
        try:
            response = await self._stub.StoreNotifications(
                history_pb2.StoreNotificationsRequest(
                    requests=[waiting.request for waiting in batch]
                ),
                timeout=STORE_DEADLINE,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            logger.warning(
                "history has no StoreNotifications; storing each webhook alone"
            )
            self._batch_supported = False
            await asyncio.gather(*(self._send_alone(waiting) for waiting in batch))
            return
        if len(response.results) != len(batch):
            raise RuntimeError(
                f"StoreNotifications returned {len(response.results)} results "
                f"for {len(batch)} requests"
            )
        for waiting, result in zip(batch, response.results, strict=True):
            if result.code == 0:
                _settle(waiting.future, result.response)
            else:
                _settle(waiting.future, _rpc_error(result.code, result.message))


def _settle(
    future: asyncio.Future[history_pb2.StoreNotificationResponse],
    outcome: history_pb2.StoreNotificationResponse | BaseException,
) -> None:
    """Give a caller its outcome, unless it stopped waiting."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _rpc_error(code: int, message: str) -> grpc.aio.AioRpcError:
    """Return the error a StoreNotification call would have raised."""
    return grpc.aio.AioRpcError(
        _CODES.get(code, grpc.StatusCode.UNKNOWN),
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=message,
    )
