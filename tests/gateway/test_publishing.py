"""Publishing through the whole mesh: the case fixtures against local PagerDuty
and Slack receivers, and the gateway's /publishing API."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from services.publisher.discovery import target_from_secret
from tests.fakes.receiver import RecordedRequest, Reply
from tests.inprocess import InProcessMesh

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ROUTING_KEY = "R0UTINGKEY0123456789abcdef012345"
PAGERDUTY_SEVERITIES = {"critical", "error", "warning", "info"}


def case(name: str, file: str = "inbound.json") -> Any:
    return json.loads((FIXTURES / "cases" / name / file).read_text())


def webhook(name: str) -> Any:
    return json.loads((FIXTURES / "webhooks" / name).read_text())


def pagerduty_accepted(request: RecordedRequest) -> Reply:
    body = {
        "status": "success",
        "message": "Event processed",
        "dedup_key": request.body["dedup_key"],
    }
    return Reply(202, json.dumps(body), {"Content-Type": "application/json"})


PAGERDUTY = {
    "name": "pd",
    "format": "pagerduty",
    "path": "/pd",
    "routing_key": ROUTING_KEY,
}
SLACK = {"name": "slack", "format": "slack", "path": "/slack"}
HOOK = {"name": "hook", "format": "webhook", "path": "/hook"}


def mesh_with(
    tmp_path: Path, targets: list[dict[str, Any]], env: dict[str, str] | None = None
) -> InProcessMesh:
    mesh = InProcessMesh(tmp_path, env, targets=targets)
    mesh.receiver.respond("/pd", pagerduty_accepted)
    mesh.receiver.respond("/slack", lambda _: Reply(200, "ok"))
    return mesh


def slack_texts(request: RecordedRequest) -> str:
    """Every text of a Slack message's blocks, joined."""
    return json.dumps([block for block in request.body["blocks"]])


async def settle(mesh: InProcessMesh, path: str, count: int) -> list[RecordedRequest]:
    """Wait for `count` requests to `path`, then a little for any extra one."""
    requests = await mesh.receiver.wait_for_requests(count, path, wait_seconds=15)
    await asyncio.sleep(0.5)
    return requests


async def test_r01_pagerduty_summary_cut(tmp_path: Path):
    async with mesh_with(tmp_path, [PAGERDUTY]) as mesh:
        status, _ = await mesh.post("/webhook/proxy", case("r01"))
        (request,) = await settle(mesh, "/pd", 1)
        stored = (await mesh.history(alertname="LongSummary"))[0]

    summary = request.body["payload"]["summary"]
    details = request.body["payload"]["custom_details"]
    assert status == 200
    assert stored["annotations"] == case("r01")["alerts"][0]["annotations"]
    assert len(summary) <= 1024
    assert summary.endswith("…")
    assert stored["annotations"]["summary"] in details["summary"]


async def test_r02_pagerduty_event_within_limit(tmp_path: Path):
    async with mesh_with(tmp_path, [PAGERDUTY]) as mesh:
        status, _ = await mesh.post("/webhook/proxy", case("r02"))
        (request,) = await settle(mesh, "/pd", 1)
        stored = (await mesh.history(alertname="HugeDetails"))[0]

    description = case("r02")["alerts"][0]["annotations"]["description"]
    assert status == 200
    assert stored["annotations"]["description"] == description
    assert len(request.text.encode("utf-8")) <= 512_000
    assert request.body["payload"]["summary"] == "HugeDetails: huge details"
    assert request.body["payload"]["custom_details"]["cut_fields"] == ["description"]


async def test_r03_noise_kept_out_of_pagerduty(tmp_path: Path):
    async with mesh_with(tmp_path, [PAGERDUTY, HOOK]) as mesh:
        mesh.llm.enqueue(case("r03", "llm.json"))
        status, _ = await mesh.post("/webhook/proxy", case("r03"))
        (hook,) = await settle(mesh, "/hook", 1)
        stored = (await mesh.history(fingerprint="00000000000000a3"))[0]

    assert status == 200
    assert stored["state_changes"][0]["classification"]["severity"] == "noise"
    assert hook.body["alerts"][0]["classification"]["severity"] == "noise"
    assert mesh.receiver.requests_to("/pd") == []


async def test_r03_pagerduty_severities_valid(tmp_path: Path):
    noise_as_info = {**PAGERDUTY, "noise_policy": "info"}
    async with mesh_with(tmp_path, [noise_as_info]) as mesh:
        # Both webhooks may share one classification batch, so the noise
        # verdict goes only to the request that carries the r03 alert.
        mesh.llm.enqueue(case("r03", "llm.json"), match="InfoInhibitor")
        await mesh.post("/webhook/proxy", case("r03"))
        await mesh.post("/webhook/proxy", case("r01"))
        requests = await settle(mesh, "/pd", 2)

    severities = {r.body["payload"]["severity"] for r in requests}
    assert severities <= PAGERDUTY_SEVERITIES
    assert "info" in severities


