"""Two classifier processes sharing Redis make one model call per alert."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf.duration_pb2 import Duration

from alerthistory.alert.v1 import alert_pb2
from alerthistory.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from tests.classifier.conftest import REDIS_URL, make_alert
from tests.fakes.llm import FakeLLM
from tests.harness import Mesh, Process, free_port, http_json

pytestmark = pytest.mark.e2e

REQUESTS = 50


@pytest.fixture
async def replicas(
    tmp_path: Path, fake_llm: FakeLLM
) -> AsyncIterator[list[tuple[str, int]]]:
    """Start two classifier processes; yield gRPC addresses and metrics ports."""
    prefix = f"ah-test:{uuid.uuid4().hex[:12]}:"
    mesh = Mesh(
        tmp_path,
        {
            "LLM_PROXY_URL": fake_llm.url,
            "REDIS_URL": REDIS_URL,
            "CLASSIFICATION_CACHE_KEY_PREFIX": prefix,
            "CLASSIFIER_CONTEXT_TIMEOUT_SECONDS": "0",
            "LOG_LEVEL": "INFO",
        },
    )
    processes: list[Process] = []
    addresses: list[tuple[str, int]] = []
    try:
        for _ in range(2):
            mesh.ports["classifier"] = free_port()
            mesh.metrics_ports["classifier"] = free_port()
            process = await asyncio.to_thread(mesh.start_one, "classifier")
            processes.append(process)
            addresses.append(
                (mesh.address("classifier"), mesh.metrics_ports["classifier"])
            )
        yield addresses
    finally:
        for process in processes:
            await asyncio.to_thread(process.stop)
        await _delete_keys(prefix)


async def _delete_keys(prefix: str) -> None:
    client = redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def _verdicts_served(metrics_port: int) -> float:
    _, text = http_json("GET", f"http://127.0.0.1:{metrics_port}/metrics")
    total = 0.0
    for line in str(text).splitlines():
        if line.startswith("alert_history_classifications_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_replicas_one_model_call(
    fake_llm: FakeLLM, replicas: list[tuple[str, int]]
) -> None:
    fake_llm.default_delay = 0.5
    budget = Duration(seconds=10)
    alert = make_alert({"alertname": "TargetDown", "severity": "warning"})
    request = classifier_pb2.ClassifyRequest(alert=alert, budget=budget)
    channels = [grpc.aio.insecure_channel(address) for address, _ in replicas]
    stubs = [classifier_pb2_grpc.ClassifierServiceStub(c) for c in channels]
    try:
        replies = await asyncio.gather(
            *(
                stubs[index % 2].Classify(request, timeout=15)
                for index in range(REQUESTS)
            )
        )
    finally:
        for channel in channels:
            await channel.close()

    sources = {reply.classification.source for reply in replies}
    served = [await asyncio.to_thread(_verdicts_served, port) for _, port in replicas]
    assert len(fake_llm.requests) == 1
    assert sources <= {alert_pb2.VERDICT_SOURCE_MODEL, alert_pb2.VERDICT_SOURCE_CACHE}
    assert len(replies) == REQUESTS
    assert served == [REQUESTS / 2, REQUESTS / 2]
