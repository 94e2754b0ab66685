"""TLS on the gRPC servers, the gRPC clients and the gateway's HTTP server.

A CA and a server certificate for 127.0.0.1 and localhost are made with the
openssl command for each test module.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from alerthistory.history.v1 import history_pb2
from libs import cli, tls
from libs.clients import ServiceClients
from libs.config import ConfigError, Settings, load_settings
from libs.grpcserver import RunningService, start_service
from services.gateway.server import start_gateway
from services.history.service import create_service as create_history

SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
"""


@dataclass(frozen=True)
class Certificates:
    """PEM files of a test CA and of a server certificate it signed."""

    ca: Path
    cert: Path
    key: Path


# A new P-256 key without a passphrase.
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    assert binary is not None, "the openssl command is not installed"
    subprocess.run(
        [binary, *args], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def make_ca(folder: Path, subject: str) -> Path:
    """Write a self-signed CA valid for a day; return its certificate."""
    openssl(
        *("req", "-x509", *NEW_KEY, "-keyout", "ca.key", "-out", "ca.crt"),
        *("-days", "1", "-subj", subject),
        cwd=folder,
    )
    return folder / "ca.crt"


def make_server_certificate(folder: Path) -> None:
    """Write server.crt and server.key, signed by the CA in `folder`."""
    openssl(
        *("req", *NEW_KEY, "-keyout", "server.key", "-out", "server.csr"),
        *("-subj", "/CN=localhost"),
        cwd=folder,
    )
    (folder / "server.ext").write_text(SERVER_EXTENSIONS)
    openssl(
        *("x509", "-req", "-in", "server.csr", "-out", "server.crt", "-days", "1"),
        *("-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"),
        *("-extfile", "server.ext"),
        cwd=folder,
    )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    ca = make_ca(folder, "/CN=alert-history test CA")
    make_server_certificate(folder)
    return Certificates(ca, folder / "server.crt", folder / "server.key")


def tls_settings(certificates: Certificates, tmp_path: Path, **extra: str) -> Settings:
    return load_settings(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "GRPC_TLS_CERT_FILE": str(certificates.cert),
            "GRPC_TLS_KEY_FILE": str(certificates.key),
            "GRPC_TLS_CA_FILE": str(certificates.ca),
            "SHUTDOWN_DELAY_SECONDS": "0",
            **extra,
        }
    )


@pytest.fixture
async def history(
    certificates: Certificates, tmp_path: Path
) -> AsyncIterator[RunningService]:
    settings = tls_settings(certificates, tmp_path)
    registry = CollectorRegistry()
    running = await start_service(
        create_history(settings, registry),
        settings,
        registry,
        port=0,
        host="127.0.0.1",
    )
    yield running
    await running.stop(0, 1)


async def health_status(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


async def test_tls_grpc_server_answers_tls_client(history, certificates):
    credentials = grpc.ssl_channel_credentials(certificates.ca.read_bytes())

    async with grpc.aio.secure_channel(
        f"127.0.0.1:{history.port}", credentials
    ) as channel:
        status = await health_status(channel)

    assert status == health_pb2.HealthCheckResponse.SERVING


async def test_tls_grpc_server_rejects_plaintext_client(history):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{history.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health_status(channel)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_grpc_client_rejects_unknown_ca(history, certificates, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    other_ca = make_ca(other, "/CN=other CA")
    credentials = grpc.ssl_channel_credentials(other_ca.read_bytes())

    async with grpc.aio.secure_channel(
        f"127.0.0.1:{history.port}", credentials
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health_status(channel)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_service_clients_call_over_tls(history, certificates, tmp_path):
    settings = tls_settings(
        certificates, tmp_path, HISTORY_ADDR=f"127.0.0.1:{history.port}"
    )
    clients = ServiceClients(settings)
    try:
        reply = await clients.history.ListOccurrences(
            history_pb2.ListOccurrencesRequest(limit=1), timeout=5
        )
    finally:
        await clients.close()

    assert list(reply.occurrences) == []


async def test_tls_up_health_wait_uses_ca(history, certificates, tmp_path):
    settings = tls_settings(certificates, tmp_path)
    address = f"127.0.0.1:{history.port}"

    ready = await asyncio.to_thread(
        cli._wait_for_grpc, address, time.monotonic() + 10, settings
    )

    assert ready


@pytest.fixture
async def https_gateway(certificates: Certificates, tmp_path: Path):
    settings = load_settings(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "HTTP_TLS_CERT_FILE": str(certificates.cert),
            "HTTP_TLS_KEY_FILE": str(certificates.key),
            "PIPELINE_POLL_SECONDS": "5",
        }
    )
    running = await start_gateway(
        settings, CollectorRegistry(), port=0, host="127.0.0.1"
    )
    yield running
    await running.stop(0, 1)


async def test_tls_gateway_answers_https(https_gateway, certificates):
    context = ssl.create_default_context(cafile=str(certificates.ca))

    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"https://127.0.0.1:{https_gateway.port}/healthz", ssl=context
        ) as reply,
    ):
        status = reply.status

    assert status == 200


async def test_tls_gateway_rejects_plain_http(https_gateway):
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(
                f"http://127.0.0.1:{https_gateway.port}/healthz"
            ) as reply:
                await reply.read()


def test_tls_server_cert_without_key_is_config_error(certificates, tmp_path):
    settings = load_settings({"GRPC_TLS_CERT_FILE": str(certificates.cert)})

    with pytest.raises(ConfigError, match="GRPC_TLS_KEY_FILE"):
        tls.grpc_server_credentials(settings)


def test_tls_http_key_without_cert_is_config_error(certificates):
    settings = load_settings({"HTTP_TLS_KEY_FILE": str(certificates.key)})

    with pytest.raises(ConfigError, match="HTTP_TLS_CERT_FILE"):
        tls.http_server_ssl_context(settings)


def test_tls_missing_ca_file_is_config_error(tmp_path):
    settings = load_settings({"GRPC_TLS_CA_FILE": str(tmp_path / "absent.pem")})

    with pytest.raises(ConfigError, match="GRPC_TLS_CA_FILE"):
        tls.grpc_channel_credentials(settings)


def test_tls_mismatched_http_key_is_config_error(certificates, tmp_path):
    settings = load_settings(
        {
            "HTTP_TLS_CERT_FILE": str(certificates.cert),
            "HTTP_TLS_KEY_FILE": str(certificates.ca),
        }
    )

    with pytest.raises(ConfigError, match="HTTP_TLS_KEY_FILE"):
        tls.http_server_ssl_context(settings)


def test_tls_unset_means_plaintext(tmp_path):
    settings = load_settings({})

    assert tls.grpc_server_credentials(settings) is None
    assert tls.grpc_channel_credentials(settings) is None
    assert tls.http_server_ssl_context(settings) is None
