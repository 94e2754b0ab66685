"""A fresh replay of the webhook fixtures reproduces the committed report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent.parent


def test_replay_reproduces_report(tmp_path: Path):
    output = tmp_path / "replay.md"

    result = subprocess.run(
        [sys.executable, "scripts/replay.py", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    expected = (ROOT / "docs" / "replay.md").read_text()
    assert output.read_text() == expected, (
        "docs/replay.md is stale: run .venv/bin/python scripts/replay.py"
    )
