"""The recommendations API of the gateway, on the whole mesh in one process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.history.service import HistoryService
from tests.inprocess import InProcessMesh
from tests.recommender.conftest import EXPECTED_PROBLEMS, known_history


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    async with InProcessMesh(tmp_path, with_model=False) as running:
        service = running.services["history"].service
        assert isinstance(service, HistoryService)
        await known_history(service.store, datetime.now(UTC))
        yield running


async def patch(mesh: InProcessMesh, path: str, body: Any) -> tuple[int, Any]:
    assert mesh.http is not None
    async with mesh.http.patch(mesh.url + path, json=body) as reply:
        return reply.status, await reply.json()


async def listed(mesh: InProcessMesh, **query: str) -> list[dict[str, Any]]:
    status, body = await mesh.get("/recommendations", params=query)
    assert status == 200, body
    return list(body["recommendations"])


async def test_generate_returns_counts(mesh: InProcessMesh) -> None:
    status, body = await mesh.post("/recommendations/generate", {})

    assert status == 200, body
    assert body["created"] == len(EXPECTED_PROBLEMS)
    assert body["rule_config_source"] == "inferred"


async def test_list_shows_recommendation(mesh: InProcessMesh) -> None:
    await mesh.post("/recommendations/generate", {})

    items = await listed(mesh, alert_name="ShortBlip")

    item = items[0]
    assert len(items) == 1
    assert item["problems"] == ["short_lived"]
    assert item["status"] == "pending"
    assert item["recommended"]["for_duration"] == "5m"
    assert item["current"]["for_duration"] is None
    assert item["config_source"] == "inferred"
    assert item["origin"] == "rules"
    assert "for: 5m" in item["snippet"]
    assert item["statistics"]["resolved"] == 4


async def test_list_filters(mesh: InProcessMesh) -> None:
    await mesh.post("/recommendations/generate", {})

    by_namespace = await listed(mesh, namespace="dev")
    pending = await listed(mesh, status="pending")
    applied = await listed(mesh, status="applied")

    assert [i["alert_name"] for i in by_namespace] == ["NoisyProbe"]
    assert len(pending) == len(EXPECTED_PROBLEMS)
    assert applied == []


async def test_patch_status_applied(mesh: InProcessMesh) -> None:
    await mesh.post("/recommendations/generate", {})
    target = (await listed(mesh, alert_name="StuckJob"))[0]

    status, body = await patch(
        mesh, f"/recommendations/{target['id']}/status", {"status": "applied"}
    )
    applied = await listed(mesh, status="applied")

    assert status == 200, body
    assert body["status"] == "applied"
    assert [i["id"] for i in applied] == [target["id"]]


async def test_patch_unknown_id_not_found(mesh: InProcessMesh) -> None:
    status, _ = await patch(
        mesh, "/recommendations/999999/status", {"status": "applied"}
    )

    assert status == 404


BAD_PATCHES = [
    ("/recommendations/1/status", {"status": "done"}, "status"),
    ("/recommendations/1/status", {}, "status"),
    ("/recommendations/1/status", ["applied"], "body"),
    ("/recommendations/abc/status", {"status": "applied"}, "id"),
]


@pytest.mark.parametrize(
    ("path", "body", "parameter"),
    BAD_PATCHES,
    ids=[f"{parameter}-{index}" for index, (_, _, parameter) in enumerate(BAD_PATCHES)],
)
async def test_patch_bad_input_named(
    mesh: InProcessMesh, path: str, body: Any, parameter: str
) -> None:
    status, answer = await patch(mesh, path, body)

    assert status == 400, answer
    assert answer["parameter"] == parameter


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"status": "done"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"cursor": "x"}, "cursor"),
    ],
)
async def test_list_bad_parameter_named(
    mesh: InProcessMesh, query: dict[str, str], parameter: str
) -> None:
    status, body = await mesh.get("/recommendations", params=query)

    assert status == 400, body
    assert body["parameter"] == parameter


async def test_generate_bad_window_named(mesh: InProcessMesh) -> None:
    status, body = await mesh.post("/recommendations/generate", {"window_hours": 0})

    assert status == 400, body
    assert body["parameter"] == "window_hours"


async def test_generate_concurrent_conflict(tmp_path: Path) -> None:
    async with InProcessMesh(tmp_path) as mesh:
        service = mesh.services["history"].service
        assert isinstance(service, HistoryService)
        await known_history(service.store, datetime.now(UTC))
        mesh.llm.default_delay = 0.3

        results = await asyncio.gather(
            mesh.post("/recommendations/generate", {}),
            mesh.post("/recommendations/generate", {}),
        )
        items = await listed(mesh)

    assert sorted(status for status, _ in results) == [200, 409]
    assert len(items) == len(EXPECTED_PROBLEMS)