async def test_r05_slack_sections_within_limit(tmp_path: Path):
    async with mesh_with(tmp_path, [SLACK]) as mesh:
        status, _ = await mesh.post("/webhook/proxy", case("r05"))
        (request,) = await settle(mesh, "/slack", 1)

    sections = [b for b in request.body["blocks"] if b["type"] == "section"]
    assert status == 200
    assert len(request.body["blocks"]) <= 50
    assert all(len(s["text"]["text"]) <= 3000 for s in sections)
    assert sections[0]["text"]["text"].endswith("…")


async def test_r07_slack_group_never_dropped(tmp_path: Path):
    async with mesh_with(tmp_path, [SLACK]) as mesh:
        status, answer = await mesh.post("/webhook/proxy", case("r07"))
        requests = await settle(mesh, "/slack", 1)
        stored = await mesh.history(alertname="TargetDown", limit="100")

    (message,) = requests
    blocks = message.body["blocks"]
    sections = [b for b in blocks if b["type"] == "section"]
    footer = " ".join(e["text"] for e in blocks[-1]["elements"])
    assert status == 200
    assert answer["received"] == 60
    assert len(stored) == 60
    assert len(blocks) <= 50
    assert all(len(s.get("fields", [])) <= 10 for s in sections)
    assert f"and {60 - len(sections)} more alerts" in footer


async def test_r08_slack_429_then_ok(tmp_path: Path):
    env = {"DELIVERY_INITIAL_BACKOFF_SECONDS": "0.05"}
    async with mesh_with(tmp_path, [SLACK], env) as mesh:
        # One real Retry-After of 3 s; the other four ask for 0 s so the test
        # stays short, and the backoff decides their waits.
        mesh.receiver.script(
            "/slack",
            [Reply(429, "rate_limited", {"Retry-After": "3"})]
            + [Reply(429, "rate_limited", {"Retry-After": "0"})] * 4,
        )
        started = time.monotonic()
        status, _ = await mesh.post("/webhook/proxy", case("r08"))
        answered = time.monotonic() - started
        requests = await settle(mesh, "/slack", 6)
        _, listing = await mesh.get(
            "/publishing/deliveries", params={"target": "slack"}
        )
        (delivery,) = listing["deliveries"]
        _, log = await mesh.get(f"/publishing/deliveries/{delivery['id']}")

    codes = [attempt["status_code"] for attempt in log["attempt_log"]]
    first, second = (
        datetime.fromisoformat(attempt["attempted_at"])
        for attempt in log["attempt_log"][:2]
    )
    success = requests[-1]
    assert status == 200
    assert answered < 2.0
    assert len(requests) == 6
    assert codes == [429, 429, 429, 429, 429, 200]
    assert (second - first).total_seconds() >= 3.0
    assert delivery["state"] == "succeeded"
    for index in range(20):
        assert f"*Burst{index}*" in slack_texts(success), index
    assert all(r.text == success.text for r in requests)


async def test_r14_peers_one_post_sequential(tmp_path: Path):
    async with mesh_with(tmp_path, [PAGERDUTY, SLACK]) as mesh:
        first, _ = await mesh.post("/webhook/proxy", case("r14"))
        second, _ = await mesh.post(
            "/webhook/proxy", case("r14", "inbound_second_peer.json")
        )
        await settle(mesh, "/slack", 1)
        await settle(mesh, "/pd", 1)
        stored = await mesh.history(fingerprint="00000000000000e1")

    assert (first, second) == (200, 200)
    assert len(stored) == 1
    assert len(mesh.llm.requests) == 1
    assert len(mesh.receiver.requests_to("/slack")) == 1
    assert len(mesh.receiver.requests_to("/pd")) == 1


async def test_r14_peers_one_post_parallel(tmp_path: Path):
    async with mesh_with(tmp_path, [PAGERDUTY, SLACK]) as mesh:
        answers = await asyncio.gather(
            mesh.post("/webhook/proxy", case("r14")),
            mesh.post("/webhook/proxy", case("r14", "inbound_second_peer.json")),
        )
        await settle(mesh, "/slack", 1)
        (trigger,) = await settle(mesh, "/pd", 1)
        stored = await mesh.history(fingerprint="00000000000000e1")

    assert [status for status, _ in answers] == [200, 200]
    assert len(stored) == 1
    assert len(mesh.llm.requests) == 1
    assert len(mesh.receiver.requests_to("/slack")) == 1
    assert trigger.body["event_action"] == "trigger"


