"""A scheduled floor moves at its boundary, on the time-skipping server (a durable timer)."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from datetime import UTC, timedelta

from temporalio.testing import WorkflowEnvironment

from tests.helpers import assert_eventually, new_queue
from tests.workflows.fakes import FakeCloud, workers
from warmpool.labels import pool_workflow_id, slot_workflow_id
from warmpool.models import FloorPeriod, PoolConfig, PoolInput, PoolStatus, ScalingPolicy
from workflows import WORKFLOWS
from workflows.pool import WarmPoolWorkflow


async def test_a_schedule_raises_the_floor_at_its_boundary(ts_env: WorkflowEnvironment) -> None:
    now = (await ts_env.get_current_time()).astimezone(UTC)
    start = (now + timedelta(hours=1)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    period = FloorPeriod(start=start.time(), end=(start + timedelta(hours=2)).time(), floor=1)
    config = PoolConfig(
        min_ready=0, max_slots=2, scaling=ScalingPolicy(buffer=0, schedule=[period])
    )
    cloud = FakeCloud(machines=2)
    queue = new_queue()
    name = f"s{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        for worker in workers(ts_env.client, queue, cloud.activities(), WORKFLOWS):
            await stack.enter_async_context(worker)
        pool = await ts_env.client.start_workflow(
            WarmPoolWorkflow.run,
            PoolInput(pool=name, config=config),
            id=pool_workflow_id(name),
            task_queue=queue,
        )
        try:
            status = await pool.query(WarmPoolWorkflow.status)
            assert status.slots == [] and status.scaling is not None
            assert status.scaling.target == 0
            await ts_env.sleep(start - now - timedelta(minutes=1))
            assert (await pool.query(WarmPoolWorkflow.status)).slots == [], "not before"
            await ts_env.sleep(timedelta(minutes=2))

            async def status_now() -> PoolStatus:
                return await pool.query(WarmPoolWorkflow.status)

            status = await assert_eventually(
                status_now, lambda s: len(s.slots) == 1, describe="a slot for the new floor"
            )
            assert status.scaling is not None and status.scaling.floor == 1
            assert "schedule" in status.scaling.decisions[-1].reason
        finally:
            await pool.terminate("test over")
            for index in range(2):
                try:
                    await ts_env.client.get_workflow_handle(
                        slot_workflow_id(name, index)
                    ).terminate("test over")
                except Exception:  # noqa: BLE001 - a slot that never started
                    pass
