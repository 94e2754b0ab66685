"""Writing items that arrive while a write is in flight together, in one call.

A `Coalescer` passes each submitted item to a write function. While fewer
than `concurrency` writes are running, an item leaves at once, alone, so an
idle process adds no delay. Items submitted while every write is busy wait,
and the next write takes the oldest of them, as many as `max_batch` and the
size budget allow. Under load there are fewer calls, statements and commits,
because each costs CPU whatever its size.

With `retry_alone`, when a write of several items raises, each of them is
written again alone, so one item the store rejects fails only its own caller.
Otherwise every caller of the write gets its error. `retry_alone` may also be
a function of the error, so that an outage, which every item would meet
again, is not tried once per item.

An item whose caller stopped waiting is still written, because a write may
record something that happened (an attempt that was sent). With
`drop_abandoned`, such items are dropped instead, which suits reads.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Write = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    size: int
    # The caller's context: a write runs in its first item's context, so that
    # its spans join that caller's trace.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class Coalescer(Generic[T, R]):
    """Group items submitted while busy into one call of `write`.

    `write` receives a non-empty sequence of items and returns one result per
    item, in the same order. With `size` and `max_size`, the items of one
    write add up to at most `max_size`, except a single larger item, which
    goes alone.
    """

    def __init__(
        self,
        write: Write[T, R],
        *,
        max_batch: int,
        concurrency: int = 1,
        size: Callable[[T], int] | None = None,
        max_size: int | None = None,
        retry_alone: bool | Callable[[Exception], bool] = True,
        drop_abandoned: bool = False,
    ) -> None:
        if max_batch < 1 or concurrency < 1:
            raise ValueError(
                "max_batch and concurrency must be at least 1, "
                f"not {max_batch} and {concurrency}"
            )
        self._write = write
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._size = size
        self._max_size = max_size
        self._retry_alone = retry_alone
        self._drop_abandoned = drop_abandoned
        self._waiting: list[_Waiting[T, R]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Return the number of writes running now."""
        return len(self._tasks)

    async def submit(self, item: T) -> R:
        """Write `item` and return its result, or raise the write's error."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        size = self._size(item) if self._size is not None else 0
        self._waiting.append(_Waiting(item, future, size))
        self._start_writes()
        return await future

    async def close(self) -> None:
        """Wait for the writes in flight and those they leave waiting.

        Cancelling this wait cancels the writes.
        """
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start_writes(self) -> None:
        while self._waiting and len(self._tasks) < self._concurrency:
            batch = self._take()
            task = asyncio.get_running_loop().create_task(
                self._run(batch), context=batch[0].context
            )
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _take(self) -> list[_Waiting[T, R]]:
        """Remove and return the oldest waiting items that fit in one write."""
        count, total = 0, 0
        for waiting in self._waiting:
            full = count >= self._max_batch or (
                self._max_size is not None and total + waiting.size > self._max_size
            )
            if count and full:
                break
            count += 1
            total += waiting.size
        batch = self._waiting[:count]
        del self._waiting[:count]
        return batch

    def _retries_alone(self, exc: Exception) -> bool:
        if callable(self._retry_alone):
            return self._retry_alone(exc)
        return self._retry_alone

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._start_writes()

    async def _run(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            await self._write_batch(batch)
        finally:
            # A write that is cancelled or raises a BaseException (such as
            # CancelledError) must not leave a caller waiting for ever.
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.cancel()

    async def _write_batch(self, batch: list[_Waiting[T, R]]) -> None:
        if self._drop_abandoned:
            batch = [waiting for waiting in batch if not waiting.future.done()]
            if not batch:
                return
        try:
            results = await self._write([waiting.item for waiting in batch])
        except Exception as exc:
            if len(batch) == 1 or not self._retries_alone(exc):
                for waiting in batch:
                    _settle(waiting.future, exc)
                return
            for waiting in batch:
                await self._write_batch([waiting])
            return
        if len(results) != len(batch):
            error = RuntimeError(
                f"write returned {len(results)} results for {len(batch)} items"
            )
            for waiting in batch:
                _settle(waiting.future, error)
            return
        for waiting, result in zip(batch, results, strict=True):
            _settle(waiting.future, result)


def _settle(future: asyncio.Future[R], outcome: R | BaseException) -> None:
    """Give a caller its outcome, unless it stopped waiting."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
