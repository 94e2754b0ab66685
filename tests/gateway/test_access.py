"""API tokens and the audit log on the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.config import ConfigError, load_settings
from tests.inprocess import InProcessMesh

TOKENS = {"API_TOKENS": "alice:alice-token-1234,ci:ci-token-5678"}


async def test_change_without_token_401(tmp_path: Path):
    async with InProcessMesh(tmp_path, TOKENS) as mesh:
        status, body = await mesh.post("/enrichment/mode", {"mode": "transparent"})
        mode_status, mode = await mesh.get("/enrichment/mode")

    assert status == 401
    assert "token" in body["error"]
    assert mode_status == 200
    assert mode["mode"] == "enriched"


async def test_change_with_token_audited(tmp_path: Path):
    headers = {"Authorization": "Bearer alice-token-1234"}
    async with InProcessMesh(tmp_path, TOKENS) as mesh:
        status, _ = await mesh.post(
            "/enrichment/mode", {"mode": "transparent"}, headers=headers
        )
        audit_status, audit = await mesh.get("/audit")

    assert status == 200
    assert audit_status == 200
    event = audit["events"][0]
    assert event["actor"] == "alice"
    assert event["action"] == "POST /enrichment/mode"
    assert event["status_code"] == 200
    assert "transparent" in event["detail"]
    assert event["occurred_at"]


async def test_unknown_token_rejected(tmp_path: Path):
    headers = {"Authorization": "Bearer nobody-token-000"}
    async with InProcessMesh(tmp_path, TOKENS) as mesh:
        status, _ = await mesh.post(
            "/enrichment/mode", {"mode": "transparent"}, headers=headers
        )

    assert status == 401


async def test_reads_open_unless_protected(tmp_path: Path):
    async with InProcessMesh(tmp_path, TOKENS) as mesh:
        open_status, _ = await mesh.get("/history")
    protected = {**TOKENS, "API_READ_PROTECTED": "true"}
    (tmp_path / "protected").mkdir()
    async with InProcessMesh(tmp_path / "protected", protected) as mesh:
        denied, _ = await mesh.get("/history")
        allowed, _ = await mesh.get(
            "/history", headers={"Authorization": "Bearer ci-token-5678"}
        )
        health, _ = await mesh.get("/healthz")

    assert open_status == 200
    assert denied == 401
    assert allowed == 200
    assert health == 200


async def test_webhook_not_subject_to_api_tokens(tmp_path: Path):
    async with InProcessMesh(tmp_path, TOKENS) as mesh:
        status, _ = await mesh.post(
            "/webhook",
            {
                "version": "4",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {"alertname": "Open"},
                        "startsAt": "2024-05-01T10:00:00Z",
                    }
                ],
            },
        )

    assert status == 200


async def test_audit_redacts_secret_fields(tmp_path: Path):
    headers = {"Authorization": "Bearer alice-token-1234"}
    async with InProcessMesh(tmp_path, TOKENS) as mesh:
        await mesh.post(
            "/enrichment/mode",
            {"mode": "enriched", "api_key": "should-not-appear"},
            headers=headers,
        )
        _, audit = await mesh.get("/audit")

    assert "should-not-appear" not in audit["events"][0]["detail"]


@pytest.mark.parametrize("value", ["alice", "alice:short", "a:12345678,a:87654321"])
def test_api_tokens_malformed_rejected(value: str):
    with pytest.raises(ConfigError) as caught:
        load_settings({"API_TOKENS": value})

    assert "API_TOKENS" in str(caught.value)
    assert "12345678" not in str(caught.value)
