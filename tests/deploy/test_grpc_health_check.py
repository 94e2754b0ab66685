"""The chart's TLS health check script against a real TLS gRPC server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.harness import ROOT

SCRIPT = ROOT / "helm" / "alert-history" / "files" / "grpc_health_check.py"
SERVER_NAME = "alert-history-history.monitoring.svc"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for SERVER_NAME and its key, made by openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            f"/CN={SERVER_NAME}",
            "-addext",
            f"subjectAltName=DNS:{SERVER_NAME}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
def tls_server(
    certificate: tuple[Path, Path],
) -> Iterator[tuple[int, health.HealthServicer]]:
    cert, key = certificate
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(grace=None)


def run_check(
    port: int, server_name: str, ca_file: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            f"--port={port}",
            f"--server-name={server_name}",
            f"--ca-file={ca_file}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_health_check_serving(tls_server, certificate):
    port, servicer = tls_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    result = run_check(port, SERVER_NAME, certificate[0])

    assert result.returncode == 0, result.stderr


def test_health_check_not_serving(tls_server, certificate):
    port, servicer = tls_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    result = run_check(port, SERVER_NAME, certificate[0])

    assert result.returncode == 1
    assert "NOT_SERVING" in result.stderr


def test_health_check_wrong_server_name(tls_server, certificate):
    port, servicer = tls_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    result = run_check(port, "other.monitoring.svc", certificate[0])

    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
