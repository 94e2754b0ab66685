"""Reading HTTP response bodies with a size limit."""

from __future__ import annotations

import aiohttp


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """Return the whole body, or None once it grows past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
