"""SIGTERM drains a service: NOT_SERVING first, then in-flight calls finish."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alerthistory.alert.v1 import alert_pb2
from alerthistory.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from tests.harness import Mesh, start_fake, wait_until

pytestmark = pytest.mark.e2e


def health_status(address: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=0.5
            )
        except grpc.RpcError:
            return None
    return int(reply.status)


def test_sigterm_drains_slow_call(tmp_path: Path):
    llm, llm_port = start_fake("tests.fakes.llm", tmp_path, "--delay", "3")
    mesh = Mesh(
        tmp_path,
        {
            "LLM_PROXY_URL": f"http://127.0.0.1:{llm_port}",
            "SHUTDOWN_DELAY_SECONDS": "1.5",
            "SHUTDOWN_GRACE_SECONDS": "10",
        },
    )
    try:
        process = mesh.start_one("classifier")
        address = mesh.address("classifier")
        alert = alert_pb2.Alert(
            fingerprint="00000000000000d1",
            status=alert_pb2.ALERT_STATUS_FIRING,
            labels={"alertname": "SlowModel", "severity": "warning"},
        )
        alert.starts_at.FromJsonString("2024-05-01T10:00:00Z")
        with grpc.insecure_channel(address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            call = stub.Classify.future(
                classifier_pb2.ClassifyRequest(alert=alert, budget=Duration(seconds=8)),
                timeout=20,
            )
            wait_until(lambda: len(llm_requests(llm_port)) == 1, 5)

            process.signal(signal.SIGTERM)
            wait_until(
                lambda: (
                    health_status(address) == health_pb2.HealthCheckResponse.NOT_SERVING
                ),
                1.5,
                0.05,
            )
            assert not call.done()

            reply = call.result()
        assert reply.classification.source == alert_pb2.VERDICT_SOURCE_MODEL
        assert process.popen.wait(timeout=15) == 0
    finally:
        mesh.stop()
        llm.stop()


def llm_requests(port: int) -> list[object]:
    from tests.harness import http_json

    status, body = http_json("GET", f"http://127.0.0.1:{port}/_control/requests")
    assert status == 200
    return list(body)
