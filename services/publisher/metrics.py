"""Prometheus metrics of the publisher, registered on the registry passed in.

Labels are bounded: `target` and `format` come from configuration, and
`reason` from `filters.FILTER_REASONS`.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.publisher.targets import Target


class PublisherMetrics:
    """Counters, gauges and histograms of publishing and delivery."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.success = Counter(
            "alert_history_publisher_success",
            "Deliveries a target accepted with a 2xx response.",
            ["target", "format"],
            registry=registry,
        )
        self.errors = Counter(
            "alert_history_publisher_errors",
            "Delivery attempts that failed: a non-2xx response, a timeout or a "
            "connection error.",
            ["target", "format"],
            registry=registry,
        )
        self.dead = Counter(
            "alert_history_publisher_dead_letters",
            "Deliveries given up: rejected by the target or out of attempts.",
            ["target", "format"],
            registry=registry,
        )
        self.latency = Histogram(
            "alert_history_publisher_latency_seconds",
            "Time from sending a delivery request to its response or failure.",
            ["target", "format"],
            registry=registry,
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.filtered = Counter(
            "alert_history_alerts_filtered",
            "Alerts a target's filter dropped, by the first criterion they failed.",
            ["target", "reason"],
            registry=registry,
        )
        self.target_status = Gauge(
            "alert_history_publishing_target_status",
            "1 when a configured target is enabled, 0 when it is disabled.",
            ["target", "format"],
            registry=registry,
        )
        self.targets_discovered = Gauge(
            "alert_history_publishing_targets_discovered",
            "Publishing targets discovered from Kubernetes Secrets and in effect, "
            "enabled or not.",
            registry=registry,
        )
        self.metrics_only = Gauge(
            "alert_history_metrics_only_mode",
            "1 when no publishing target is configured, so nothing is delivered.",
            registry=registry,
        )

    def show_targets(self, targets: Sequence[Target]) -> None:
        """Set the target gauges to the targets in effect, from every source."""
        self.target_status.clear()
        for target in targets:
            self.target_status.labels(target.name, target.format).set(
                1 if target.enabled else 0
            )
        discovered = [target for target in targets if target.source != "file"]
        self.targets_discovered.set(len(discovered))
        self.metrics_only.set(0 if targets else 1)
