"""ClassifierService over real gRPC on a free local port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from alerthistory.alert.v1 import alert_pb2
from alerthistory.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from libs.config import ConfigError, Settings
from libs.grpcserver import GrpcService, start_service
from services.classifier.service import SERVICE_NAME, create_service
from tests.classifier.conftest import case_alert, case_completion, make_alert
from tests.fakes.llm import FakeLLM
from tests.harness import ROOT, free_port

Stub = classifier_pb2_grpc.ClassifierServiceStub


@pytest.fixture
async def channel(fake_llm: FakeLLM) -> AsyncIterator[grpc.aio.Channel]:
    settings = Settings.model_validate(
        {
            "llm_proxy_url": f"{fake_llm.url}/v1",
            "llm_model": "test-model",
            "classifier_max_batch": 3,
            "classifier_context_timeout_seconds": 0,
        }
    )
    registry = CollectorRegistry()
    service = create_service(settings, registry)
    running = await start_service(service, settings, registry, port=0, host="127.0.0.1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel
    await running.stop()


def _budget(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def test_service_satisfies_protocol() -> None:
    service: GrpcService = create_service(
        Settings.model_validate({}), CollectorRegistry()
    )

    assert service.service_names == ["alerthistory.classifier.v1.ClassifierService"]


async def test_service_health_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)

    reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_service_classify(fake_llm: FakeLLM, channel: grpc.aio.Channel) -> None:
    fake_llm.enqueue(case_completion("r21"))
    request = classifier_pb2.ClassifyRequest(alert=case_alert("r21"))

    reply = await Stub(channel).Classify(request, timeout=5)

    result = reply.classification
    assert result.source == alert_pb2.VERDICT_SOURCE_MODEL
    assert result.severity == alert_pb2.SEVERITY_CRITICAL
    assert result.model_severity == alert_pb2.SEVERITY_NOISE
    assert fake_llm.requests[0].path == "/v1/chat/completions"


async def test_service_classify_no_labels(channel: grpc.aio.Channel) -> None:
    request = classifier_pb2.ClassifyRequest(alert=alert_pb2.Alert())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await Stub(channel).Classify(request, timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_service_negative_budget(channel: grpc.aio.Channel) -> None:
    request = classifier_pb2.ClassifyRequest(
        alert=make_alert({"alertname": "X"}), budget=_budget(-1)
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await Stub(channel).Classify(request, timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_service_budget_timeout(
    fake_llm: FakeLLM, channel: grpc.aio.Channel
) -> None:
    fake_llm.enqueue(delay=5)
    request = classifier_pb2.ClassifyRequest(
        alert=make_alert({"alertname": "X"}), budget=_budget(0.3)
    )
    started = time.perf_counter()

    reply = await Stub(channel).Classify(request, timeout=5)

    assert reply.classification.fallback_reason == "timeout"
    assert time.perf_counter() - started < 1


async def test_service_deadline_shortens_budget(
    fake_llm: FakeLLM, channel: grpc.aio.Channel
) -> None:
    fake_llm.enqueue(delay=5)
    request = classifier_pb2.ClassifyRequest(alert=make_alert({"alertname": "X"}))

    reply = await Stub(channel).Classify(request, timeout=0.8)

    assert reply.classification.fallback_reason == "timeout"


async def test_service_transparent(
    fake_llm: FakeLLM, channel: grpc.aio.Channel
) -> None:
    request = classifier_pb2.ClassifyRequest(
        alert=case_alert("r10"), mode=classifier_pb2.ENRICHMENT_MODE_TRANSPARENT
    )

    reply = await Stub(channel).Classify(request, timeout=5)

    assert reply.classification.fallback_reason == "transparent_mode"
    assert reply.classification.severity == alert_pb2.SEVERITY_CRITICAL
    assert fake_llm.requests == []


async def test_service_batch(fake_llm: FakeLLM, channel: grpc.aio.Channel) -> None:
    fake_llm.enqueue(case_completion("r18"), match="Second")
    alerts = [make_alert({"alertname": name}) for name in ("First", "Second")]
    request = classifier_pb2.BatchClassifyRequest(alerts=alerts)

    reply = await Stub(channel).BatchClassify(request, timeout=5)

    first, second = reply.classifications
    assert first.source == alert_pb2.VERDICT_SOURCE_MODEL
    assert second.fallback_reason == "refusal"


@pytest.mark.parametrize("count", [0, 4])
async def test_service_batch_size_rejected(
    channel: grpc.aio.Channel, count: int
) -> None:
    alerts = [make_alert({"alertname": "X"}) for _ in range(count)]
    request = classifier_pb2.BatchClassifyRequest(alerts=alerts)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await Stub(channel).BatchClassify(request, timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_service_template_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "prompts" / "classify.txt"
    settings = Settings.model_validate({"llm_prompt_template_file": str(path)})

    with pytest.raises(ConfigError) as caught:
        create_service(settings, CollectorRegistry())

    assert str(path) in str(caught.value)


def test_service_template_placeholder_missing(tmp_path: Path) -> None:
    path = tmp_path / "classify.txt"
    path.write_text("Classify {alert_data} please.")
    settings = Settings.model_validate({"llm_prompt_template_file": str(path)})

    with pytest.raises(ConfigError) as caught:
        create_service(settings, CollectorRegistry())

    assert "{historical_context}" in str(caught.value)


def test_service_start_fails_on_bad_template(tmp_path: Path) -> None:
    path = tmp_path / "classify.txt"
    path.write_text("no placeholders")
    env = {
        **os.environ,
        "LLM_PROMPT_TEMPLATE_FILE": str(path),
        "LISTEN_HOST": "127.0.0.1",
        "GRPC_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
    }

    result = subprocess.run(
        [sys.executable, "-m", "libs.cli", "serve", "classifier"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert str(path) in result.stderr


async def test_service_template_used(fake_llm: FakeLLM, tmp_path: Path) -> None:
    path = tmp_path / "classify.txt"
    path.write_text("Our rules.\n{alert_data}\n{historical_context}")
    settings = Settings.model_validate(
        {
            "llm_proxy_url": fake_llm.url,
            "llm_prompt_template_file": str(path),
            "classifier_context_timeout_seconds": 0,
        }
    )
    service = create_service(settings, CollectorRegistry())
    try:
        await service.classifier.classify(make_alert({"alertname": "X"}))
    finally:
        await service.close()

    user = fake_llm.requests[0].messages[1]["content"]
    assert user.startswith("Our rules.\n<alert_data>")
