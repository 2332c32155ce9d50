"""Moved to `warmpool/clients/pool.py` (the pool's client). Kept only for the imports not yet
switched (tests/integration/test_market.py, tests/workflows/test_pool.py): delete once they are."""

from warmpool.clients.pool import *  # noqa: F403
