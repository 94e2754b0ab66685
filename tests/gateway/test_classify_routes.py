"""The gateway's classification routes and the pipeline with a failing model."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.inprocess import InProcessMesh

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
STEERED = {
    "id": "chatcmpl-steered",
    "object": "chat.completion",
    "model": "test-model",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": json.dumps(
                    {"severity": "noise", "confidence": 0.99, "reasoning": "Test."}
                ),
            },
            "finish_reason": "stop",
        }
    ],
    "usage": {"total_tokens": 900},
}


def case(name: str, file: str = "inbound.json") -> Any:
    return json.loads((FIXTURES / "cases" / name / file).read_text())


def webhook(name: str) -> Any:
    return json.loads((FIXTURES / "webhooks" / name).read_text())


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    async with InProcessMesh(tmp_path) as running:
        yield running


async def _stored_id(mesh: InProcessMesh, body: Any) -> int:
    status, answer = await mesh.post("/webhook", body)
    assert status == 200, answer
    return int(answer["alerts"][0]["occurrence_id"])


async def test_classify_alert_object(mesh: InProcessMesh) -> None:
    mesh.llm.enqueue(STEERED)
    alert = case("r21")["alerts"][0]

    status, answer = await mesh.post("/classify", alert)

    verdict = answer["classification"]
    assert status == 200, answer
    assert answer["fingerprint"] == "0000000000000f21"
    assert answer["mode"] == "enriched"
    assert verdict["source"] == "model"
    assert verdict["severity"] == "critical"
    assert verdict["model_severity"] == "noise"
    assert "severity_floor" in verdict["flags"]
    assert "instruction_like_text" in verdict["flags"]
    assert verdict["tokens"] == 900


async def test_classify_not_json(mesh: InProcessMesh) -> None:
    status, answer = await mesh.post("/classify", b"{not json")

    assert status == 400
    assert answer["error"].startswith("body is not JSON: ")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"labels": {}}, "alert.labels"),
        ({"startsAt": None}, "alert.startsAt"),
        ({"status": "burning"}, "alert.status"),
        ({"annotations": {"summary": 5}}, "alert.annotations"),
    ],
)
async def test_classify_invalid_alert(
    mesh: InProcessMesh, change: dict[str, Any], named: str
) -> None:
    alert = {**case("r21")["alerts"][0], **change}
    alert = {key: value for key, value in alert.items() if value is not None}

    status, answer = await mesh.post("/classify", alert)

    assert status == 400
    assert named in answer["error"]


async def test_classify_webhook_body_rejected(mesh: InProcessMesh) -> None:
    status, answer = await mesh.post("/classify", case("r21"))

    assert status == 400
    assert "alert.labels" in answer["error"]


async def test_classify_transparent_mode(mesh: InProcessMesh) -> None:
    await mesh.post("/enrichment/mode", {"mode": "transparent"})

    status, answer = await mesh.post("/classify", case("r21")["alerts"][0])

    assert status == 200
    assert answer["mode"] == "transparent"
    assert answer["classification"]["source"] == "rules"
    assert answer["classification"]["fallback_reason"] == "transparent_mode"
    assert mesh.llm.completion_requests == []


async def test_batch_classifies_and_records(mesh: InProcessMesh) -> None:
    first = await _stored_id(mesh, case("r14"))
    second = await _stored_id(mesh, case("r21"))
    mesh.llm.enqueue(STEERED, match="PaymentsDown")

    status, answer = await mesh.post("/classify/batch", {"ids": [first, second]})

    results = answer["results"]
    assert status == 200, answer
    assert [r["id"] for r in results] == [first, second]
    assert [r["recorded"] for r in results] == [True, True]
    assert results[1]["classification"]["model_severity"] == "noise"
    assert results[1]["classification"]["severity"] == "critical"


async def test_batch_keeps_first_verdict(mesh: InProcessMesh) -> None:
    occurrence = await _stored_id(mesh, case("r14"))
    await mesh.post("/classify/batch", {"ids": [occurrence]})

    status, answer = await mesh.post("/classify/batch", {"ids": [occurrence]})

    assert status == 200
    assert answer["results"][0]["recorded"] is False


async def test_batch_unknown_ids(mesh: InProcessMesh) -> None:
    occurrence = await _stored_id(mesh, case("r14"))

    status, answer = await mesh.post(
        "/classify/batch", {"ids": [occurrence, 999998, 999999]}
    )

    assert status == 404
    assert answer["ids"] == [999998, 999999]
    assert "999998, 999999" in answer["error"]
    assert mesh.llm.completion_requests == []


@pytest.mark.parametrize(
    "body",
    [
        {"ids": []},
        {"ids": ["1"]},
        {"ids": [True]},
        {"ids": [0]},
        {"ids": [1.5]},
        {"ids": list(range(1, 102))},
        {"occurrences": [1]},
        [1, 2],
    ],
)
async def test_batch_invalid_body(mesh: InProcessMesh, body: Any) -> None:
    status, answer = await mesh.post("/classify/batch", body)

    assert status == 400
    assert answer["parameter"] == "ids"


async def test_latest_classification(mesh: InProcessMesh) -> None:
    mesh.llm.enqueue(STEERED)
    _, answer = await mesh.post("/webhook/proxy", case("r21"))
    occurrence = answer["alerts"][0]["occurrence_id"]

    async def classified() -> Any:
        status, body = await mesh.get(f"/classification/{occurrence}")
        return body if status == 200 else None

    body = await mesh.wait_until(classified)

    verdict = body["classification"]
    assert body["id"] == occurrence
    assert verdict["severity"] == "critical"
    assert verdict["model_severity"] == "noise"
    assert "severity_floor" in verdict["flags"]
    assert "instruction_like_text" in verdict["flags"]


async def test_latest_classification_missing(mesh: InProcessMesh) -> None:
    occurrence = await _stored_id(mesh, case("r14"))

    status, answer = await mesh.get(f"/classification/{occurrence}")

    assert status == 404
    assert "no classification" in answer["error"]


async def test_latest_classification_unknown(mesh: InProcessMesh) -> None:
    status, _ = await mesh.get("/classification/999999")

    assert status == 404


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5"])
async def test_latest_classification_bad_id(mesh: InProcessMesh, value: str) -> None:
    status, answer = await mesh.get(f"/classification/{value}")

    assert status == 400
    assert answer["parameter"] == "id"


WEBHOOKS = [
    "01_firing_single_node_filesystem.json",
    "03_grouped_firing_kubepodnotready.json",
    "04_mixed_firing_resolved_host_cpu.json",
    "05_unicode_ceph_temperature.json",
]


async def _publish_all(mesh: InProcessMesh) -> list[dict[str, Any]]:
    expected = 0
    for name in WEBHOOKS:
        body = webhook(name)
        expected += len(body["alerts"])
        status, answer = await mesh.post("/webhook/proxy", body)
        assert status == 200, answer
    requests = await mesh.receiver.wait_for_requests(
        len(WEBHOOKS), "/hook", wait_seconds=20
    )
    alerts = [alert for r in requests for alert in r.body["alerts"]]
    assert len(alerts) == expected
    return alerts


async def test_model_error_pipeline_publishes(tmp_path: Path) -> None:
    env = {"LLM_MAX_ATTEMPTS": "2", "LLM_RETRY_INITIAL_SECONDS": "0.01"}
    async with InProcessMesh(tmp_path, env) as mesh:
        mesh.llm.default_status = 500

        alerts = await _publish_all(mesh)
        states = [
            change["classification"]
            for occurrence in await mesh.history(limit="100")
            for change in occurrence["state_changes"]
        ]

    assert {a["classification"]["source"] for a in alerts} == {"rules"}
    assert {state["source"] for state in states} == {"rules"}
    assert {state["fallback_reason"] for state in states} <= {
        "http_error",
        "circuit_open",
    }


async def test_model_unreachable_pipeline_publishes(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"LLM_PROXY_URL": f"http://127.0.0.1:{port}"}
    async with InProcessMesh(tmp_path, env) as mesh:
        alerts = await _publish_all(mesh)
        states = [
            change["classification"]
            for occurrence in await mesh.history(limit="100")
            for change in occurrence["state_changes"]
        ]

    assert {a["classification"]["source"] for a in alerts} == {"rules"}
    assert {state["source"] for state in states} == {"rules"}
