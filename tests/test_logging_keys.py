"""Log calls never pass an `extra` key that the logging module reserves.

`logging.Logger.makeRecord` raises KeyError for such a key, but only when the
record's level is enabled, so a call at INFO can pass every test run at
WARNING and still fail in production.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    path for folder in ("libs", "services") for path in (ROOT / folder).rglob("*.py")
)
RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


def extra_keys(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
                for key in keyword.value.keys:
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        found.append((node.lineno, key.value))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_log_extra_keys_not_reserved(path: Path):
    clashes = [
        f"line {line}: {key}" for line, key in extra_keys(path) if key in RESERVED
    ]

    assert clashes == []
