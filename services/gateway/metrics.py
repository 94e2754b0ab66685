"""Metrics of the gateway's webhook endpoints."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class GatewayMetrics:
    """Webhook counters and timings."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.webhooks = Counter(
            "alert_history_webhooks_total",
            "Webhook requests answered, by endpoint and HTTP status code.",
            ["endpoint", "code"],
            registry=registry,
        )
        self.rejected = Counter(
            "alert_history_webhooks_rejected_total",
            "Webhook requests rejected before storage, by reason.",
            ["reason"],
            registry=registry,
        )
        self.alerts = Counter(
            "alert_history_webhook_alerts_total",
            "Alerts received in accepted webhooks, by outcome (new or repeat).",
            ["outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "alert_history_webhook_seconds",
            "Time from receiving a webhook to answering it.",
            ["endpoint"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
