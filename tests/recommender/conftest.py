"""A history service with a generated history, and recommenders beside it.

`known_history` stores, relative to now, alerts whose problems under the
default thresholds are known in advance. The thresholds are 6 cycles, 5
minutes and 50 %, 24 hours, 50 occurrences or 200 notifications, and 80 %
noise of at least 5. Each alert has a negative just short of its threshold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from prometheus_client import CollectorRegistry

from alerthistory.recommender.v1 import recommender_pb2, recommender_pb2_grpc
from libs.config import load_settings
from libs.grpcserver import RunningService, start_service
from services.history.service import HistoryService
from services.history.service import create_service as create_history
from services.history.store import HistoryStore
from services.recommender.service import create_service as create_recommender
from tests.history.builders import alert, classify, notify

EXPECTED_PROBLEMS = {
    "FlappingDisk": ["flapping"],
    "ShortBlip": ["short_lived"],
    "StuckJob": ["never_resolves"],
    "ChattyAlert": ["heavy_repeater"],
    "NoisyProbe": ["mostly_noise"],
}
NEGATIVES = (
    "AlmostFlapping",
    "AlmostShort",
    "FewShort",
    "AlmostStuck",
    "AlmostChatty",
    "AlmostNoisy",
)


async def _cycles(
    history: HistoryStore,
    name: str,
    fingerprint: str,
    starts: list[datetime],
    minutes: float,
) -> None:
    for start in starts:
        await notify(history, alert(fingerprint, starts_at=start, alertname=name))
        await notify(
            history,
            alert(
                fingerprint,
                starts_at=start,
                ends_at=start + timedelta(minutes=minutes),
                alertname=name,
            ),
        )


async def _many(
    history: HistoryStore,
    name: str,
    durations: list[float],
    start: datetime,
    namespace: str = "prod",
) -> list[int]:
    """Store one occurrence per duration (minutes), each its own fingerprint.

    Returns the ids of their firing state changes.
    """
    fingerprints = [f"{name.lower()}-{index:03d}" for index in range(len(durations))]
    fired = await notify(
        history,
        *(
            alert(fp, starts_at=start, alertname=name, namespace=namespace)
            for fp in fingerprints
        ),
    )
    await notify(
        history,
        *(
            alert(
                fp,
                starts_at=start,
                ends_at=start + timedelta(minutes=minutes),
                alertname=name,
                namespace=namespace,
            )
            for fp, minutes in zip(fingerprints, durations, strict=True)
        ),
    )
    return [stored.state_change_id for stored in fired.alerts]


async def known_history(history: HistoryStore, now: datetime) -> None:
    """Store the alerts of EXPECTED_PROBLEMS and NEGATIVES, ending before `now`."""
    base = now - timedelta(hours=100)
    every_two_hours = [base + timedelta(hours=2 * k) for k in range(8)]
    await _cycles(history, "FlappingDisk", "flap", every_two_hours, 20)
    await _cycles(history, "AlmostFlapping", "almost-flap", every_two_hours[:5], 20)

    await _many(history, "ShortBlip", [1, 1.5, 2, 400 / 60], base)
    await _many(history, "AlmostShort", [1, 1, 20, 20, 20], base)
    await _many(history, "FewShort", [1, 2], base)

    stuck = alert("stuck", starts_at=now - timedelta(hours=30), alertname="StuckJob")
    almost = alert(
        "almost-stuck", starts_at=now - timedelta(hours=23), alertname="AlmostStuck"
    )
    await notify(history, stuck, almost)

    await _many(history, "ChattyAlert", [60] * 50, base)
    await _many(history, "AlmostChatty", [60] * 49, base)

    noisy = await _many(history, "NoisyProbe", [30] * 5, base, namespace="dev")
    for index, change in enumerate(noisy):
        await classify(history, change, "noise" if index < 4 else "warning", 0.9)
    almost_noisy = await _many(history, "AlmostNoisy", [30] * 5, base, namespace="dev")
    for index, change in enumerate(almost_noisy):
        await classify(history, change, "noise" if index < 3 else "warning", 0.9)


@dataclass
class Running:
    """A history service and the recommenders started beside it."""

    database_url: str
    history: RunningService
    recommenders: list[RunningService] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def history_store(self) -> HistoryStore:
        service = self.history.service
        assert isinstance(service, HistoryService)
        return service.store

    async def recommender(
        self, **environ: str
    ) -> recommender_pb2_grpc.RecommenderServiceStub:
        """Start one more recommender and return a stub calling it."""
        settings = load_settings(
            {
                "DATABASE_URL": self.database_url,
                "HISTORY_ADDR": f"127.0.0.1:{self.history.port}",
                **environ,
            }
        )
        registry = CollectorRegistry()
        running = await start_service(
            create_recommender(settings, registry),
            settings,
            registry,
            port=0,
            host="127.0.0.1",
        )
        self.recommenders.append(running)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        self.channels.append(channel)
        return recommender_pb2_grpc.RecommenderServiceStub(channel)

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        for running in self.recommenders:
            await running.stop()
        await self.history.stop()


async def _start(url: str) -> Running:
    settings = load_settings({"DATABASE_URL": url})
    registry = CollectorRegistry()
    history = await start_service(
        create_history(settings, registry), settings, registry, port=0, host="127.0.0.1"
    )
    return Running(url, history)


@pytest.fixture
async def running(any_database_url: str) -> AsyncIterator[Running]:
    """A history service on each database, without history."""
    mesh = await _start(any_database_url)
    try:
        yield mesh
    finally:
        await mesh.stop()


@pytest.fixture
async def populated(running: Running) -> Running:
    """The known history on each database."""
    await known_history(running.history_store, datetime.now(UTC))
    return running


@pytest.fixture
async def populated_sqlite(sqlite_url: str) -> AsyncIterator[Running]:
    """The known history on SQLite only, for what the database does not change."""
    mesh = await _start(sqlite_url)
    try:
        await known_history(mesh.history_store, datetime.now(UTC))
        yield mesh
    finally:
        await mesh.stop()


async def all_recommendations(
    stub: recommender_pb2_grpc.RecommenderServiceStub, **filters: object
) -> dict[str, recommender_pb2.Recommendation]:
    """Return every stored recommendation by alert name."""
    response = await stub.ListRecommendations(
        recommender_pb2.ListRecommendationsRequest(limit=1000, **filters),  # type: ignore[arg-type]
        timeout=10,
    )
    return {r.alert_name: r for r in response.recommendations}
