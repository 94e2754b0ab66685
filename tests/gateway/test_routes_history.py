"""The history API of the gateway: filters, pages, timelines, reports, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.alerts import format_time
from services.history.service import HistoryService
from services.history.store import HistoryStore
from tests.history.builders import at, cycle, filter_dataset, report_dataset
from tests.inprocess import InProcessMesh


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    async with InProcessMesh(tmp_path, with_model=False) as running:
        yield running


def history_store(mesh: InProcessMesh) -> HistoryStore:
    service = mesh.services["history"].service
    assert isinstance(service, HistoryService)
    return service.store


@pytest.fixture
async def filtered(mesh: InProcessMesh) -> InProcessMesh:
    await filter_dataset(history_store(mesh))
    return mesh


async def fingerprints(mesh: InProcessMesh, path: str, **query: str) -> list[str]:
    status, body = await mesh.get(path, params=query)
    assert status == 200, body
    return [item["fingerprint"] for item in body["occurrences"]]


HISTORY_CASES = [
    ("none", {}, ["f4", "f3", "f2", "f1", "f5"]),
    ("alertname", {"alertname": "DiskFull"}, ["f2", "f1"]),
    ("status", {"status": "firing"}, ["f3", "f1"]),
    ("severity label", {"severity": "critical"}, ["f1"]),
    ("namespace", {"namespace": "dev"}, ["f4", "f2"]),
    ("min_confidence", {"min_confidence": "0.9"}, ["f2", "f1", "f5"]),
    ("since", {"since": format_time(at(10)) or ""}, ["f4", "f3", "f2"]),
    ("until", {"until": format_time(at(10)) or ""}, ["f1", "f5"]),
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [(q, e) for _, q, e in HISTORY_CASES],
    ids=[n for n, _, _ in HISTORY_CASES],
)
async def test_history_filter(
    filtered: InProcessMesh, query: dict[str, str], expected: list[str]
) -> None:
    assert await fingerprints(filtered, "/history", **query) == expected


ENRICHED_CASES = [
    ("classified warning", {"severity": "warning"}, ["f2"]),
    ("classified noise", {"severity": "noise"}, ["f5"]),
    ("classified and confident", {"severity": "info", "min_confidence": "0.5"}, ["f4"]),
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [(q, e) for _, q, e in ENRICHED_CASES],
    ids=[n for n, _, _ in ENRICHED_CASES],
)
async def test_history_enriched_filter(
    filtered: InProcessMesh, query: dict[str, str], expected: list[str]
) -> None:
    assert await fingerprints(filtered, "/history/enriched", **query) == expected


async def test_history_enriched_carries_latest(filtered: InProcessMesh) -> None:
    status, body = await filtered.get(
        "/history/enriched", params={"alertname": "DiskFull"}
    )

    f2 = body["occurrences"][0]
    assert status == 200
    assert f2["final_severity"] == "warning"
    assert f2["classification"]["confidence"] == 0.95


async def test_history_plain_has_no_latest(filtered: InProcessMesh) -> None:
    _, body = await filtered.get("/history")

    assert "classification" not in body["occurrences"][0]


async def test_history_pages_hold_while_inserting(mesh: InProcessMesh) -> None:
    store = history_store(mesh)
    for index in range(7):
        await cycle(store, f"p{index}", at(index))

    status, first = await mesh.get("/history", params={"limit": "3"})
    await cycle(store, "newer", at(60))
    _, second = await mesh.get(
        "/history", params={"limit": "3", "cursor": first["next_cursor"]}
    )
    _, third = await mesh.get(
        "/history", params={"limit": "3", "cursor": second["next_cursor"]}
    )

    pages = [first, second, third]
    seen = [o["fingerprint"] for page in pages for o in page["occurrences"]]
    assert status == 200
    assert seen == [f"p{index}" for index in reversed(range(7))]
    assert third["next_cursor"] is None


BAD_QUERIES = [
    ("/history", {"limit": "0"}, "limit"),
    ("/history", {"limit": "many"}, "limit"),
    ("/history", {"status": "broken"}, "status"),
    ("/history", {"min_confidence": "2"}, "min_confidence"),
    ("/history", {"min_confidence": "high"}, "min_confidence"),
    ("/history", {"since": "yesterday"}, "since"),
    ("/history", {"until": "2024-13-01T00:00:00Z"}, "until"),
    (
        "/history",
        {"since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"},
        "since",
    ),
    ("/history", {"cursor": "not-a-cursor"}, "cursor"),
    ("/history/enriched", {"severity": "page"}, "severity"),
    ("/history/f1", {"limit": "1001"}, "limit"),
    ("/reports/top-alerts", {"by": "size"}, "by"),
    ("/reports/top-alerts", {"since": "soon"}, "since"),
    ("/reports/flapping", {"min_state_changes": "0"}, "min_state_changes"),
    ("/reports/time-to-resolve", {"limit": "-1"}, "limit"),
]


@pytest.mark.parametrize(
    ("path", "query", "parameter"),
    BAD_QUERIES,
    ids=[f"{p}-{n}" for p, _, n in BAD_QUERIES],
)
async def test_history_bad_parameter_named(
    filtered: InProcessMesh, path: str, query: dict[str, str], parameter: str
) -> None:
    status, body = await filtered.get(path, params=query)

    assert status == 400, body
    assert body["parameter"] == parameter


async def test_timeline_newest_first(mesh: InProcessMesh) -> None:
    store = history_store(mesh)
    for minutes in (0, 30, 60):
        await cycle(store, "t1", at(minutes), at(minutes + 5))

    status, body = await mesh.get("/history/t1")

    starts = [o["starts_at"] for o in body["occurrences"]]
    assert status == 200
    assert starts == sorted(starts, reverse=True)
    assert body["total_occurrences"] == 3
    assert body["total_state_changes"] == 6
    assert len(body["occurrences"][0]["state_changes"]) == 2


async def test_timeline_unknown_not_found(mesh: InProcessMesh) -> None:
    status, body = await mesh.get("/history/0000000000000bad")

    assert status == 404, body


def window() -> dict[str, str]:
    return {"since": format_time(at(0)) or "", "until": format_time(at(120)) or ""}


@pytest.fixture
async def reported(mesh: InProcessMesh) -> InProcessMesh:
    await report_dataset(history_store(mesh))
    return mesh


async def report(mesh: InProcessMesh, path: str, **query: str) -> Any:
    status, body = await mesh.get(path, params={**window(), **query})
    assert status == 200, body
    return body


async def test_report_top_alerts(reported: InProcessMesh) -> None:
    by_occurrences = await report(reported, "/reports/top-alerts")
    by_changes = await report(reported, "/reports/top-alerts", by="state_changes")

    assert [(a["alertname"], a["occurrences"]) for a in by_occurrences["alerts"]] == [
        ("Flappy", 4),
        ("Steady", 1),
    ]
    assert by_changes["alerts"][0]["state_changes"] == 8
    assert by_occurrences["since"] == "2024-05-01T10:00:00Z"


async def test_report_flapping(reported: InProcessMesh) -> None:
    body = await report(reported, "/reports/flapping", min_state_changes="4")

    assert [(a["fingerprint"], a["state_changes"]) for a in body["alerts"]] == [
        ("f1", 6)
    ]


async def test_report_time_to_resolve(reported: InProcessMesh) -> None:
    body = await report(reported, "/reports/time-to-resolve")

    assert body["alerts"] == [
        {
            "alertname": "Flappy",
            "count": 4,
            "p50_seconds": 150.0,
            "p90_seconds": 474.0,
            "max_seconds": 600.0,
        }
    ]


async def test_report_default_window_is_last_day(mesh: InProcessMesh) -> None:
    body = await report(mesh, "/reports/top-alerts", since="", until="")

    assert body["alerts"] == []
    assert body["since"] < body["until"]
