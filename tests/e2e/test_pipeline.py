"""The whole pipeline as real processes: Alertmanager to gateway to targets."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from libs.alerts import compute_fingerprint
from tests.harness import Alertmanager, Mesh, Process, http_json, start_fake, wait_until

pytestmark = pytest.mark.e2e

ALERT_LABELS = {
    "alertname": "E2EDiskFull",
    "severity": "critical",
    "namespace": "prod",
    "instance": "db-1:9100",
}


class Fakes:
    """A fake model server and a local receiver, as processes."""

    def __init__(self, folder: Path, llm_args: tuple[str, ...] = ()) -> None:
        self.llm, self.llm_port = start_fake("tests.fakes.llm", folder, *llm_args)
        self.receiver, self.receiver_port = start_fake("tests.fakes.receiver", folder)
        self.targets_file = folder / "targets.yaml"
        self.targets_file.write_text(
            json.dumps(
                [
                    {
                        "name": "local-webhook",
                        "format": "webhook",
                        "url": f"{self.receiver_url}/hook",
                    },
                    {
                        "name": "local-alertmanager",
                        "format": "alertmanager",
                        "url": f"{self.receiver_url}/am",
                    },
                ]
            )
        )

    @property
    def receiver_url(self) -> str:
        return f"http://127.0.0.1:{self.receiver_port}"

    def env(self) -> dict[str, str]:
        return {
            "LLM_PROXY_URL": f"http://127.0.0.1:{self.llm_port}/v1",
            "LLM_API_KEY": "test-key",
            "PUBLISHING_TARGETS_FILE": str(self.targets_file),
            "DELIVERY_INITIAL_BACKOFF_SECONDS": "0.2",
        }

    def received(self, path: str) -> list[dict[str, Any]]:
        status, body = http_json("GET", f"{self.receiver_url}/_control/requests")
        assert status == 200
        return [r for r in body if r["path"] == path]

    def model_requests(self) -> list[dict[str, Any]]:
        status, body = http_json(
            "GET", f"http://127.0.0.1:{self.llm_port}/_control/requests"
        )
        assert status == 200
        return list(body)

    def stop(self) -> None:
        for process in (self.llm, self.receiver):
            process.stop()


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[Fakes]:
    started = Fakes(tmp_path)
    yield started
    started.stop()


def history_of(mesh: Mesh, fingerprint: str) -> list[dict[str, Any]]:
    status, body = http_json("GET", f"{mesh.url}/history?fingerprint={fingerprint}")
    assert status == 200, body
    return list(body["occurrences"])


def statuses(requests: list[dict[str, Any]]) -> list[str]:
    return [r["body"]["status"] for r in requests]


def test_alertmanager_firing_then_resolved(
    tmp_path: Path, fakes: Fakes, storage_env: dict[str, str]
):
    mesh = Mesh(tmp_path, {**fakes.env(), **storage_env})
    alertmanager = None
    try:
        mesh.start()
        alertmanager = Alertmanager(tmp_path, f"{mesh.url}/webhook/proxy")
        starts_at = datetime.now(UTC) - timedelta(seconds=5)
        alert = {
            "labels": ALERT_LABELS,
            "annotations": {"summary": "Disk on db-1 is 97% full"},
            "startsAt": starts_at.isoformat(),
            "generatorURL": "http://prometheus.example:9090/graph",
        }

        alertmanager.post_alerts([alert])
        wait_until(lambda: fakes.received("/hook"), 30, 0.2)
        alertmanager.post_alerts([{**alert, "endsAt": datetime.now(UTC).isoformat()}])
        wait_until(lambda: len(fakes.received("/hook")) >= 2, 30, 0.2)

        hook = fakes.received("/hook")
        assert statuses(hook) == ["firing", "resolved"]
        am = fakes.received("/am")
        assert statuses(am) == ["firing", "resolved"]
        first_alert = am[0]["body"]["alerts"][0]
        assert first_alert["labels"]["llm_severity"] == "critical"
        assert "llm_reasoning" in first_alert["annotations"]

        occurrences = history_of(mesh, compute_fingerprint(ALERT_LABELS))
        assert len(occurrences) == 1
        occurrence = occurrences[0]
        assert occurrence["status"] == "resolved"
        assert occurrence["ends_at"] is not None
        changes = occurrence["state_changes"]
        assert [c["status"] for c in changes] == ["firing", "resolved"]
        assert all(c["classification"] is not None for c in changes)
        assert changes[0]["classification"]["source"] == "model"
        assert len(fakes.model_requests()) >= 1
    finally:
        if alertmanager is not None:
            alertmanager.stop()
        mesh.stop()


def test_gateway_killed_after_answer_loses_nothing(tmp_path: Path):
    fakes = Fakes(tmp_path, ("--delay", "2"))
    mesh = Mesh(
        tmp_path,
        {
            **fakes.env(),
            "DATA_DIR": str(tmp_path / "data"),
            "WORK_LEASE_SECONDS": "3",
            "PIPELINE_BUDGET_SECONDS": "6",
            "PIPELINE_POLL_SECONDS": "0.2",
        },
    )
    try:
        mesh.start()
        body = json.loads(
            (
                Path(__file__).parent.parent
                / "fixtures"
                / "cases"
                / "r14"
                / "inbound.json"
            ).read_text()
        )

        status, answer = http_json("POST", f"{mesh.url}/webhook/proxy", body)
        assert status == 200, answer
        wait_until(lambda: len(fakes.model_requests()) == 1, 5, 0.05)
        gateway: Process = mesh.processes["gateway"]
        gateway.signal(signal.SIGKILL)
        gateway.popen.wait()
        mesh.start_one("gateway")

        wait_until(lambda: fakes.received("/hook"), 30, 0.2)
        wait_until(lambda: fakes.received("/am"), 30, 0.2)
        fingerprint = body["alerts"][0]["fingerprint"]
        occurrence = history_of(mesh, fingerprint)[0]
        assert occurrence["state_changes"][0]["classification"] is not None

        # Wait past another lease period: nothing more may arrive.
        import time

        time.sleep(4)
        assert len(fakes.received("/hook")) == 1
        assert len(fakes.received("/am")) == 1
    finally:
        mesh.stop()
        fakes.stop()
