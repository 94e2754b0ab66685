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
import logging
from collections.abc import Sequence

import grpc

from alerthistory.history.v1 import history_pb2, history_pb2_grpc
from libs.batching import ENVELOPE_BYTES
from libs.coalesce import Coalescer

logger = logging.getLogger(__name__)

# Seconds a StoreNotification(s) call may take, waiting included.
STORE_DEADLINE = 10.0

_CODES = {code.value[0]: code for code in grpc.StatusCode}

# A request's response, or the error its call would have raised.
_Outcome = history_pb2.StoreNotificationResponse | BaseException


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
        self._batch_supported = True
        # History reports a result per request, so a call that failed as a
        # whole is not retried request by request.
        self._calls: Coalescer[history_pb2.StoreNotificationRequest, _Outcome] = (
            Coalescer(
                self._call,
                max_batch=max_batch,
                concurrency=concurrency,
                size=lambda request: request.ByteSize() + 6,
                max_size=max_message_bytes - ENVELOPE_BYTES,
                retry_alone=False,
            )
        )

    @property
    def in_flight(self) -> int:
        return self._calls.in_flight

    async def store(
        self, request: history_pb2.StoreNotificationRequest
    ) -> history_pb2.StoreNotificationResponse:
        """Store one request durably and return history's response.

        Raises grpc.aio.AioRpcError with the status StoreNotification would
        have returned.
        """
        outcome = await self._calls.submit(request)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def close(self) -> None:
        """Wait for the calls in flight."""
        await self._calls.close()

    async def _call(
        self, requests: Sequence[history_pb2.StoreNotificationRequest]
    ) -> list[_Outcome]:
        if len(requests) > 1 and self._batch_supported:
            return await self._send_together(requests)
        return list(
            await asyncio.gather(
                *(self._send_alone(request) for request in requests),
                return_exceptions=True,
            )
        )

    async def _send_alone(
        self, request: history_pb2.StoreNotificationRequest
    ) -> history_pb2.StoreNotificationResponse:
        response: history_pb2.StoreNotificationResponse = (
            await self._stub.StoreNotification(request, timeout=STORE_DEADLINE)
        )
        return response

    async def _send_together(
        self, requests: Sequence[history_pb2.StoreNotificationRequest]
    ) -> list[_Outcome]:
        try:
            response = await self._stub.StoreNotifications(
                history_pb2.StoreNotificationsRequest(requests=requests),
                timeout=STORE_DEADLINE,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            logger.warning(
                "history has no StoreNotifications; storing each webhook alone"
            )
            self._batch_supported = False
            return await self._call(requests)
        if len(response.results) != len(requests):
            raise RuntimeError(
                f"StoreNotifications returned {len(response.results)} results "
                f"for {len(requests)} requests"
            )
        return [
            result.response
            if result.code == 0
            else _rpc_error(result.code, result.message)
            for result in response.results
        ]


def _rpc_error(code: int, message: str) -> grpc.aio.AioRpcError:
    """Return the error a StoreNotification call would have raised."""
    return grpc.aio.AioRpcError(
        _CODES.get(code, grpc.StatusCode.UNKNOWN),
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=message,
    )
