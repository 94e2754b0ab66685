#!/usr/bin/env bash
# Install alert-history with what its tests need, check it, and run the tests.
# Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
export PATH="$PWD/.tools/node_modules/.bin:$PWD/.venv/bin:$PATH"

ruff format --check --quiet .
ruff check --quiet .
mypy libs services tests
pytest "$@"
