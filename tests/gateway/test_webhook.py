"""The gateway's contract with Alertmanager, on the whole mesh in one process."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.alerts import compute_fingerprint
from tests.fakes.tcpproxy import TcpProxy
from tests.inprocess import InProcessMesh

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
WEBHOOKS = sorted(
    p for p in (FIXTURES / "webhooks").glob("*.json") if p.name != "index.json"
)


def case(name: str, file: str = "inbound.json") -> Any:
    return json.loads((FIXTURES / "cases" / name / file).read_text())


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    async with InProcessMesh(tmp_path) as running:
        yield running


@pytest.mark.parametrize("path", WEBHOOKS, ids=lambda p: p.stem)
async def test_webhook_corpus_body_accepted(mesh: InProcessMesh, path: Path):
    body = json.loads(path.read_bytes())

    status, answer = await mesh.post("/webhook/proxy", path.read_bytes())

    assert status == 200, answer
    assert answer["received"] == len(body["alerts"])
    fingerprints = [a["fingerprint"] for a in answer["alerts"]]
    expected = [
        a.get("fingerprint") or compute_fingerprint(a["labels"]) for a in body["alerts"]
    ]
    assert fingerprints == expected


async def test_webhook_store_only_publishes_nothing(mesh: InProcessMesh):
    status, answer = await mesh.post("/webhook", case("r14"))

    assert status == 200
    assert answer["new"] == 1
    await asyncio.sleep(1.0)
    assert mesh.receiver.requests_to("/hook") == []
    assert len(await mesh.history(fingerprint="00000000000000e1")) == 1


async def test_webhook_repeat_reported(mesh: InProcessMesh):
    await mesh.post("/webhook/proxy", case("r14"))

    status, answer = await mesh.post("/webhook/proxy", case("r14"))

    assert status == 200
    assert answer["alerts"][0]["outcome"] == "repeat"
    assert answer["new"] == 0


async def test_webhook_long_text_stored_in_full(mesh: InProcessMesh):
    body = case("r01")

    status, _ = await mesh.post("/webhook/proxy", body)

    assert status == 200
    stored = (await mesh.history(alertname="LongSummary"))[0]
    assert stored["annotations"] == body["alerts"][0]["annotations"]


async def test_webhook_700kb_description_accepted(mesh: InProcessMesh):
    body = case("r02")

    status, _ = await mesh.post("/webhook/proxy", body)

    assert status == 200
    stored = (await mesh.history(alertname="HugeDetails"))[0]
    description = body["alerts"][0]["annotations"]["description"]
    assert stored["annotations"]["description"] == description


async def test_webhook_severity_none_classified_noise(mesh: InProcessMesh):
    mesh.llm.enqueue(case("r03", "llm.json"))

    status, _ = await mesh.post("/webhook/proxy", case("r03"))

    assert status == 200

    async def classified() -> Any:
        occurrence = (await mesh.history(fingerprint="00000000000000a3"))[0]
        return occurrence["state_changes"][0]["classification"]

    verdict = await mesh.wait_until(classified)
    assert verdict["severity"] == "noise"


async def test_webhook_60_alerts_all_stored(mesh: InProcessMesh):
    status, answer = await mesh.post("/webhook/proxy", case("r07"))

    assert status == 200
    assert answer["received"] == 60
    assert len(await mesh.history(alertname="TargetDown", limit="100")) == 60


async def test_webhook_no_identity_labels_stable_fingerprint(mesh: InProcessMesh):
    first_status, first = await mesh.post("/webhook/proxy", case("r10"))
    second_status, second = await mesh.post("/webhook/proxy", case("r10"))

    assert first_status == 200
    assert second_status == 200
    fingerprint = first["alerts"][0]["fingerprint"]
    assert fingerprint == compute_fingerprint({"service": "checkout"})
    assert second["alerts"][0]["fingerprint"] == fingerprint
    assert second["alerts"][0]["outcome"] == "repeat"
    assert len(await mesh.history(fingerprint=fingerprint)) == 1
    requests = await mesh.receiver.wait_for_requests(1, "/hook")
    text = requests[0].text
    assert "None" not in text
    assert "null" not in json.dumps(requests[0].body["alerts"][0]["labels"])


async def test_webhook_resolve_duration_seven_minutes(mesh: InProcessMesh):
    await mesh.post("/webhook/proxy", case("r12"))

    status, _ = await mesh.post("/webhook/proxy", case("r12", "inbound_resolved.json"))

    assert status == 200
    occurrence = (await mesh.history(fingerprint="00000000000000c2"))[0]
    assert occurrence["status"] == "resolved"
    assert occurrence["duration_seconds"] == 420.0
    assert occurrence["ends_at"] == "2024-05-01T10:07:00Z"


async def test_webhook_firing_zero_end_stored_as_null(mesh: InProcessMesh):
    await mesh.post("/webhook/proxy", case("r12"))

    occurrence = (await mesh.history(fingerprint="00000000000000c2"))[0]

    assert occurrence["ends_at"] is None
    assert occurrence["status"] == "firing"


async def test_webhook_resolved_zero_end_warns(mesh: InProcessMesh):
    status, answer = await mesh.post(
        "/webhook/proxy", case("r12", "inbound_resolved_zero_end.json")
    )

    assert status == 200
    assert answer["alerts"][0]["warnings"]
    occurrence = (await mesh.history(fingerprint="00000000000000c3"))[0]
    assert occurrence["status"] == "resolved"
    assert occurrence["duration_seconds"] >= 0


async def test_webhook_ha_peer_duplicate_one_occurrence(mesh: InProcessMesh):
    first = await mesh.post("/webhook/proxy", case("r14"))
    second = await mesh.post("/webhook/proxy", case("r14", "inbound_second_peer.json"))

    assert first[0] == 200
    assert second[0] == 200
    assert second[1]["alerts"][0]["outcome"] == "repeat"
    assert len(await mesh.history(fingerprint="00000000000000e1")) == 1
    await mesh.receiver.wait_for_requests(1, "/hook")
    await asyncio.sleep(1.0)
    assert len(mesh.receiver.requests_to("/hook")) == 1
    assert len(mesh.llm.completion_requests) == 1


async def test_webhook_ha_peers_in_parallel_one_occurrence(mesh: InProcessMesh):
    answers = await asyncio.gather(
        mesh.post("/webhook/proxy", case("r14")),
        mesh.post("/webhook/proxy", case("r14", "inbound_second_peer.json")),
    )

    assert [status for status, _ in answers] == [200, 200]
    outcomes = sorted(body["alerts"][0]["outcome"] for _, body in answers)
    assert outcomes == ["new", "repeat"]
    assert len(await mesh.history(fingerprint="00000000000000e1")) == 1


async def test_webhooks_stored_together_answer_each_alone(tmp_path: Path) -> None:
    bodies = [json.loads(path.read_text()) for path in WEBHOOKS for _ in range(3)] + [
        case("r15", "inbound_invalid.json")
    ]

    async with InProcessMesh(tmp_path, {"STORE_CONCURRENCY": "1"}) as mesh:
        answers = await asyncio.gather(
            *(mesh.post("/webhook", body) for body in bodies)
        )
        registry = mesh.registries["history"]
        together = registry.get_sample_value(
            "alert_history_grpc_server_handled_total",
            {
                "grpc_service": "alerthistory.history.v1.HistoryService",
                "grpc_method": "StoreNotifications",
                "grpc_code": "OK",
            },
        )
        stored = await mesh.history(limit="1000")

    statuses = [status for status, _ in answers]
    assert statuses == [200] * (len(bodies) - 1) + [400]
    assert together is not None and together >= 1
    # Every body went three times at once: each state is new exactly once.
    new_states = [
        (alert["occurrence_id"], alert["status"])
        for _, answer in answers[:-1]
        for alert in answer["alerts"]
        if alert["outcome"] == "new"
    ]
    assert len(new_states) == len(set(new_states))
    occurrences = {
        alert["occurrence_id"]
        for _, answer in answers[:-1]
        for alert in answer["alerts"]
    }
    assert {occurrence for occurrence, _ in new_states} == occurrences
    assert len(stored) == len(occurrences)


async def test_webhook_invalid_alerts_rejected(mesh: InProcessMesh):
    status, answer = await mesh.post(
        "/webhook/proxy", case("r15", "inbound_invalid.json")
    )

    assert status == 400
    assert "alerts" in answer["error"]
    assert await mesh.history() == []


async def test_webhook_truncated_count_kept(mesh: InProcessMesh):
    status, answer = await mesh.post("/webhook/proxy", case("r16"))

    assert status == 200
    assert answer["received"] == 2
    occurrences = await mesh.history(alertname="TargetDown")
    assert len(occurrences) == 2
    assert all(o["truncated_alerts"] == 4998 for o in occurrences)
    assert all(o["status"] == "firing" for o in occurrences)
    requests = await mesh.receiver.wait_for_requests(1, "/hook")
    assert requests[0].body["truncated_alerts"] == 4998


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "JSON"),
        (b'{"alerts": [', "line 1 column 13"),
        (b"[]", "object"),
        (json.dumps({"version": "3", "alerts": []}).encode(), "version"),
        (json.dumps({"alerts": []}).encode(), "version is missing"),
        (json.dumps({"version": 4, "alerts": []}).encode(), "4 (not a string)"),
        (json.dumps({"version": "4"}).encode(), "alerts"),
        (json.dumps({"version": "4", "alerts": []}).encode(), "empty"),
        (
            json.dumps(
                {"version": "4", "alerts": [{"status": "firing", "labels": {"a": "b"}}]}
            ).encode(),
            "startsAt",
        ),
        (
            json.dumps(
                {
                    "version": "4",
                    "alerts": [
                        {
                            "status": "pending",
                            "labels": {"a": "b"},
                            "startsAt": "2024-05-01T10:00:00Z",
                        }
                    ],
                }
            ).encode(),
            "status",
        ),
        (
            json.dumps(
                {
                    "version": "4",
                    "alerts": [
                        {
                            "status": "firing",
                            "labels": {"a": 1},
                            "startsAt": "2024-05-01T10:00:00Z",
                        }
                    ],
                }
            ).encode(),
            "labels.a",
        ),
    ],
)
async def test_webhook_bad_body_400_names_problem(
    mesh: InProcessMesh, body: bytes, fragment: str
):
    status, answer = await mesh.post("/webhook/proxy", body)

    assert status == 400
    assert fragment in answer["error"]


async def test_webhook_wrong_method_json_405(mesh: InProcessMesh):
    assert mesh.http is not None
    async with mesh.http.get(mesh.url + "/webhook") as reply:
        status, answer = reply.status, await reply.json()
        allow = reply.headers.get("Allow", "")
        server = reply.headers.get("Server")

    assert status == 405
    assert "POST" in allow
    assert server == "alert-history"
    assert answer["error"] == f"method GET not allowed, use {allow}"


async def test_unknown_path_json_404(mesh: InProcessMesh):
    status, answer = await mesh.get("/no-such-route")

    assert status == 404
    assert answer == {"status": "error", "error": "not found: /no-such-route"}


async def test_webhook_times_read_as_utc(mesh: InProcessMesh):
    body = case("r14")
    body["alerts"][0]["startsAt"] = "2024-05-01T12:00:00.123456789+02:00"

    status, _ = await mesh.post("/webhook/proxy", body)

    assert status == 200
    occurrence = (await mesh.history(fingerprint="00000000000000e1"))[0]
    assert occurrence["starts_at"] == "2024-05-01T10:00:00.123456Z"


async def test_webhook_slow_model_answers_fast(tmp_path: Path):
    env = {"PIPELINE_BUDGET_SECONDS": "0.5"}
    async with InProcessMesh(tmp_path, env) as mesh:
        mesh.llm.enqueue(delay=30)
        loop = asyncio.get_running_loop()
        started = loop.time()

        status, _ = await mesh.post("/webhook/proxy", case("r15"))

        assert status == 200
        assert loop.time() - started < 2.0
        requests = await mesh.receiver.wait_for_requests(1, "/hook", wait_seconds=10)
        verdict = requests[0].body["alerts"][0]["classification"]
        assert verdict["severity"] == "critical"


async def test_webhook_too_large_413(tmp_path: Path):
    async with InProcessMesh(tmp_path, {"WEBHOOK_MAX_BODY_BYTES": "4096"}) as mesh:
        status, answer = await mesh.post("/webhook/proxy", case("r01"))

        assert status == 413
        assert "WEBHOOK_MAX_BODY_BYTES" in answer["error"]
        assert await mesh.history() == []
        registry = mesh.registries["gateway"]
        rejected = registry.get_sample_value(
            "alert_history_webhooks_rejected_total", {"reason": "too_large"}
        )
        assert rejected == 1.0


async def test_webhook_default_limit_accepts_16mib(tmp_path: Path):
    async with InProcessMesh(tmp_path, with_model=False) as mesh:
        body = case("r14")
        body["alerts"][0]["annotations"]["description"] = "x" * (3 * 1024 * 1024)
        body["padding"] = "y" * (12 * 1024 * 1024)

        status, _ = await mesh.post("/webhook", json.dumps(body).encode())

        assert status == 200


async def test_webhook_bearer_token_required(tmp_path: Path):
    async with InProcessMesh(tmp_path, {"WEBHOOK_BEARER_TOKEN": "s3cret"}) as mesh:
        missing, _ = await mesh.post("/webhook", case("r14"))
        wrong, _ = await mesh.post(
            "/webhook", case("r14"), headers={"Authorization": "Bearer nope"}
        )
        right, _ = await mesh.post(
            "/webhook", case("r14"), headers={"Authorization": "Bearer s3cret"}
        )

    assert missing == 401
    assert wrong == 401
    assert right == 200


async def test_webhook_basic_auth_required(tmp_path: Path):
    env = {
        "WEBHOOK_BASIC_AUTH_USERNAME": "alertmanager",
        "WEBHOOK_BASIC_AUTH_PASSWORD": "pa55",
    }
    good = base64.b64encode(b"alertmanager:pa55").decode()
    bad = base64.b64encode(b"alertmanager:nope").decode()
    async with InProcessMesh(tmp_path, env) as mesh:
        denied, _ = await mesh.post(
            "/webhook", case("r14"), headers={"Authorization": f"Basic {bad}"}
        )
        allowed, _ = await mesh.post(
            "/webhook", case("r14"), headers={"Authorization": f"Basic {good}"}
        )

    assert denied == 401
    assert allowed == 200


async def test_webhook_history_down_503(tmp_path: Path):
    async with InProcessMesh(tmp_path) as mesh:
        await mesh.services["history"].server.stop(0)

        status, answer = await mesh.post("/webhook/proxy", case("r14"))

    assert status == 503
    assert "retry" in answer["error"]


async def test_history_limit_out_of_range_400(mesh: InProcessMesh):
    status, answer = await mesh.get("/history", params={"limit": "0"})

    assert status == 400
    assert answer["parameter"] == "limit"


async def test_webhook_database_down_then_back(tmp_path: Path, pg_url: str):
    base, _, name = pg_url.rpartition("/")
    host_port = base.rpartition("@")[2]
    host, _, port = host_port.partition(":")
    async with TcpProxy(host, int(port)) as proxy:
        url = f"{base.rpartition('@')[0]}@127.0.0.1:{proxy.port}/{name}"
        async with InProcessMesh(tmp_path, {"DATABASE_URL": url}) as mesh:
            proxy.cut()

            status, _ = await mesh.post("/webhook/proxy", case("r15"))

            assert status == 503
            await asyncio.sleep(0.5)
            assert mesh.receiver.requests_to("/hook") == []

            proxy.restore()

            async def resend_until_stored() -> bool:
                status, _ = await mesh.post("/webhook/proxy", case("r15"))
                return status == 200

            await mesh.wait_until(resend_until_stored, wait_seconds=20)
            await mesh.receiver.wait_for_requests(1, "/hook", wait_seconds=15)
            await mesh.post("/webhook/proxy", case("r15"))
            await asyncio.sleep(1.0)
            assert len(await mesh.history(fingerprint="00000000000000f1")) == 1
            assert len(mesh.receiver.requests_to("/hook")) == 1


async def test_webhook_classifier_down_still_published(tmp_path: Path):
    async with InProcessMesh(tmp_path) as mesh:
        await mesh.services["classifier"].server.stop(0)

        status, _ = await mesh.post("/webhook/proxy", case("r14"))

        assert status == 200
        requests = await mesh.receiver.wait_for_requests(1, "/hook", wait_seconds=15)
        verdict = requests[0].body["alerts"][0]["classification"]
        assert verdict["severity"] == "critical"
        assert verdict["source"] == "rules"
        occurrence = (await mesh.history(fingerprint="00000000000000e1"))[0]
        stored = occurrence["state_changes"][0]["classification"]
        assert stored["fallback_reason"] == "classifier_unavailable"
