"""How does the gateway ask a pool anything? Temporal calls with a deadline and a clear refusal.

Every call runs under `WARMPOOL_GATEWAY_TEMPORAL_TIMEOUT_S`, so a Temporal outage answers 503 in
seconds instead of holding the request (the pool client retries transient RPC errors for longer).
The gateway serves the pools named in `WARMPOOL_GATEWAY_POOLS`; lease ids carry no pool, so a
lease is found by asking each served pool and remembered (bounded) once found.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio.client import Client, WorkflowQueryFailedError, WorkflowQueryRejectedError
from temporalio.service import RPCError, RPCStatusCode

from warmpool.clients import pool as pool_client
from warmpool.clients import slot as slot_client
from warmpool.gateway.errors import ApiError
from warmpool.labels import pool_workflow_id
from warmpool.models import PoolLease, PoolStatus, SlotStatus

T = TypeVar("T")

KNOWN_LEASES = 10_000
"""Lease ids remembered with their pool: a lease the pool has since forgotten is then 410."""


class Pools:
    def __init__(self, client: Client, names: list[str], timeout_s: float) -> None:
        self.client = client
        self.names = names
        self.timeout_s = timeout_s
        self._lease_pool: OrderedDict[str, str] = OrderedDict()

    def name(self, pool: str | None) -> str:
        """The pool a request means: the named one if served, else the first served pool."""
        if pool is None:
            return self.names[0]
        if pool not in self.names:
            raise ApiError(
                404,
                "unknown_pool",
                f"pool {pool!r} is not served by this gateway (it serves {', '.join(self.names)})",
            )
        return pool

    async def call(
        self, pool: str, what: str, make: Callable[[], Awaitable[T]], *, extra_s: float = 0.0
    ) -> T:
        """`make()` under the Temporal deadline; RPC failures become ApiErrors."""
        limit = self.timeout_s + extra_s
        try:
            async with asyncio.timeout(limit):
                return await make()
        except TimeoutError:
            raise ApiError(
                503, "temporal_timeout", f"{what}: Temporal did not answer within {limit:.0f}s"
            ) from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise ApiError(
                    404,
                    "pool_not_running",
                    f"pool {pool} is not running (no workflow {pool_workflow_id(pool)})",
                ) from None
            raise ApiError(503, "temporal_unavailable", f"{what}: {exc.message}") from None
        except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as exc:
            raise ApiError(503, "pool_query_failed", f"{what}: {exc}") from None

    async def status(self, pool: str) -> PoolStatus:
        return await self.call(
            pool, f"status of pool {pool}", lambda: pool_client.status(self.client, pool)
        )

    async def signal(self, pool: str, name: str) -> None:
        handle = pool_client.pool_handle(self.client, pool)
        await self.call(pool, f"{name} to pool {pool}", lambda: handle.signal(name))

    async def slot_status(self, pool: str, index: int) -> SlotStatus:
        try:
            return await self.call(
                pool,
                f"status of slot {index}",
                lambda: slot_client.status(self.client, pool, index),
            )
        except ApiError as exc:
            if exc.error != "pool_not_running":
                raise
            raise ApiError(503, "slot_gone", f"slot {index} of pool {pool} is gone") from None

    def remember(self, lease_id: str, pool: str) -> None:
        self._lease_pool[lease_id] = pool
        self._lease_pool.move_to_end(lease_id)
        while len(self._lease_pool) > KNOWN_LEASES:
            self._lease_pool.popitem(last=False)

    async def lease(self, lease_id: str) -> tuple[str, PoolLease]:
        """The lease and its pool, active or ended; 404 when no served pool knows it."""
        known = self._lease_pool.get(lease_id)
        if known is not None:
            lease = await self._lease_info(known, lease_id)
            if lease is None:
                raise ApiError(
                    410, "lease_ended", f"lease {lease_id} ended (pool {known} no longer keeps it)"
                )
            return known, lease
        answers = await asyncio.gather(
            *(self._lease_info(pool, lease_id) for pool in self.names), return_exceptions=True
        )
        failures: list[ApiError] = []
        for pool, answer in zip(self.names, answers, strict=True):
            if isinstance(answer, PoolLease):
                self.remember(lease_id, pool)
                return pool, answer
            if isinstance(answer, ApiError) and answer.error != "pool_not_running":
                failures.append(answer)
            elif isinstance(answer, BaseException) and not isinstance(answer, ApiError):
                raise answer
        if failures:
            raise failures[0]
        raise ApiError(404, "unknown_lease", f"no pool served here knows lease {lease_id}")

    async def _lease_info(self, pool: str, lease_id: str) -> PoolLease | None:
        return await self.call(
            pool, f"lease {lease_id}", lambda: pool_client.show(self.client, pool, lease_id)
        )
