"""Settings: read once from the environment, invalid values named at start-up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from libs.config import ConfigError, load_settings, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_settings_defaults_load():
    settings = load_settings({})

    assert settings.http_port == 8080
    assert settings.webhook_max_body_bytes == 16 * 1024 * 1024
    assert settings.database_url is None
    assert settings.grpc_port_for("history") == 50051


def test_settings_invalid_port_named():
    with pytest.raises(ConfigError) as caught:
        load_settings({"HTTP_PORT": "eighty"})

    assert "HTTP_PORT" in str(caught.value)
    assert "eighty" in str(caught.value)


def test_settings_every_invalid_variable_named():
    with pytest.raises(ConfigError) as caught:
        load_settings({"LOG_LEVEL": "LOUD", "HISTORY_ADDR": "nohost"})

    assert "LOG_LEVEL" in str(caught.value)
    assert "HISTORY_ADDR" in str(caught.value)


def test_settings_secret_value_never_echoed():
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": "mysql://user:hunter2@db/x"})

    assert "DATABASE_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_settings_empty_value_means_unset():
    settings = load_settings({"REDIS_URL": "", "HTTP_PORT": ""})

    assert settings.redis_url is None
    assert settings.http_port == 8080


def test_readme_table_lists_every_variable():
    text = README.read_text()
    match = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->",
        text,
        re.DOTALL,
    )

    assert match is not None, "README has no settings table markers"
    assert match.group(1).strip() == settings_table().strip(), (
        "README settings table is stale: paste the output of python -m libs.config"
    )
