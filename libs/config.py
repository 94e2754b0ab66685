"""Configuration read once from environment variables into a typed object.

Every variable the product reads is a field of `Settings`; the README's table
lists the same names. `load_settings` stops start-up with a `ConfigError`
that names each invalid variable, and never echoes a secret's value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024

# Default gRPC and metrics ports of each service when GRPC_PORT and
# METRICS_PORT are unset.
DEFAULT_GRPC_PORTS = {
    "history": 50051,
    "classifier": 50052,
    "publisher": 50053,
    "recommender": 50054,
}
DEFAULT_METRICS_PORTS = {
    "history": 9101,
    "classifier": 9102,
    "publisher": 9103,
    "recommender": 9104,
}

Port = int


class ConfigError(Exception):
    """An environment variable is missing or invalid."""


class Settings(BaseSettings):
    """Every setting of every service, read from environment variables."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", env_ignore_empty=True
    )

    # Common to every service.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level of log record written to stdout."
    )
    listen_host: str = Field(
        "0.0.0.0", description="Address the HTTP and gRPC servers bind to."
    )
    grpc_port: Port | None = Field(
        None,
        ge=0,
        le=65535,
        description="gRPC port of a service; defaults to history 50051, "
        "classifier 50052, publisher 50053, recommender 50054.",
    )
    metrics_port: Port | None = Field(
        None,
        ge=0,
        le=65535,
        description="HTTP port serving /metrics of a gRPC service; defaults to "
        "history 9101, classifier 9102, publisher 9103, recommender 9104.",
    )
    grpc_max_message_bytes: int = Field(
        4 * MIB,
        ge=64 * 1024,
        description="Largest gRPC message sent or received, in bytes; batches "
        "are split to stay under it.",
    )
    shutdown_delay_seconds: float = Field(
        2.0,
        ge=0,
        description="Seconds a service reports NOT_SERVING after SIGTERM before "
        "it stops taking new calls.",
    )
    shutdown_grace_seconds: float = Field(
        20.0,
        ge=0,
        description="Seconds in-flight calls get to finish after SIGTERM.",
    )
    database_url: SecretStr | None = Field(
        None,
        description="postgresql://user:password@host:5432/db for PostgreSQL; "
        "unset for an embedded SQLite file in DATA_DIR (one machine only).",
    )
    data_dir: Path = Field(
        Path("./data"), description="Folder of the embedded SQLite files."
    )
    database_pool_size: int = Field(
        10, ge=1, le=200, description="PostgreSQL connections per process."
    )
    migrate_on_start: bool = Field(
        True,
        description="Apply missing schema migrations when a service starts; "
        "safe with many replicas. Set false to rely on `alert-history migrate`.",
    )
    redis_url: SecretStr | None = Field(
        None,
        description="redis://host:6379/0 to share caches, locks and the "
        "enrichment mode across replicas; unset for in-process state.",
    )

    # TLS, off while unset.
    grpc_tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate chain the gRPC server presents; with "
        "GRPC_TLS_KEY_FILE, turns on TLS for the gRPC server.",
    )
    grpc_tls_key_file: Path | None = Field(
        None, description="PEM private key of GRPC_TLS_CERT_FILE."
    )
    grpc_tls_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle gRPC clients use to verify the services' "
        "certificates; unset for plaintext calls to HISTORY_ADDR, "
        "CLASSIFIER_ADDR and PUBLISHER_ADDR.",
    )
    http_tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate chain the gateway's HTTP server presents; "
        "with HTTP_TLS_KEY_FILE, turns on HTTPS.",
    )
    http_tls_key_file: Path | None = Field(
        None, description="PEM private key of HTTP_TLS_CERT_FILE."
    )

    # Gateway.
    http_port: Port = Field(
        8080, ge=0, le=65535, description="HTTP port of the gateway."
    )
    history_addr: str = Field(
        "127.0.0.1:50051", description="host:port of the history service."
    )
    classifier_addr: str = Field(
        "127.0.0.1:50052", description="host:port of the classifier service."
    )
    publisher_addr: str = Field(
        "127.0.0.1:50053", description="host:port of the publisher service."
    )
    webhook_max_body_bytes: int = Field(
        16 * MIB,
        ge=1024,
        description="Largest webhook body accepted, in bytes; larger ones get 413.",
    )
    webhook_basic_auth_username: str | None = Field(
        None,
        description="With WEBHOOK_BASIC_AUTH_PASSWORD, the basic auth user the "
        "webhook requires.",
    )
    webhook_basic_auth_password: SecretStr | None = Field(
        None, description="Basic auth password the webhook requires."
    )
    webhook_bearer_token: SecretStr | None = Field(
        None, description="Bearer token the webhook requires."
    )
    enrichment_mode: Literal["transparent", "enriched"] = Field(
        "enriched",
        description="transparent: rules only, no model call; enriched: ask the "
        "model when one is configured.",
    )
    pipeline_budget_seconds: float = Field(
        5.0,
        gt=0,
        description="Seconds classification may take before the rules' verdict "
        "is published instead; the model's verdict is still cached.",
    )
    pipeline_concurrency: int = Field(
        8, ge=1, le=256, description="Work items one gateway processes at once."
    )
    pipeline_poll_seconds: float = Field(
        1.0, gt=0, description="Seconds between polls of the work queue."
    )
    work_lease_seconds: int = Field(
        30,
        ge=1,
        description="Seconds a gateway holds a work item before another may "
        "take it over.",
    )

    # Classifier.
    llm_proxy_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible API (a trailing /v1 is "
        "accepted); unset for the deterministic rules.",
    )
    llm_api_key: SecretStr | None = Field(
        None, description="API key sent as a bearer token to the model."
    )
    llm_model: str = Field("gpt-4o-mini", description="Model name to request.")
    llm_timeout_seconds: float = Field(
        20.0, gt=0, description="Seconds one model request may take."
    )
    classifier_max_batch: int = Field(
        500, ge=1, description="Most alerts one BatchClassify call accepts."
    )
    classifier_concurrency: int = Field(
        8, ge=1, le=256, description="Model requests one classifier runs at once."
    )
    classification_cache_ttl_seconds: int = Field(
        86400, ge=0, description="Seconds a model verdict stays cached."
    )
    classification_cache_max_entries: int = Field(
        10000,
        ge=1,
        description="Model verdicts one classifier keeps in memory; the least "
        "recently used are dropped first.",
    )
    classifier_severity_floor: bool = Field(
        True,
        description="Keep an alert whose own severity label (or annotation) is "
        "critical at critical even when the model says less; false lets the "
        "model lower it.",
    )

    # Publisher.
    publishing_targets_file: Path | None = Field(
        None,
        description="YAML file listing publishing targets; unset or empty for "
        "metrics-only mode.",
    )
    delivery_max_attempts: int = Field(
        12, ge=1, description="Attempts per delivery before it is dead-lettered."
    )
    delivery_initial_backoff_seconds: float = Field(
        5.0, gt=0, description="Wait after the first failed attempt."
    )
    delivery_max_backoff_seconds: float = Field(
        300.0, gt=0, description="Longest wait between two attempts."
    )
    delivery_timeout_seconds: float = Field(
        10.0, gt=0, description="Seconds one delivery request may take."
    )
    delivery_concurrency_per_target: int = Field(
        4, ge=1, le=64, description="Requests in flight per target."
    )

    @field_validator("history_addr", "classifier_addr", "publisher_addr")
    @classmethod
    def _check_address(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, such as 127.0.0.1:50051")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        scheme = value.get_secret_value().partition("://")[0]
        if scheme not in ("postgresql", "postgres", "sqlite"):
            raise ValueError("expected a postgresql:// or sqlite:/// URL")
        return value

    @field_validator("llm_proxy_url")
    @classmethod
    def _check_llm_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    def grpc_port_for(self, service: str) -> int:
        if self.grpc_port is not None:
            return self.grpc_port
        return DEFAULT_GRPC_PORTS[service]

    def metrics_port_for(self, service: str) -> int:
        if self.metrics_port is not None:
            return self.metrics_port
        return DEFAULT_METRICS_PORTS[service]

    def webhook_auth_configured(self) -> bool:
        return bool(self.webhook_bearer_token or self.webhook_basic_auth_username)


SECRET_FIELDS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if field.annotation in (SecretStr, SecretStr | None)
)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check every variable; raise ConfigError naming each bad one."""
    env = os.environ if environ is None else environ
    values = {
        name: env[name.upper()]
        for name in Settings.model_fields
        if env.get(name.upper(), "") != ""
    }
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        message = error["msg"]
        if name in SECRET_FIELDS:
            problems.append(f"invalid environment variable {name.upper()}: {message}")
        else:
            shown = str(error.get("input", ""))[:80]
            problems.append(
                f"invalid environment variable {name.upper()}={shown!r}: {message}"
            )
    return "; ".join(problems)


def settings_table() -> str:
    """The README's table of every environment variable, as Markdown."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = str(default)
        shown = "unset" if default is None else f"`{default}`"
        if name == "grpc_max_message_bytes" or name == "webhook_max_body_bytes":
            shown = f"`{default}` ({default // MIB} MiB)"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {shown} | {description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
