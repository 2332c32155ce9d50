"""How does a pool tell a slot something? The `pool.message_slot` activity delivers it.

A workflow's own signal to another workflow is a server transfer task. When the pool signals
a slot and the slot signals back (every lease and release did), the dev server stalls the
pool's next workflow task for about 500 ms: bench/lease_latency.py measured lease p99 at
1.6 s that way. The same message sent through the worker's client by an activity (eager, on
the pool's own worker) keeps the lease path at one update round trip.

`assign_lease` and `end_lease` are updates, answered with the slot's state: a refused lease,
or READY once the slot is clean after a release. The pool learns it from the activity's
result, not from a slot event that could race the pool's continue-as-new (such a race fails
that workflow task and forces a replay of the whole run). As the pool sends one slot's
messages one after another, a lease's end never reaches the slot before the lease. `retire`
is a signal (the slot reports how it ends).
"""

from __future__ import annotations

from temporalio import activity
from temporalio.service import RPCError, RPCStatusCode

from warmpool import search_attributes as sa
from warmpool.clients.pool import retry_transient
from warmpool.models import Model, SlotEvent, SlotMessage
from warmpool.names import Pool, Slot

UPDATES = frozenset({"assign_lease", "end_lease"})


@activity.defn(name="pool.message_slot")
async def message_slot(message: SlotMessage) -> SlotEvent | None:
    """Deliver one message: the slot's answer to an update, None for a signal.

    None too when the slot has finished: nobody is left to tell.
    """
    name, arg = message.content()
    handle = activity.client().get_workflow_handle(message.workflow_id)
    try:
        if name in UPDATES:
            return await retry_transient(
                lambda: handle.execute_update(name, arg, result_type=SlotEvent)
            )
        await handle.signal(name, arg)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return None


class MachineExclusion(Model):
    """A machine one slot saw fail, for its pool to exclude for every slot."""

    pool_workflow_id: str
    machine_id: int
    reason: str
    slot: int


@activity.defn(name="pool.exclude_machine")
async def exclude_machine(exclusion: MachineExclusion) -> None:
    """Tell the pool before the machine is released (destroyed, or its create refused).

    A slot event (a workflow's signal) can take hundreds of milliseconds to arrive; meanwhile
    another slot could search and rent the machine again. The worker's client signals at once.
    """
    handle = activity.client().get_workflow_handle(exclusion.pool_workflow_id)
    try:
        await handle.signal(Pool.EXCLUDE_MACHINE, exclusion)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:  # no pool left to tell
            raise


BLOCKED_SLOTS = f"{sa.SLOT_STATE.name} = 'BLOCKED' AND ExecutionStatus = 'Running'"


@activity.defn(name="slots.resume_blocked")
async def resume_blocked(reason: str) -> int:
    """Wake every BLOCKED slot (a token was fixed): each re-checks its tokens now instead of at
    its periodic re-check. Found through the slot-state search attribute; returns how many."""
    client = activity.client()
    woken = 0
    async for found in client.list_workflows(BLOCKED_SLOTS):
        try:
            await client.get_workflow_handle(found.id).signal(Slot.RESUME, reason)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:  # it finished meanwhile
                raise
            continue
        woken += 1
    return woken
