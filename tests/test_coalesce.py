"""How a Coalescer groups the items that arrive while a write is running."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import pytest

from libs.coalesce import Coalescer


class Recorder:
    """A write function that records its calls and can be held or made to fail."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.rejected: set[int] = set()

    async def write(self, items: Sequence[int]) -> list[str]:
        self.calls.append(list(items))
        await self.gate.wait()
        if self.rejected & set(items):
            raise ValueError(f"rejected {sorted(self.rejected & set(items))}")
        return [f"stored {item}" for item in items]


async def submit_while_busy(
    coalescer: Coalescer[int, str], recorder: Recorder, items: Sequence[int]
) -> tuple[asyncio.Task[str], list[asyncio.Task[str]]]:
    """Hold a write of item 1 in flight, then submit `items` behind it."""
    recorder.gate.clear()
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(coalescer.submit(item)) for item in items]
    await asyncio.sleep(0)
    return first, waiting


async def test_idle_item_written_alone() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.write, max_batch=10)

    assert await coalescer.submit(1) == "stored 1"
    assert recorder.calls == [[1]]


async def test_busy_items_share_next_write() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.write, max_batch=10)
    first, waiting = await submit_while_busy(coalescer, recorder, (2, 3, 4))

    recorder.gate.set()

    assert await first == "stored 1"
    assert await asyncio.gather(*waiting) == ["stored 2", "stored 3", "stored 4"]
    assert recorder.calls == [[1], [2, 3, 4]]


async def test_max_batch_splits_waiting_items() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer = Coalescer(recorder.write, max_batch=2)
    tasks = [asyncio.create_task(coalescer.submit(item)) for item in range(5)]
    await asyncio.sleep(0)

    recorder.gate.set()
    await asyncio.gather(*tasks)

    assert recorder.calls == [[0], [1, 2], [3, 4]]


async def test_concurrency_bounds_running_writes() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer = Coalescer(recorder.write, max_batch=10, concurrency=2)
    tasks = [asyncio.create_task(coalescer.submit(item)) for item in range(2)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(coalescer.submit(item)) for item in range(2, 5)]
    await asyncio.sleep(0)

    assert recorder.calls == [[0], [1]]

    recorder.gate.set()
    await asyncio.gather(*tasks)
    assert recorder.calls == [[0], [1], [2, 3, 4]]


async def test_rejected_item_fails_own_caller() -> None:
    recorder = Recorder()
    recorder.rejected = {3}
    coalescer = Coalescer(recorder.write, max_batch=10)
    first, waiting = await submit_while_busy(coalescer, recorder, (2, 3, 4))

    recorder.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)

    assert await first == "stored 1"
    assert results[0] == "stored 2"
    assert isinstance(results[1], ValueError)
    assert results[2] == "stored 4"
    # The shared write failed, then each item was written alone.
    assert recorder.calls == [[1], [2, 3, 4], [2], [3], [4]]


async def test_result_count_mismatch_fails_all() -> None:
    async def write(items: Sequence[int]) -> list[int]:
        return []

    coalescer = Coalescer(write, max_batch=10)

    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        await coalescer.submit(1)


async def test_close_waits_for_writes_in_flight() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer = Coalescer(recorder.write, max_batch=10)
    submitted = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)
    closing = asyncio.create_task(coalescer.close())
    await asyncio.sleep(0)

    assert not closing.done()

    recorder.gate.set()
    await closing
    assert await submitted == "stored 1"


async def test_cancelled_caller_keeps_write_running() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer = Coalescer(recorder.write, max_batch=10)
    submitted = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)

    submitted.cancel()
    recorder.gate.set()
    await coalescer.close()

    assert recorder.calls == [[1]]
    assert submitted.cancelled()


async def test_no_retry_alone_fails_all() -> None:
    recorder = Recorder()
    recorder.rejected = {3}
    coalescer = Coalescer(recorder.write, max_batch=10, retry_alone=False)
    first, waiting = await submit_while_busy(coalescer, recorder, (2, 3))

    recorder.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)

    assert await first == "stored 1"
    assert all(isinstance(result, ValueError) for result in results)
    assert recorder.calls == [[1], [2, 3]]


async def test_size_budget_bounds_a_write() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer = Coalescer(recorder.write, max_batch=10, size=lambda x: x, max_size=10)
    tasks = [asyncio.create_task(coalescer.submit(item)) for item in (1, 4, 5, 2, 12)]
    await asyncio.sleep(0)

    recorder.gate.set()
    await asyncio.gather(*tasks)

    # 12 is over the budget on its own and goes alone.
    assert recorder.calls == [[1], [4, 5], [2], [12]]


async def test_write_runs_in_first_context() -> None:
    current: contextvars.ContextVar[str] = contextvars.ContextVar("current")
    seen: list[str] = []

    async def write(items: Sequence[int]) -> list[int]:
        seen.append(current.get("none"))
        return list(items)

    coalescer = Coalescer(write, max_batch=10)

    async def submit_as(name: str, item: int) -> int:
        current.set(name)
        return await coalescer.submit(item)

    await asyncio.gather(submit_as("first", 1), submit_as("second", 2))

    assert seen == ["first", "second"]


async def test_retry_alone_predicate_decides() -> None:
    recorder = Recorder()
    recorder.rejected = {3}
    coalescer = Coalescer(
        recorder.write,
        max_batch=10,
        retry_alone=lambda exc: "outage" not in str(exc),
    )
    first, waiting = await submit_while_busy(coalescer, recorder, (2, 3))

    recorder.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)

    assert await first == "stored 1"
    assert results[0] == "stored 2"
    assert isinstance(results[1], ValueError)
    assert recorder.calls == [[1], [2, 3], [2], [3]]


async def test_retry_alone_predicate_skips_outages() -> None:
    async def write(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        await gate.wait()
        raise ConnectionError("outage")

    calls: list[list[int]] = []
    gate = asyncio.Event()
    coalescer = Coalescer(
        write, max_batch=10, retry_alone=lambda exc: "outage" not in str(exc)
    )
    tasks = [asyncio.create_task(coalescer.submit(item)) for item in (1, 2, 3)]
    await asyncio.sleep(0)

    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert all(isinstance(result, ConnectionError) for result in results)
    assert calls == [[1], [2, 3]]


async def test_cancelled_retry_settles_others() -> None:
    async def write(items: Sequence[int]) -> list[str]:
        calls.append(list(items))
        if list(items) == [1]:
            await release_first.wait()
        elif len(items) > 1:
            raise ValueError("one item rejected")
        elif list(items) == [2]:
            # As grpc.aio raises for a call cancelled on its side.
            raise asyncio.CancelledError()
        return [f"stored {item}" for item in items]

    calls: list[list[int]] = []
    release_first = asyncio.Event()
    coalescer = Coalescer(write, max_batch=10)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(coalescer.submit(2))
    third = asyncio.create_task(coalescer.submit(3))
    await asyncio.sleep(0)

    release_first.set()
    await coalescer.close()
    await asyncio.wait([first, second, third], timeout=1.0)

    assert calls == [[1], [2, 3], [2]]
    assert await first == "stored 1"
    assert second.cancelled()
    assert third.cancelled()


async def test_drop_abandoned_skips_gone_callers() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.write, max_batch=10, drop_abandoned=True)
    first, waiting = await submit_while_busy(coalescer, recorder, (2, 3))
    waiting[0].cancel()
    await asyncio.sleep(0)

    recorder.gate.set()

    assert await first == "stored 1"
    assert await waiting[1] == "stored 3"
    assert recorder.calls == [[1], [3]]
