"""The protobuf contracts: buf lint, breaking changes, generated code."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from libs import protogen

ROOT = Path(__file__).resolve().parent.parent


def buf_binary() -> str:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    if local.exists():
        return str(local)
    found = shutil.which("buf")
    if found is None:
        pytest.fail("buf is not installed: run scripts/install.sh --test")
    return found


def test_buf_lint_passes():
    result = subprocess.run(
        [buf_binary(), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _previous_commit_has_protos() -> bool:
    result = subprocess.run(
        ["git", "cat-file", "-e", "HEAD~1:buf.yaml"],
        cwd=ROOT,
        capture_output=True,
    )
    return result.returncode == 0


def test_buf_breaking_against_previous_commit():
    if not (ROOT / ".git").exists() or not _previous_commit_has_protos():
        pytest.skip("no previous commit with protos to compare against")
    result = subprocess.run(
        [buf_binary(), "breaking", "--against", ".git#ref=HEAD~1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BUF_CACHE_DIR": str(ROOT / ".tools" / "buf-cache")},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_matches_protos(tmp_path: Path):
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    protogen.generate(tmp_path)

    comparison = filecmp.dircmp(ROOT / "alerthistory", tmp_path / "alerthistory")
    stack = [comparison]
    differences = []
    while stack:
        current = stack.pop()
        differences += current.diff_files + current.left_only + current.right_only
        stack.extend(current.subdirs.values())
    differences = [name for name in differences if name != "__pycache__"]
    assert differences == [], "alerthistory/ is stale: run python -m libs.protogen"


def test_every_rpc_comment_states_codes_deadline_and_retry():
    for proto in sorted((ROOT / "protos").rglob("*.proto")):
        lines = proto.read_text().splitlines()
        for index, line in enumerate(lines):
            if not line.strip().startswith("rpc "):
                continue
            comment: list[str] = []
            cursor = index - 1
            while cursor >= 0 and lines[cursor].strip().startswith("//"):
                comment.insert(0, lines[cursor].strip())
                cursor -= 1
            text = " ".join(comment)
            name = line.split()[1]
            assert "Codes:" in text, f"{proto.name} {name}: no status codes"
            assert "deadline" in text, f"{proto.name} {name}: no deadline"
            assert "retry" in text.lower(), f"{proto.name} {name}: no retry advice"
