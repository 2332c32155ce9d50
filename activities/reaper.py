"""What does the orphan reaper read? The pool's labelled instances, and what its slots hold.

`reaper.list_candidates` runs on the provider task queue (rate-limited like every Vast.ai
call) and lists the account afresh: the reaper runs rarely, so it never reads a cached listing.
`reaper.slot_claims` runs on the main task queue and asks Temporal, not Vast.ai: it describes
each named slot workflow and queries its `status`. A slot that cannot be read is reported as
such (never as "not running"), so the reaper keeps what it cannot prove is unowned.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.errors import vast_errors
from warmpool.clients import slot as slot_client
from warmpool.labels import pool_label_prefix, slot_workflow_id
from warmpool.models import Model
from warmpool.reaper import Candidate, SlotClaim
from warmpool.vast import Instance, VastClient, billing_per_hour, is_stopped

GONE_STATES = frozenset({"unloaded"})
"""A destroyed instance can linger in the list as `unloaded`: it bills nothing. A `stopped`
one is listed: its disk bills until it is destroyed."""
RPC_TIMEOUT = timedelta(seconds=10)
PARALLEL_READS = 8


class SlotClaimsInput(Model):
    pool: str
    indices: list[int]


def to_candidate(instance: Instance) -> Candidate:
    assert instance.id is not None
    started = (
        datetime.fromtimestamp(instance.start_date, tz=UTC)
        if instance.start_date is not None
        else None
    )
    return Candidate(
        instance_id=instance.id,
        label=instance.label,
        dph_total=billing_per_hour(instance),
        started_at=started,
        actual_status=instance.actual_status,
        stopped=is_stopped(instance),
    )


async def read_claim(
    client: Client, pool: str, index: int, *, rpc_timeout: timedelta = RPC_TIMEOUT
) -> SlotClaim:
    """One slot's claim: not found or closed => not live; unreadable => live None."""
    handle = client.get_workflow_handle(slot_workflow_id(pool, index))
    try:
        described = await handle.describe(rpc_timeout=rpc_timeout)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return SlotClaim(index=index, live=False, detail="no such workflow")
        return SlotClaim(index=index, live=None, detail=f"describe failed: {exc.message}")
    if described.status != WorkflowExecutionStatus.RUNNING:
        name = described.status.name if described.status else "unknown"
        return SlotClaim(index=index, live=False, detail=f"workflow {name.lower()}")
    try:
        status = await slot_client.query_status(handle, rpc_timeout=rpc_timeout)
    except (RPCError, WorkflowQueryFailedError) as exc:
        return SlotClaim(index=index, live=None, detail=f"status query failed: {exc}"[:300])
    return SlotClaim(
        index=index,
        live=True,
        state=status.state,
        attempt=status.attempt,
        instance_id=status.instance.id if status.instance else None,
    )


class ReaperActivities:
    def __init__(self, client: VastClient) -> None:
        self._client = client

    @activity.defn(name="reaper.list_candidates")
    async def list_candidates(self, pool: str) -> list[Candidate]:
        """Every live instance whose label starts with `wp.<pool>.`, read now."""
        prefix = pool_label_prefix(pool)
        with vast_errors(activity.info().attempt):
            instances = await self._client.list_instances()
        return [
            to_candidate(i)
            for i in instances
            if i.id is not None
            and (i.label or "").startswith(prefix)
            and i.cur_state not in GONE_STATES
        ]

    @activity.defn(name="reaper.slot_claims")
    async def slot_claims(self, input: SlotClaimsInput) -> list[SlotClaim]:
        client = activity.client()
        gate = asyncio.Semaphore(PARALLEL_READS)

        async def one(index: int) -> SlotClaim:
            async with gate:
                claim = await read_claim(client, input.pool, index)
            activity.heartbeat(index)
            return claim

        return list(await asyncio.gather(*(one(i) for i in input.indices)))