async def test_r16_truncated_count_shown(tmp_path: Path):
    async with mesh_with(tmp_path, [SLACK, PAGERDUTY]) as mesh:
        status, answer = await mesh.post("/webhook/proxy", case("r16"))
        (message,) = await settle(mesh, "/slack", 1)
        triggers = await settle(mesh, "/pd", 2)
        stored = await mesh.history(alertname="TargetDown")

    assert status == 200
    assert answer["received"] == 2
    assert len(stored) == 2
    assert "4998 more not sent by Alertmanager" in slack_texts(message)
    assert [t.body["event_action"] for t in triggers] == ["trigger", "trigger"]
    assert len(mesh.receiver.requests_to("/pd")) == 2


async def test_resolve_reaches_target_filtered_since(tmp_path: Path):
    async with mesh_with(
        tmp_path, [PAGERDUTY, {**SLACK, "filter": {"namespaces": ["x"]}}]
    ) as mesh:
        await mesh.post(
            "/webhook/proxy", webhook("01_firing_single_node_filesystem.json")
        )
        await settle(mesh, "/pd", 1)
        excluded = {"namespaces": ["nowhere"]}
        targets_file = mesh.folder / "targets.yaml"
        targets = json.loads(targets_file.read_text())
        for target in targets:
            target["filter"] = excluded
        targets_file.write_text(json.dumps(targets))
        refresh_status, counts = await mesh.post("/publishing/targets/refresh", {})
        await mesh.post(
            "/webhook/proxy", webhook("02_resolved_single_node_filesystem.json")
        )
        trigger, resolve = await settle(mesh, "/pd", 2)

    assert refresh_status == 200
    assert counts["targets"] == 2
    assert resolve.body["event_action"] == "resolve"
    assert resolve.body["dedup_key"] == trigger.body["dedup_key"]
    assert mesh.receiver.requests_to("/slack") == []


async def test_publishing_api_hides_credentials(tmp_path: Path):
    secret_path = "/pd/PATHSECRET"
    targets: list[dict[str, Any]] = [
        {**PAGERDUTY, "path": f"{secret_path}?token=QUERYSECRET"},
        {**HOOK, "headers": {"X-Api-Key": "HEADERSECRET"}},
    ]
    async with mesh_with(tmp_path, targets) as mesh:
        mesh.receiver.respond(secret_path, pagerduty_accepted)
        await mesh.post("/webhook/proxy", case("r14"))
        await settle(mesh, secret_path, 1)
        await settle(mesh, "/hook", 1)
        answers = [
            await mesh.get(path)
            for path in (
                "/publishing/targets",
                "/publishing/mode",
                "/publishing/stats",
                "/publishing/deliveries",
                "/publishing/deliveries/1",
                "/publishing/deliveries/2",
                "/publishing/dead-letters",
            )
        ]

    text = json.dumps(answers)
    assert all(status == 200 for status, _ in answers), answers
    for secret in (ROUTING_KEY, "PATHSECRET", "QUERYSECRET", "HEADERSECRET"):
        assert secret not in text, secret
    endpoints = [t["endpoint"] for t in answers[0][1]["targets"]]
    assert all(endpoint.count("/") == 2 for endpoint in endpoints)


async def test_publishing_mode(tmp_path: Path):
    async with mesh_with(tmp_path, [PAGERDUTY, {**SLACK, "enabled": False}]) as mesh:
        status, body = await mesh.get("/publishing/mode")

    assert status == 200
    assert body == {"mode": "publishing", "targets": 2, "enabled": 1}


async def test_publishing_mode_metrics_only(tmp_path: Path):
    async with mesh_with(tmp_path, []) as mesh:
        _, body = await mesh.get("/publishing/mode")

    assert body["mode"] == "metrics-only"


async def test_publishing_requests_validated(tmp_path: Path):
    async with mesh_with(tmp_path, [HOOK]) as mesh:
        since = await mesh.get("/publishing/stats", params={"since": "yesterday"})
        until = await mesh.get("/publishing/stats", params={"until": "2024-05-01"})
        order = await mesh.get(
            "/publishing/stats",
            params={"since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"},
        )
        state = await mesh.get("/publishing/deliveries", params={"state": "lost"})
        delivery_id = await mesh.get("/publishing/deliveries/abc")
        unknown = await mesh.get("/publishing/deliveries/999")
        template = await mesh.get(
            "/publishing/secrets/template", params={"format": "teams"}
        )
        test = await mesh.post("/publishing/test/nope", {})
        retry = await mesh.post("/publishing/dead-letters/999/retry", {})
        assert mesh.http is not None
        async with mesh.http.delete(mesh.url + "/publishing/dead-letters/999") as reply:
            discard = reply.status

    assert since[0] == 400
    assert since[1]["parameter"] == "since"
    assert until[0] == 400
    assert until[1]["parameter"] == "until"
    assert order[0] == 400
    assert state[1]["parameter"] == "state"
    assert delivery_id[1]["parameter"] == "id"
    assert unknown[0] == 404
    assert template[0] == 400
    assert template[1]["parameter"] == "format"
    assert test[0] == 404
    assert retry[0] == 404
    assert discard == 404


