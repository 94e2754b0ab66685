"""Migrations of the history schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

from libs.db import Database, migrate
from services.history.migrations import COMPONENT, MIGRATIONS


async def test_migrate_twice_applies_once(any_database_url: str) -> None:
    db = Database(any_database_url)
    await db.connect()
    try:
        first = await migrate(db, COMPONENT, MIGRATIONS)
        second = await migrate(db, COMPONENT, MIGRATIONS)
    finally:
        await db.close()

    assert first == len(MIGRATIONS)
    assert second == 0


async def test_migrate_concurrently_applies_once(any_database_url: str) -> None:
    databases = [Database(any_database_url), Database(any_database_url)]
    for db in databases:
        await db.connect()
    try:
        applied = await asyncio.gather(
            *(migrate(db, COMPONENT, MIGRATIONS) for db in databases)
        )
        versions = await databases[0].fetchval(
            "SELECT count(*) FROM schema_migrations WHERE component = $1", COMPONENT
        )
    finally:
        for db in databases:
            await db.close()

    assert sorted(applied) == [0, len(MIGRATIONS)]
    assert versions == len(MIGRATIONS)
