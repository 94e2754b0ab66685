"""Fixtures for tests that run the services as real processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN_URL
from tests.harness import create_database, drop_database


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_env(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """Environment selecting the embedded SQLite default or a fresh PostgreSQL."""
    if request.param == "sqlite":
        yield {"DATA_DIR": str(tmp_path / "data")}
        return
    name = f"ah_e2e_{uuid.uuid4().hex[:12]}"
    url = create_database(ADMIN_URL, name)
    try:
        yield {"DATABASE_URL": url}
    finally:
        drop_database(ADMIN_URL, name)
