"""TLS for the gRPC servers, the gRPC clients and the gateway's HTTP server.

Each part is off while its variables are unset:

- GRPC_TLS_CERT_FILE with GRPC_TLS_KEY_FILE: every gRPC server accepts TLS
  only. Clients are not asked for a certificate.
- GRPC_TLS_CA_FILE: every gRPC client (the gateway's, `alert-history up`'s
  health checks) verifies the server against this CA bundle, and the host
  name it dials must be in the server certificate's subjectAltName.
- HTTP_TLS_CERT_FILE with HTTP_TLS_KEY_FILE: the gateway serves HTTPS only.

The metrics ports of the gRPC services stay plain HTTP.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from libs.config import ConfigError, Settings


def _read(variable: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"invalid environment variable {variable}={str(path)!r}: "
            f"failed to read the file: {exc.strerror}"
        ) from None


def _pair(
    prefix: str, cert_file: Path | None, key_file: Path | None
) -> tuple[Path, Path] | None:
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        present, missing = ("CERT", "KEY") if key_file is None else ("KEY", "CERT")
        raise ConfigError(
            f"{prefix}_TLS_{present}_FILE is set but {prefix}_TLS_{missing}_FILE "
            "is not; set both to turn on TLS, or neither"
        )
    return cert_file, key_file


def grpc_server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Return the server credentials of GRPC_TLS_CERT_FILE and
    GRPC_TLS_KEY_FILE, or None for plaintext."""
    pair = _pair("GRPC", settings.grpc_tls_cert_file, settings.grpc_tls_key_file)
    if pair is None:
        return None
    cert_file, key_file = pair
    chain = _read("GRPC_TLS_CERT_FILE", cert_file)
    key = _read("GRPC_TLS_KEY_FILE", key_file)
    return grpc.ssl_server_credentials([(key, chain)])


def grpc_channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Return client credentials trusting GRPC_TLS_CA_FILE, or None for
    plaintext."""
    if settings.grpc_tls_ca_file is None:
        return None
    ca = _read("GRPC_TLS_CA_FILE", settings.grpc_tls_ca_file)
    return grpc.ssl_channel_credentials(root_certificates=ca)


def aio_channel(
    address: str,
    settings: Settings,
    *,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] = (),
) -> grpc.aio.Channel:
    """Open an asyncio channel to `address`, over TLS when GRPC_TLS_CA_FILE is set."""
    credentials = grpc_channel_credentials(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(
            address, options=list(options), interceptors=list(interceptors) or None
        )
    return grpc.aio.secure_channel(
        address,
        credentials,
        options=list(options),
        interceptors=list(interceptors) or None,
    )


def sync_channel(address: str, settings: Settings) -> grpc.Channel:
    """Open a blocking channel to `address`, over TLS when GRPC_TLS_CA_FILE is set."""
    credentials = grpc_channel_credentials(settings)
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials)


def http_server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Return the gateway's server SSL context, or None for plain HTTP."""
    pair = _pair("HTTP", settings.http_tls_cert_file, settings.http_tls_key_file)
    if pair is None:
        return None
    cert_file, key_file = pair
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"failed to read HTTP_TLS_CERT_FILE or HTTP_TLS_KEY_FILE: {exc}"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            "HTTP_TLS_CERT_FILE and HTTP_TLS_KEY_FILE are not a matching PEM "
            f"certificate chain and private key: {exc}"
        ) from None
    return context
