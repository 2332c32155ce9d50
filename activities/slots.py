"""How does a pool tell a slot something? The `pool.signal_slot` activity sends the signal.

A workflow's own signal to another workflow is a server transfer task. When the pool signals
a slot and the slot signals back (every lease and release does), the dev server stalls the
pool's next workflow task for about 500 ms. bench/lease_latency.py measured lease p99 at
1.6 s that way. The same signal sent through the worker's client by an activity (eager, on the
pool's own worker) keeps the lease path at one update round trip.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.service import RPCError, RPCStatusCode

from warmpool.models import SlotMessage


@activity.defn(name="pool.signal_slot")
async def signal_slot(message: SlotMessage) -> bool:
    """Deliver one signal; False when the slot has finished (nobody is left to tell)."""
    name, arg = message.signal()
    handle = activity.client().get_workflow_handle(message.workflow_id)
    try:
        await handle.signal(name, arg)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True
