#!/usr/bin/env bash
# Set up, then run the whole test suite. "No tests collected" (pytest exit 5) is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
./scripts/ensure-sshd.sh
.venv/bin/ruff check .
# No incremental cache: a stale .mypy_cache once passed here what a fresh CI checkout failed.
.venv/bin/mypy --cache-dir=/dev/null
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$code"
