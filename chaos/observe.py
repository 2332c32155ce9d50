"""How does the chaos driver read the system while things die? Visibility, queries, patient waits.

Visibility (the slots' `WarmPoolSlotState` search attribute) answers with no worker alive, so
it is what the driver reads while it kills workers. Queries need a worker; they are retried,
since a query can land on a dead worker's sticky queue or on a server that is restarting.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from warmpool import search_attributes as sa
from warmpool.clients import pool as pool_client
from warmpool.clients import slot as slot_client
from warmpool.models import PoolLease, PoolStatus, SlotState, SlotStatus
from warmpool.names import Reaper, Slot
from warmpool.pool_core import STARTING
from warmpool.reaper import ReaperInput, ReaperReport

T = TypeVar("T")
S = SlotState
PROVISIONING = frozenset(STARTING | {S.TERMINATING})
QUERY_TIMEOUT = timedelta(seconds=5)
RETRIED = (RPCError, WorkflowQueryFailedError, RuntimeError, TimeoutError)
"""A server restarting (UNAVAILABLE, connection errors), a query on a dead worker's sticky queue
(DEADLINE_EXCEEDED), or a workflow task not processed yet: all pass with time."""


async def retrying(call: Callable[[], Awaitable[T]], within: float = 60, what: str = "") -> T:
    """Retry a read until it answers (a restarting server, a dead worker's sticky queue)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except RETRIED as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what or 'read'} kept failing: {exc}") from exc
            await asyncio.sleep(0.3)


async def pool_status(client: Client, pool: str) -> PoolStatus:
    handle = pool_client.pool_handle(client, pool)
    return await retrying(
        lambda: pool_client.query_status(handle, rpc_timeout=QUERY_TIMEOUT),
        what=f"status of pool {pool}",
    )


def leases_of(status: PoolStatus) -> list[PoolLease]:
    """Active and recently ended leases, as the pool reports them."""
    return [*status.active_leases, *status.recent_leases]


def _slots_query(pool: str) -> str:
    return (
        f"WarmPoolName = '{pool}' AND WorkflowType = '{Slot.WORKFLOW}' "
        "AND ExecutionStatus = 'Running'"
    )


async def visible_states(client: Client, pool: str) -> dict[str, SlotState]:
    """Running slot workflows and their state search attribute: needs no worker."""

    async def read() -> dict[str, SlotState]:
        found: dict[str, SlotState] = {}
        async for wf in client.list_workflows(_slots_query(pool)):
            state = wf.typed_search_attributes.get(sa.SLOT_STATE)
            if state is not None:
                found[wf.id] = SlotState(state)
        return found

    return await retrying(read, what=f"slots of pool {pool}")


async def slot_statuses(client: Client, pool: str) -> list[SlotStatus]:
    """Every running slot of the pool, each as its own `status` query answers."""
    ids = await visible_states(client, pool)

    async def one(workflow_id: str) -> SlotStatus:
        handle = client.get_workflow_handle(workflow_id)
        return await retrying(
            lambda: slot_client.query_status(handle, rpc_timeout=QUERY_TIMEOUT),
            what=f"status of {workflow_id}",
        )

    statuses = await asyncio.gather(*(one(i) for i in sorted(ids)))
    return sorted(statuses, key=lambda s: s.index)


async def settle(
    client: Client, pool: str, done: Callable[[list[SlotStatus]], bool], within: float
) -> tuple[list[SlotStatus], float | None]:
    """Wait until `done(slots)`; the slots last read, and the seconds it took (None: never)."""
    started = time.monotonic()
    deadline = started + within
    while True:
        slots = await slot_statuses(client, pool)
        if done(slots):
            return slots, time.monotonic() - started
        if time.monotonic() > deadline:
            return slots, None
        await asyncio.sleep(0.3)


def serving(expected: int, leased: int = 0) -> Callable[[list[SlotStatus]], bool]:
    """`expected` running slots, all READY but `leased` of them LEASED."""

    def check(slots: list[SlotStatus]) -> bool:
        states = [s.state for s in slots]
        return (
            len(states) == expected
            and states.count(S.LEASED) == leased
            and all(s in (S.READY, S.LEASED) for s in states)
        )

    return check


async def reaper_orphans(client: Client, pool: str, task_queue: str) -> ReaperReport:
    """What the orphan reaper would destroy now (dry run, no grace)."""
    report: ReaperReport = await client.execute_workflow(
        Reaper.WORKFLOW,
        ReaperInput(pool=pool, grace=timedelta(0), dry_run=True),
        id=f"chaos-reaper-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
        result_type=ReaperReport,
        execution_timeout=timedelta(minutes=2),
    )
    return report
