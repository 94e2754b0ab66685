"""The fake model server run as a process and scripted over HTTP."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from services.classifier.llm import ChatModelClient, Endpoint, LLMMetrics
from services.classifier.prompt import build_messages
from services.classifier.reply import ModelFailure
from services.classifier.rules import Severity
from tests.classifier.conftest import CASES
from tests.fakes.llm import completion

ROOT = Path(__file__).resolve().parent.parent.parent
MESSAGES = build_messages({"labels": {"alertname": "TargetDown"}, "annotations": {}})


async def _start(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.llm",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 10)
    return process, f"http://127.0.0.1:{int(line)}"


async def _stop(process: asyncio.subprocess.Process) -> None:
    process.terminate()
    await asyncio.wait_for(process.wait(), 10)


@pytest.fixture
async def fake_process() -> AsyncIterator[str]:
    process, url = await _start()
    yield url
    await _stop(process)


def _client(url: str) -> ChatModelClient:
    endpoint = Endpoint(url, timeout_seconds=5, max_attempts=1)
    return ChatModelClient(endpoint, "test-model", LLMMetrics(CollectorRegistry()))


async def test_fake_process_scripted(fake_process: str) -> None:
    client = _client(fake_process)
    scripted = [
        {"status": 503, "body": "busy"},
        {
            "completion": completion(
                {"severity": "noise", "confidence": 1, "reasoning": "Heartbeat."}
            )
        },
    ]
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{fake_process}/_control/responses", json=scripted
        ) as reply:
            assert reply.status == 200

        with pytest.raises(ModelFailure):
            await client.classify(MESSAGES)
        verdict = await client.classify(MESSAGES)

        async with session.get(f"{fake_process}/_control/requests") as reply:
            recorded = await reply.json()
    await client.close()

    assert verdict.severity is Severity.NOISE
    assert len(recorded) == 2
    assert recorded[0]["body"]["model"] == "test-model"


async def test_fake_process_rejects_bad_script(fake_process: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{fake_process}/_control/responses", json={"colour": "red"}
        ) as reply:
            status = reply.status

    assert status == 400


async def test_fake_process_response_file() -> None:
    process, url = await _start("--response-file", str(CASES / "r03" / "llm.json"))
    client = _client(url)
    try:
        verdict = await client.classify(MESSAGES)
    finally:
        await client.close()
        await _stop(process)

    assert verdict.severity is Severity.NOISE
