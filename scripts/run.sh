#!/usr/bin/env bash
# Set up, then run the whole stack: Temporal dev server (SQLite) + simulator + worker + a slot
# that reaches READY. Ctrl-C stops everything. Pass --once to exit after READY.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python scripts/devstack.py "$@"
