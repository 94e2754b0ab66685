"""The receiver fake run as a separate process, as end-to-end tests use it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import FIXTURES


@pytest.fixture
async def receiver_url() -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.receiver",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        cwd=FIXTURES.parent.parent,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


async def test_receiver_process_records(receiver_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        script = {"path": "/hook", "replies": [{"status": 503, "body": "later"}]}
        async with session.post(f"{receiver_url}/_control/script", json=script):
            pass
        async with session.post(f"{receiver_url}/hook", json={"a": 1}) as first:
            first_status = first.status
        async with session.post(f"{receiver_url}/hook", json={"a": 2}) as second:
            second_status = second.status
        async with session.get(f"{receiver_url}/_control/requests") as listing:
            recorded = await listing.json()

    assert first_status == 503
    assert second_status == 200
    assert [r["body"] for r in recorded] == [{"a": 1}, {"a": 2}]
    assert recorded[0]["path"] == "/hook"
