#!/usr/bin/env bash
# Set up .venv, then run the whole stack: Temporal dev server (SQLite) + simulator + worker +
# gateway + the pool (`WARMPOOL_POOL`, default `default`), reused when it already runs. It prints
# every address and key and the next commands. Ctrl-C stops everything; --once exits after the
# demo lease (draining the pool); --help lists the options (ports, state dir, speed).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python scripts/devstack.py "$@"
