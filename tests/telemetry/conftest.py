"""A mesh of real processes that exports its spans to an in-process collector.

One webhook goes through it before the tests read the spans, the logs and
the /metrics endpoints, so the whole package starts the processes once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.otlp import CollectedSpan, OtlpCollector
from tests.harness import Mesh, Process, http_json, start_fake, wait_until

SERVICES = ("gateway", "history", "classifier", "publisher")


def service_name(name: str) -> str:
    return f"alert-history-{name}"


@dataclass
class TracedMesh:
    """The started mesh, its collector and the one webhook sent through it."""

    mesh: Mesh
    collector: OtlpCollector
    receiver_port: int
    alertname: str
    fingerprint: str = ""

    def root(self) -> CollectedSpan | None:
        """The gateway's server span of the webhook, once exported."""
        for span in self.collector.spans:
            if (
                span.service == service_name("gateway")
                and span.kind == "SERVER"
                and self.alertname in str(span.attributes.get("group_key"))
            ):
                return span
        return None

    def trace(self) -> list[CollectedSpan]:
        root = self.root()
        return [] if root is None else self.collector.trace(root.trace_id)

    def complete(self) -> bool:
        """Whether every service and the delivery attempt exported its spans."""
        spans = self.trace()
        services = {span.service for span in spans}
        delivered = any(span.name == "deliver" for span in spans)
        return delivered and all(service_name(name) in services for name in SERVICES)

    def received(self, path: str) -> list[dict[str, Any]]:
        status, body = http_json(
            "GET", f"http://127.0.0.1:{self.receiver_port}/_control/requests"
        )
        assert status == 200
        return [request for request in body if request["path"] == path]


def webhook(alertname: str) -> dict[str, Any]:
    labels = {"alertname": alertname, "severity": "critical", "instance": "db-1"}
    return {
        "version": "4",
        "status": "firing",
        "receiver": "traced",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "groupLabels": {"alertname": alertname},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "Disk on db-1 is 97% full"},
                "startsAt": "2026-05-01T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example:9090/graph",
            }
        ],
    }


def _start_fakes(folder: Path) -> tuple[list[Process], int, int]:
    llm, llm_port = start_fake("tests.fakes.llm", folder)
    receiver, receiver_port = start_fake("tests.fakes.receiver", folder)
    return [llm, receiver], llm_port, receiver_port


@pytest.fixture(scope="package")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedMesh]:
    folder = tmp_path_factory.mktemp("traced")
    fakes, llm_port, receiver_port = _start_fakes(folder)
    targets = folder / "targets.yaml"
    targets.write_text(
        json.dumps(
            [
                {
                    "name": "traced-webhook",
                    "format": "webhook",
                    "url": f"http://127.0.0.1:{receiver_port}/hook",
                }
            ]
        )
    )
    with OtlpCollector.in_thread() as collector:
        mesh = Mesh(
            folder,
            {
                "DATA_DIR": str(folder / "data"),
                "LLM_PROXY_URL": f"http://127.0.0.1:{llm_port}/v1",
                "LLM_API_KEY": "test-key",
                "PUBLISHING_TARGETS_FILE": str(targets),
                "PIPELINE_POLL_SECONDS": "0.2",
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            },
        )
        try:
            mesh.start()
            running = TracedMesh(
                mesh, collector, receiver_port, f"TracedDiskFull{uuid.uuid4().hex[:8]}"
            )
            status, body = http_json(
                "POST", f"{mesh.url}/webhook/proxy", webhook(running.alertname)
            )
            assert status == 200, body
            running.fingerprint = body["alerts"][0]["fingerprint"]
            wait_until(lambda: running.received("/hook"), 30, 0.2)
            wait_until(running.complete, 30, 0.2)
            yield running
        finally:
            mesh.stop()
            for process in fakes:
                process.stop()
