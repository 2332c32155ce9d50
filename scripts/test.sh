#!/usr/bin/env bash
# Set up, then run the whole test suite. "No tests collected" (pytest exit 5) is a failure.
#   ./scripts/test.sh [pytest args]          ruff, mypy, every test (what CI runs); both lanes run
#                                            on two workers (WARMPOOL_TEST_WORKERS=0: one process)
#   ./scripts/test.sh --fast [pytest args]   ruff, then unit and time-skipping tests only: no dev
#                                            server, simulator stacks, sshd, chaos or slow tests
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
./scripts/bootstrap.sh
if [ "$fast" -eq 1 ]; then
  .venv/bin/ruff check .
  # Cached bytecode (and pytest's rewritten test modules) halves the start-up of a run; the
  # environment may forbid writing it. __pycache__ is ignored by git.
  unset PYTHONDONTWRITEBYTECODE
  set -- -m "not integration and not ssh and not chaos and not dev_server and not slow" "$@"
else
  ./scripts/ensure-sshd.sh
  .venv/bin/ruff check .
  # No incremental cache: a stale .mypy_cache once passed here what a fresh CI checkout failed.
  .venv/bin/mypy --cache-dir=/dev/null
fi
# Two workers (CI has two cores; most tests wait on servers and timers, not the CPU), each
# module whole on one worker so its servers and fixtures are started once.
set -- -n "${WARMPOOL_TEST_WORKERS:-2}" --dist loadfile "$@"
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$code"
