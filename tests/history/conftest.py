"""Fixtures of the history tests: a migrated store with a clock the test moves."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerthistory.alert.v1 import alert_pb2
from libs.alerts import parse_notification
from libs.db import Database, migrate
from services.history.migrations import COMPONENT, MIGRATIONS
from services.history.store import HistoryStore

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@dataclass
class FakeClock:
    """A clock that returns a fixed time until the test advances it."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def load_body(relative: str) -> dict[str, Any]:
    with (FIXTURES / relative).open(encoding="utf-8") as file:
        body: dict[str, Any] = json.load(file)
    return body


def load_notification(relative: str) -> alert_pb2.Notification:
    return parse_notification(load_body(relative))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
async def database(any_database_url: str) -> AsyncIterator[Database]:
    db = Database(any_database_url)
    await db.connect()
    await migrate(db, COMPONENT, MIGRATIONS)
    yield db
    await db.close()


@pytest.fixture
def store(database: Database, clock: FakeClock) -> HistoryStore:
    return HistoryStore(database, clock=clock)
