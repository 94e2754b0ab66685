"""Configuration read once from environment variables into a typed object.

Every variable the product reads is a field of `Settings`; the README's table
lists the same names. `load_settings` stops start-up with a `ConfigError`
that names each invalid variable, and never echoes a secret's value.
"""

from __future__ import annotations

import os
import re
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
# A Kubernetes namespace name: an RFC 1123 label.
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


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
    recommender_addr: str = Field(
        "127.0.0.1:50054", description="host:port of the recommender service."
    )
    webhook_max_body_bytes: int = Field(
        16 * MIB,
        ge=1024,
        description="Largest webhook body accepted, in bytes; larger ones get 413.",
    )
    store_concurrency: int = Field(
        2,
        ge=1,
        le=64,
        description="Store calls to history one gateway keeps in flight; webhooks "
        "that arrive while all are busy are stored together in the next call.",
    )
    store_batch_size: int = Field(
        64,
        ge=1,
        le=500,
        description="Most webhooks stored together in one call to history.",
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
    api_tokens: SecretStr | None = Field(
        None,
        description="Named API tokens as name:token pairs separated by commas. "
        "When set, every call that changes state needs one as a bearer token, "
        "and each change is written to the audit log under the token's name.",
    )
    api_read_protected: bool = Field(
        False,
        description="With API_TOKENS set, require a token for reading too "
        "(history, targets, recommendations, the dashboard's data).",
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
        4,
        ge=1,
        le=64,
        description="Batches of work items one gateway processes at once.",
    )
    pipeline_batch_size: int = Field(
        64,
        ge=1,
        le=1000,
        description="Work items leased and classified together in one batch.",
    )
    pipeline_poll_seconds: float = Field(
        1.0, gt=0, description="Seconds between polls of the work queue."
    )
    work_lease_seconds: int = Field(
        30,
        ge=1,
        description="Seconds a gateway keeps the lease on a work item before "
        "another may take it over.",
    )

    # Classifier.
    llm_proxy_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible API (a trailing /v1 is "
        "accepted); unset for the deterministic rules.",
    )
    llm_api_key: SecretStr | None = Field(
        None,
        description="API key of the model endpoint, sent as a bearer token, or "
        "in the api-key header with LLM_PROVIDER=azure.",
    )
    llm_auth_token: SecretStr | None = Field(
        None,
        description="Token sent in the X-Auth-Token header to the model "
        "endpoint, for proxies that require one.",
    )
    llm_provider: Literal["openai", "azure"] = Field(
        "openai",
        description="openai: any OpenAI-compatible API (OpenAI, vLLM, Ollama, "
        "LiteLLM); azure: Azure OpenAI, where the model name is the deployment "
        "name.",
    )
    llm_azure_api_version: str = Field(
        "2024-10-21",
        description="api-version query parameter sent with LLM_PROVIDER=azure.",
    )
    llm_model: str = Field(
        "gpt-4o-mini",
        description="Model name to request for every operation without its own "
        "model setting.",
    )
    llm_classify_model: str | None = Field(
        None, description="Model name for classification; unset uses LLM_MODEL."
    )
    llm_structured_output: Literal["json_schema", "json_object", "none"] = Field(
        "json_object",
        description="response_format of model requests: json_schema (a strict "
        "schema), json_object (JSON mode) or none for endpoints that reject "
        "the field.",
    )
    llm_max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="HTTP attempts per model request; connection errors, "
        "timeouts, 408, 409, 429 and 5xx are retried, other statuses are not.",
    )
    llm_retry_initial_seconds: float = Field(
        0.5, gt=0, description="Base of the exponential backoff between attempts."
    )
    llm_retry_max_seconds: float = Field(
        8.0,
        gt=0,
        description="Maximum wait between two attempts, a Retry-After header included.",
    )
    llm_circuit_failure_threshold: int = Field(
        5,
        ge=1,
        description="Consecutive failed model attempts that open the circuit; "
        "while it is open, classifications skip the model.",
    )
    llm_circuit_open_seconds: float = Field(
        30.0,
        gt=0,
        description="Seconds the circuit stays open before one probe request "
        "may test the model again.",
    )
    llm_max_calls_per_minute: int | None = Field(
        None,
        ge=1,
        description="Model requests allowed per minute, counted across "
        "replicas through REDIS_URL or per process without it; the overflow "
        "gets the rules' verdict with reason spend_limit. Unset for no limit.",
    )
    llm_max_tokens_per_minute: int | None = Field(
        None,
        ge=1,
        description="Model tokens allowed per minute, counted like "
        "LLM_MAX_CALLS_PER_MINUTE; once they are used up, requests get reason "
        "spend_limit until the minute ends. Unset for no limit.",
    )
    llm_prompt_template_file: Path | None = Field(
        None,
        description="Text file of the classification prompt, with "
        "{alert_data} and {historical_context} placeholders; unset for the "
        "built-in prompt.",
    )
    llm_omit_labels: str = Field(
        "", description="Comma-separated label names never sent to the model."
    )
    llm_omit_annotations: str = Field(
        "",
        description="Comma-separated annotation names never sent to the model.",
    )
    llm_redact_labels: str = Field(
        "",
        description="Comma-separated label names whose values the model "
        "receives as [redacted].",
    )
    llm_redact_annotations: str = Field(
        "",
        description="Comma-separated annotation names whose values the model "
        "receives as [redacted].",
    )
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
    classifier_context_timeout_seconds: float = Field(
        0.5,
        ge=0,
        description="Seconds the classifier waits for an alert's history from "
        "HISTORY_ADDR before it prompts without it; 0 never asks.",
    )
    classifier_last_known_max_age_seconds: int = Field(
        604800,
        ge=0,
        description="Oldest stored model verdict served, with source "
        "LAST_KNOWN, while the model fails; 0 serves none.",
    )
    classification_cache_key_prefix: str = Field(
        "alert-history:classifier:",
        description="Prefix of the classifier's Redis keys: verdicts, locks "
        "and spend counters.",
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
        300.0, gt=0, description="Maximum wait between two attempts."
    )
    delivery_timeout_seconds: float = Field(
        10.0, gt=0, description="Seconds one delivery request may take."
    )
    publisher_retention_days: int = Field(
        90,
        ge=0,
        description="Days delivery records are kept. Deliveries that succeeded, "
        "or were dead-lettered and discarded, earlier are deleted with their "
        "attempts. Pending deliveries and dead letters not discarded are kept, "
        "and 0 keeps everything.",
    )
    publisher_retention_interval_seconds: float = Field(
        3600.0,
        gt=0,
        description="Seconds between two retention runs of the publisher. One "
        "replica runs at a time.",
    )
    delivery_concurrency_per_target: int = Field(
        16,
        ge=1,
        le=64,
        description="Requests in flight per target. Deliveries of one group "
        "still go one at a time, in order.",
    )
    target_discovery_namespaces: str | None = Field(
        None,
        description="Comma-separated namespaces whose labelled Secrets define "
        "publishing targets; unset turns target discovery off.",
    )
    target_discovery_label_selector: str = Field(
        "publishing-target=true",
        description="Kubernetes label selector of the Secrets that define "
        "publishing targets.",
    )
    target_discovery_resync_seconds: float = Field(
        300.0,
        gt=0,
        description="Seconds between full lists of the target Secrets, besides "
        "the watch that applies changes as they happen.",
    )
    target_discovery_watch_timeout_seconds: int = Field(
        240,
        ge=1,
        description="Seconds the API server keeps one watch of the target "
        "Secrets open before the publisher starts a new one.",
    )
    kubeconfig: str | None = Field(
        None,
        description="Kubeconfig file (several joined by ':') that target "
        "discovery uses; unset in a pod for its ServiceAccount, otherwise "
        "~/.kube/config.",
    )

    # History.
    history_retention_days: int = Field(
        90,
        ge=0,
        description="Days of history kept: occurrences last seen earlier, their "
        "state changes, classifications and notifications, and work items "
        "completed earlier, are deleted; 0 keeps everything.",
    )
    history_retention_interval_seconds: float = Field(
        3600.0,
        gt=0,
        description="Seconds between two retention runs of the history service; "
        "one replica runs at a time.",
    )
    history_retention_batch_size: int = Field(
        5000,
        ge=1,
        le=100000,
        description="Occurrences (or notifications, or work items) deleted per "
        "retention transaction.",
    )
    history_retention_pause_seconds: float = Field(
        0.1,
        ge=0,
        description="Pause between two retention transactions, leaving the "
        "database to ingestion.",
    )

    # Recommender.
    prometheus_url: str | None = Field(
        None,
        description="Base URL of Prometheus, whose /api/v1/rules gives each "
        "rule's `for` and evaluation interval; unset infers them from history.",
    )
    alertmanager_url: str | None = Field(
        None,
        description="Base URL of Alertmanager, whose /api/v2/status gives the "
        "routes' group_wait, group_interval and repeat_interval; unset infers "
        "them from history.",
    )
    config_api_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Seconds one request to PROMETHEUS_URL or ALERTMANAGER_URL "
        "may take.",
    )
    llm_recommend_model: str | None = Field(
        None, description="Model name for recommendations; unset uses LLM_MODEL."
    )
    recommender_window_hours: int = Field(
        168,
        ge=1,
        le=24 * 90,
        description="Hours of history one generation analyses, up to now.",
    )
    recommender_flap_min_cycles: int = Field(
        6,
        ge=2,
        description="Fire and resolve cycles (occurrences) of one fingerprint in "
        "the window from which an alert counts as flapping.",
    )
    recommender_short_lived_seconds: int = Field(
        300,
        ge=1,
        description="A resolved occurrence shorter than this many seconds is "
        "short-lived.",
    )
    recommender_short_lived_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of short-lived resolved occurrences from which an "
        "alert counts as short-lived.",
    )
    recommender_min_resolved: int = Field(
        3,
        ge=1,
        description="Fewest resolved occurrences in the window before the "
        "short-lived share is judged.",
    )
    recommender_long_firing_hours: float = Field(
        24.0,
        gt=0,
        description="Hours an occurrence fires without resolving before its "
        "alert counts as never resolving.",
    )
    recommender_repeater_min_occurrences: int = Field(
        50,
        ge=1,
        description="Occurrences in the window from which an alert counts as a "
        "heavy repeater.",
    )
    recommender_repeater_min_deliveries: int = Field(
        200,
        ge=1,
        description="Notifications in the window, repeats included, from which "
        "an alert counts as a heavy repeater.",
    )
    recommender_noise_ratio: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Share of classified occurrences judged noise from which an "
        "alert counts as mostly noise.",
    )
    recommender_min_classified: int = Field(
        5,
        ge=1,
        description="Fewest classified occurrences in the window before the "
        "noise share is judged.",
    )
    recommender_max_model_requests: int = Field(
        50,
        ge=0,
        description="Model requests one generation makes at most; the other "
        "flagged alerts get the deterministic recommendation.",
    )
    recommender_generate_lock_seconds: int = Field(
        600,
        ge=10,
        description="Seconds the Redis lock of a generation lives before it "
        "expires, should its holder die.",
    )

    @field_validator(
        "history_addr", "classifier_addr", "publisher_addr", "recommender_addr"
    )
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

    @field_validator("api_tokens")
    @classmethod
    def _check_api_tokens(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_api_tokens(value.get_secret_value())
        return value

    @field_validator("target_discovery_namespaces")
    @classmethod
    def _check_namespaces(cls, value: str | None) -> str | None:
        for namespace in _split_namespaces(value):
            if not _NAMESPACE.match(namespace):
                raise ValueError(
                    f"{namespace[:64]!r} is not a namespace name: expected "
                    "comma-separated lowercase letters, digits and '-'"
                )
        return value

    @field_validator("llm_proxy_url", "prometheus_url", "alertmanager_url")
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

    def discovery_namespaces(self) -> list[str]:
        """Namespaces of TARGET_DISCOVERY_NAMESPACES, empty when discovery is off."""
        return _split_namespaces(self.target_discovery_namespaces)

    def webhook_auth_configured(self) -> bool:
        return bool(self.webhook_bearer_token or self.webhook_basic_auth_username)


def parse_api_tokens(text: str) -> dict[str, str]:
    """Parse name:token pairs into {token: name}; raise ValueError when malformed."""
    tokens: dict[str, str] = {}
    for number, pair in enumerate(text.split(","), start=1):
        name, sep, token = pair.strip().partition(":")
        if not sep or not name.strip() or len(token.strip()) < 8:
            raise ValueError(
                f"pair {number} is not name:token with a token of at least 8 characters"
            )
        if token.strip() in tokens or name.strip() in tokens.values():
            raise ValueError(f"pair {number} repeats a name or a token")
        tokens[token.strip()] = name.strip()
    return tokens


def _split_namespaces(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


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
    """Return the README's table of every environment variable, as Markdown."""
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
