"""The pool's messages to one slot arrive in the order it sent them, across continue-as-new."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio import workflow
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.slots import message_slot
from tests.helpers import new_queue
from warmpool.labels import pool_workflow_id, slot_workflow_id
from warmpool.models import (
    Lease,
    LeaseEndRequest,
    PoolConfig,
    PoolInput,
    PoolLease,
    PoolRuntime,
    PoolStatus,
    SlotEvent,
    SlotMessage,
    SlotState,
    SlotView,
)
from workflows.pool import WarmPoolWorkflow

NOW = datetime.now(UTC)
URL = "http://127.0.0.1:1"


@workflow.defn(name="WarmSlotWorkflow", sandboxed=False)
class OrderRecorder:
    """Stands in for slot 0: keeps the name and lease of every message, in arrival order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @workflow.run
    async def run(self) -> list[tuple[str, str]]:
        await workflow.wait_condition(lambda: len(self.seen) >= 2)
        return self.seen

    def _answer(self, state: SlotState) -> SlotEvent:
        return SlotEvent(index=0, state=state, at=workflow.now(), reason="recorded")

    @workflow.update
    def assign_lease(self, lease: Lease) -> SlotEvent:
        self.seen.append(("assign_lease", lease.lease_id))
        return self._answer(SlotState.LEASED)

    @workflow.update
    def end_lease(self, request: LeaseEndRequest) -> SlotEvent:
        self.seen.append(("end_lease", request.lease_id))
        return self._answer(SlotState.READY)


async def test_a_release_in_the_first_task_of_a_run_waits_for_the_held_back_assign(
    dev_env: WorkflowEnvironment,
) -> None:
    """The previous run held back the lease's `assign_lease` (it was continuing-as-new); the
    release is handled in the new run's first workflow task, before `run` starts."""
    client = dev_env.client
    queue = new_queue()
    pool = f"order{queue[-6:]}"
    lease = PoolLease(
        lease_id="l1",
        holder="ann",
        request_id="r1",
        slot=0,
        connection_url=URL,
        granted_at=NOW,
        leased_until=NOW + timedelta(hours=1),
    )
    held = Lease(
        **lease.model_dump(include={"lease_id", "holder", "request_id"}),
        granted_at=NOW,
        leased_until=lease.leased_until,
    )
    runtime = PoolRuntime(
        slots={
            0: SlotView(
                index=0, state=SlotState.LEASED, since=NOW, connection_url=URL, lease_id="l1"
            )
        },
        leases={"l1": lease},
        next_index=1,
        unsent=[SlotMessage(workflow_id=slot_workflow_id(pool, 0), assign_lease=held)],
    )
    config = PoolConfig(min_ready=0, max_slots=1)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[WarmPoolWorkflow, OrderRecorder],
        activities=[message_slot],
    ):
        recorder = await client.start_workflow(
            OrderRecorder.run, id=slot_workflow_id(pool, 0), task_queue=queue
        )
        start = WithStartWorkflowOperation(
            WarmPoolWorkflow.run,
            PoolInput(pool=pool, config=config, runtime=runtime),
            id=pool_workflow_id(pool),
            task_queue=queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
        released = await client.execute_update_with_start_workflow(
            WarmPoolWorkflow.release, "l1", start_workflow_operation=start
        )
        assert released.end_reason == "released"
        seen = await asyncio.wait_for(recorder.result(), 20)
        assert seen == [("assign_lease", "l1"), ("end_lease", "l1")]
        handle = await start.workflow_handle()
        status: PoolStatus = await handle.query(WarmPoolWorkflow.status)
        assert status.active_leases == []
        await handle.terminate("test over")  # its slot 0 was never a real slot
