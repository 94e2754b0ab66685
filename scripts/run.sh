#!/usr/bin/env bash
# Install alert-history and start every service on localhost.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/alert-history up
