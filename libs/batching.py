"""Splitting batches so that no gRPC message exceeds the configured maximum."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

from google.protobuf.message import Message

from libs.errors import InvalidInputError

T = TypeVar("T", bound=Message)

# Room left for the fields around the repeated items (metadata, tags of the
# repeated field, gRPC framing), in bytes.
ENVELOPE_BYTES = 64 * 1024


def split_by_size(
    items: Sequence[T], max_bytes: int, max_count: int | None = None
) -> Iterator[list[T]]:
    """Yield consecutive chunks of `items` whose encoded size fits `max_bytes`.

    Raise InvalidInputError when a single item alone is too large, because no
    split can send it.
    """
    budget = max_bytes - ENVELOPE_BYTES
    chunk: list[T] = []
    size = 0
    for index, item in enumerate(items):
        # Each element of a repeated field costs its size plus a tag and a
        # length prefix of at most 6 bytes.
        item_size = item.ByteSize() + 6
        if item_size > budget:
            raise InvalidInputError(
                f"item {index} is {item_size} bytes encoded, more than the "
                f"gRPC message maximum of {max_bytes} bytes (GRPC_MAX_MESSAGE_BYTES)"
            )
        full = max_count is not None and len(chunk) >= max_count
        if chunk and (size + item_size > budget or full):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk
