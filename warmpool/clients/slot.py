"""How does a caller (CLI, gateway, reaper activity, chaos, bench) talk to a slot? Typed calls.

A slot is `WarmSlotWorkflow` with id `warmpool/<pool>/slot-<k>`. Its lease messages come only
from its pool (`pool.message_slot`); what others may do is ask its `status` and `retire` it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle

from warmpool.labels import slot_workflow_id
from warmpool.models import SlotStatus
from warmpool.names import Slot

SlotHandle = WorkflowHandle[Any, SlotStatus]


def slot_handle(client: Client, pool: str, index: int) -> SlotHandle:
    """The slot's handle; its result (when it ends) is its final `SlotStatus`."""
    return client.get_workflow_handle(slot_workflow_id(pool, index), result_type=SlotStatus)


async def query_status(
    handle: WorkflowHandle[Any, Any], *, rpc_timeout: timedelta | None = None
) -> SlotStatus:
    """The slot's `status` query, typed."""
    status: SlotStatus = await handle.query(
        Slot.STATUS, result_type=SlotStatus, rpc_timeout=rpc_timeout
    )
    return status


async def status(client: Client, pool: str, index: int) -> SlotStatus:
    return await query_status(slot_handle(client, pool, index))


async def retire(handle: WorkflowHandle[Any, Any], reason: str) -> None:
    """Ask the slot to destroy its instance (confirmed) and finish (the `retire` signal)."""
    await handle.signal(Slot.RETIRE, reason)
