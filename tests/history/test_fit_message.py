"""Splitting leased work items to fit one gRPC response."""

from __future__ import annotations

from alerthistory.history.v1 import history_pb2
from services.history.service import fit_message


def _item(item_id: int, size: int) -> history_pb2.WorkItem:
    return history_pb2.WorkItem(id=item_id, trace_context={"padding": "x" * size})


def test_fit_message_keeps_all_small() -> None:
    items = [_item(i, 100) for i in range(1, 4)]

    kept, extra = fit_message(items, 64 * 1024)

    assert [item.id for item in kept] == [1, 2, 3]
    assert extra == []


def test_fit_message_splits_large() -> None:
    items = [_item(i, 30_000) for i in range(1, 4)]

    kept, extra = fit_message(items, 64 * 1024)

    assert [item.id for item in kept] == [1, 2]
    assert [item.id for item in extra] == [3]


def test_fit_message_keeps_oversized_first() -> None:
    items = [_item(1, 100_000), _item(2, 10)]

    kept, extra = fit_message(items, 64 * 1024)

    assert [item.id for item in kept] == [1]
    assert [item.id for item in extra] == [2]


def test_fit_message_empty() -> None:
    assert fit_message([], 64 * 1024) == ([], [])