async def test_publishing_stats_window(tmp_path: Path):
    async with mesh_with(tmp_path, [SLACK]) as mesh:
        await mesh.post("/webhook/proxy", case("r14"))
        await settle(mesh, "/slack", 1)
        status, body = await mesh.get(
            "/publishing/stats",
            params={"since": "2000-01-01T00:00:00Z", "target": "slack"},
        )

    (stats,) = body["targets"]
    assert status == 200
    assert stats["succeeded"] == 1
    assert stats["failed"] == 0
    assert stats["latency_seconds"]["p50"] > 0
    assert body["since"] == "2000-01-01T00:00:00Z"


async def test_publishing_test_alert(tmp_path: Path):
    async with mesh_with(tmp_path, [HOOK]) as mesh:
        status, body = await mesh.post("/publishing/test/hook", {})
        requests = await settle(mesh, "/hook", 2)

    assert status == 200
    assert body["attempted"] is True
    assert body["trigger"]["state"] == "succeeded"
    assert [r.body["status"] for r in requests] == ["firing", "resolved"]


async def test_dead_letters_retry_and_discard(tmp_path: Path):
    async with mesh_with(tmp_path, [SLACK]) as mesh:
        mesh.receiver.script(
            "/slack", [Reply(400, "invalid_payload"), Reply(404, "no_service")]
        )
        await mesh.post("/webhook/proxy", case("r14"))
        await mesh.post("/webhook/proxy", case("r16"))
        await settle(mesh, "/slack", 2)
        _, listed = await mesh.get("/publishing/dead-letters", params={"limit": "10"})
        first, second = sorted(d["id"] for d in listed["dead_letters"])
        retried = await mesh.post(f"/publishing/dead-letters/{first}/retry", {})
        await settle(mesh, "/slack", 3)
        assert mesh.http is not None
        async with mesh.http.delete(
            f"{mesh.url}/publishing/dead-letters/{second}"
        ) as reply:
            discarded = (reply.status, await reply.json())
        again = await mesh.post(f"/publishing/dead-letters/{second}/retry", {})
        _, after = await mesh.get("/publishing/dead-letters")
        _, delivered = await mesh.get(f"/publishing/deliveries/{first}")

    assert listed["dead_letters"][0]["last_response_body"] in (
        "no_service",
        "invalid_payload",
    )
    assert retried[0] == 200
    assert retried[1]["state"] == "pending"
    assert delivered["state"] == "succeeded"
    assert [a["status_code"] for a in delivered["attempt_log"]] == [400, 200]
    assert discarded[0] == 200
    assert discarded[1]["state"] == "discarded"
    assert again[0] == 409
    assert after["dead_letters"] == []


async def test_refresh_invalid_file_409(tmp_path: Path):
    async with mesh_with(tmp_path, [HOOK]) as mesh:
        (mesh.folder / "targets.yaml").write_text("- name: [unclosed")
        status, body = await mesh.post("/publishing/targets/refresh", {})
        _, targets = await mesh.get("/publishing/targets")

    assert status == 409
    assert "unchanged" in body["error"]
    assert [t["name"] for t in targets["targets"]] == ["hook"]


async def test_secret_template_defines_target(tmp_path: Path):
    async with mesh_with(tmp_path, []) as mesh:
        answers = {
            name: await mesh.get(
                "/publishing/secrets/template", params={"format": name}
            )
            for name in ("pagerduty", "slack", "rootly", "webhook", "alertmanager")
        }

    for name, (status, text) in answers.items():
        manifest = yaml.safe_load(text)
        assert status == 200, name
        assert manifest["kind"] == "Secret", name
        assert manifest["metadata"]["labels"] == {"publishing-target": "true"}, name
        secret = {
            "metadata": {**manifest["metadata"], "namespace": "team-a"},
            "data": {
                key: base64.b64encode(value.encode()).decode()
                for key, value in manifest["stringData"].items()
            },
        }
        assert target_from_secret(secret).format == name
